"""Where each key of a TOML document is written: ``tomllib`` parses, but gives no positions.

:func:`key_lines` scans the text once and maps every key path it can see (table
headers, ``key = value`` lines, dotted keys, keys inside a one-line inline table)
to its 1-based line, so an error about a value can name the line it is on. A path
not found maps to its nearest written ancestor (:func:`line_of`).

>>> lines = key_lines('[process.web]\\nscale = 2\\nready = { http = "/" }\\n')
>>> line_of(lines, ("process", "web", "scale")), line_of(lines, ("process", "web", "ready", "http"))
(2, 3)
"""

from __future__ import annotations

import re
from collections.abc import Mapping

KeyPath = tuple[str, ...]

_HEADER = re.compile(r"^\s*\[\[?\s*(?P<path>[^\]]+?)\s*\]\]?\s*(#.*)?$")
_BARE = re.compile(r"[A-Za-z0-9_-]+")


def split_dotted(text: str) -> KeyPath | None:
    """``process."my web".env`` -> ``("process", "my web", "env")``; None if not a key."""
    parts: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] in "\"'":
            end = text.find(text[i], i + 1)
            if end < 0:
                return None
            parts.append(text[i + 1:end])
            i = end + 1
        else:
            match = _BARE.match(text, i)
            if not match:
                return None
            parts.append(match.group())
            i = match.end()
        while i < n and text[i] in " \t":
            i += 1
        if i < n:
            if text[i] != ".":
                return None
            i += 1
    return tuple(parts) or None


def _key_part(line: str) -> tuple[str, str] | None:
    """Split ``key = rest`` at the first ``=`` outside quotes."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "=":
            return line[:i], line[i + 1:]
        elif ch == "#":
            return None
    return None


def _inline_keys(rest: str) -> list[KeyPath]:
    """Keys of a one-line inline table value: ``{ grpc = "x", b.c = 1 }``."""
    rest = rest.strip()
    if not rest.startswith("{"):
        return []
    found = []
    for item in re.split(r",(?=(?:[^\"']|\"[^\"]*\"|'[^']*')*$)", rest[1:].rstrip("} \t")):
        split = _key_part(item)
        key = split_dotted(split[0]) if split else None
        if key:
            found.append(key)
    return found


def key_lines(text: str) -> dict[KeyPath, int]:
    """Every key path written in ``text`` -> the line it is written on (first wins)."""
    found: dict[KeyPath, int] = {}
    table: KeyPath = ()
    in_string = ""
    for number, line in enumerate(text.splitlines(), start=1):
        if in_string:  # inside a multi-line string: no keys here
            if line.count(in_string) % 2 == 1:
                in_string = ""
            continue
        header = _HEADER.match(line)
        if header:
            table = split_dotted(header.group("path")) or table
            found.setdefault(table, number)
            continue
        split = _key_part(line)
        key = split_dotted(split[0]) if split else None
        if split is None or key is None:
            continue
        for delim in ('"""', "'''"):
            if split[1].count(delim) % 2 == 1:
                in_string = delim
        path = table + key
        for i in range(len(table) + 1, len(path) + 1):
            found.setdefault(path[:i], number)
        for sub in _inline_keys(split[1]):
            found.setdefault(path + sub, number)
    return found


def line_of(lines: Mapping[KeyPath, int], path: KeyPath) -> int:
    """The line of ``path``, else of its nearest written ancestor, else 1."""
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return 1
