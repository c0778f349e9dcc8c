"""Request bodies of the console's API: small JSON objects, read with a deadline.

Anything a client sends is answered with a status and one line saying what is wrong,
never a 500: a number of 5,000 digits (Python refuses to convert it), 8,000 nested
brackets (the parser would recurse out of stack), a body that trickles in forever.
"""

from __future__ import annotations

import asyncio
import json
import re

from aiohttp import web

from devcluster import defaults
from devcluster.console.gate import BODY_TIMEOUT

#: Deepest nesting a body may have: the API's bodies are flat objects.
MAX_DEPTH = 32
#: Most digits a number in a body may have (far more than any weight or count).
MAX_DIGITS = 32
#: Longest value quoted back in an error message.
_QUOTED = 40


class Answer(Exception):
    """An API error with its HTTP status: answered as ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HugeNumber:
    """A number in a body with more than :data:`MAX_DIGITS` digits (never converted)."""

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"a {self.digits}-digit number"


def _parse_int(text: str) -> int | HugeNumber:
    digits = len(text.lstrip("-"))
    return HugeNumber(digits) if digits > MAX_DIGITS else int(text)


def nesting(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text ``raw`` (strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def parse_object(raw: bytes, example: str) -> dict[str, object]:
    """``raw`` as a JSON object, or :class:`Answer` 400 naming what is wrong."""
    if nesting(raw) > MAX_DEPTH:
        raise Answer(400, f"the JSON body is nested too deep (over {MAX_DEPTH} levels); "
                          f"it must be a JSON object like {example}")
    try:
        body = json.loads(raw, parse_int=_parse_int)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError too
        raise Answer(400, f"the body must be JSON like {example}") from None
    if not isinstance(body, dict):
        raise Answer(400, f"the body must be a JSON object like {example}")
    return body


async def read_object(request: web.Request, example: str) -> dict[str, object]:
    """The request's body as a JSON object, within :data:`BODY_TIMEOUT` seconds."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            raw = await request.read()
    except TimeoutError:
        raise Answer(408, f"the request body did not arrive within {BODY_TIMEOUT:g} s") \
            from None
    return parse_object(raw, example)


def quoted(value: object) -> str:
    """``value`` as an error message shows it: JSON, shortened."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _QUOTED else text[:_QUOTED] + f"... ({len(text)} characters)"


def weight_of(value: object) -> int:
    """A weight from a body: an integer, or a string of one; else :class:`Answer` 400."""
    bounds = f"{defaults.MIN_WEIGHT}..{defaults.MAX_WEIGHT}"
    wrong = Answer(400, f"weight must be an integer {bounds}, got {quoted(value)}")
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(rf"[+-]?[0-9]{{1,{MAX_DIGITS}}}", text):
            raise wrong
        value = int(text, 10)
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong
    if not defaults.MIN_WEIGHT <= value <= defaults.MAX_WEIGHT:
        raise Answer(400, f"weight must be an integer {bounds}, got {value}")
    return value
