"""The ``type=`` of every number a flag takes: ASCII digits only, finite, in range.

``int()`` and ``float()`` accept more than a person means: ``"١٢"`` (Arabic-Indic
digits) is 12, ``"1_000"`` is 1000, ``"inf"``, ``"nan"`` and ``"1e400"`` are floats
that overflow the clocks, deadlines and ``select()`` they end up in. A flag refuses them
here, so the mistake is argparse's one line (exit 2), naming the flag.

>>> seconds("2.5"), whole("12")
(2.5, 12)
"""

from __future__ import annotations

import argparse
import math
import re

from devcluster import defaults

#: A whole number as people type it: ASCII digits, an optional sign.
_WHOLE = re.compile(r"[+-]?[0-9]+")
#: A decimal number as people type it: ASCII digits, a point, an exponent.
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
#: More digits than any count, port or weight has (and int() refuses past 4,300).
_MAX_DIGITS = 18
#: ``logs -n`` past this many lines means "the whole log" (as with ``tail -n``).
MAX_LOG_LINES = 1_000_000_000


def _shown(text: str) -> str:
    return repr(text if len(text) <= 24 else text[:21] + "...")


def whole(text: str) -> int:
    """A whole number written with ASCII digits (range checks are the command's)."""
    text = text.strip()
    if not _WHOLE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not a whole number; write "
                                         "digits 0-9, e.g. 3")
    if len(text.lstrip("+-")) > _MAX_DIGITS:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is far too large")
    return int(text, 10)


def line_count(text: str) -> int:
    """``logs -n``: a whole number; one larger than any log means all of it (as
    ``tail -n`` has it), so it is clamped, not refused."""
    text = text.strip()
    if _WHOLE.fullmatch(text) and not text.startswith("-") \
            and len(text.lstrip("+")) > _MAX_DIGITS:
        return MAX_LOG_LINES
    return min(whole(text), MAX_LOG_LINES)


def _decimal(text: str, what: str) -> float:
    text = text.strip()
    value = float(text) if _DECIMAL.fullmatch(text) else math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not {what}; write a decimal "
                                         "number with digits 0-9, e.g. 2.5")
    return value


def seconds(text: str) -> float:
    """A duration: ASCII decimal, 0 to :data:`~devcluster.defaults.MAX_SECONDS`."""
    value = _decimal(text, "a number of seconds")
    if not 0 <= value <= defaults.MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{_shown(text)} is out of range; use 0 to {defaults.MAX_SECONDS:g} seconds "
            f"({defaults.MAX_SECONDS_WORDS})")
    return value


def decimal(text: str) -> float:
    """A finite decimal (``demo --speed``, ``events --since``); its range is the
    command's to check."""
    return _decimal(text, "a finite number")


__all__ = ["MAX_LOG_LINES", "decimal", "line_count", "seconds", "whole"]
