"""How ``devcluster.toml`` mistakes are worded: the error type and the context that names
the file, the line and the key.

Shared by :mod:`~devcluster.config.project` (the parser) and
:mod:`~devcluster.config.check` (its value checks), so neither reaches into the other's
private names and there is no import cycle between them.

>>> Context("devcluster.toml", {("cluster",): 1}).error(("cluster", "port"), "is bad")
ProjectError('devcluster.toml:1: cluster.port is bad')
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from devcluster.config.tomllines import KeyPath, line_of
from devcluster.errors import UsageError

__all__ = ["Context", "ProjectError", "did_you_mean", "key_name", "kind"]


class ProjectError(UsageError):
    """``devcluster.toml`` is malformed: a wrong key, type or value (exit 2)."""


class Context:
    """What an error needs to name the file and line: the source and the key lines."""

    def __init__(self, source: str, lines: Mapping[KeyPath, int]) -> None:
        self.source = source
        self.lines = lines

    def error(self, path: KeyPath, message: str) -> ProjectError:
        """``FILE:LINE: key.path message``, as the one-line error the CLI prints."""
        return ProjectError(f"{self.source}:{line_of(self.lines, path)}: {key_name(path)} {message}")

    def table(self, value: Any, path: KeyPath) -> dict[str, Any]:
        """``value`` if it is a TOML table, else the error that says so."""
        if not isinstance(value, dict):
            raise self.error(path, f"must be a table, not {kind(value)}; write [{key_name(path)}]")
        return value

    def known(self, table: Mapping[str, Any], path: KeyPath, allowed: Iterable[str]) -> None:
        """Refuse a key of ``table`` not in ``allowed``, suggesting the nearest one."""
        for key in table:
            if key not in allowed:
                raise self.error((*path, key), "is not a known key; " + did_you_mean(key, allowed))


def key_name(path: KeyPath) -> str:
    """A key path as written in TOML: ``process."my web".env``."""
    return ".".join(p if re.fullmatch(r"[A-Za-z0-9_-]+", p) else f'"{p}"' for p in path)


def kind(value: Any) -> str:
    """A TOML value's kind in words (``an integer``), for "must be X, not Y" errors."""
    names = {bool: "a boolean", int: "an integer", float: "a decimal number", str: "a string",
             list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``did you mean 'scale'?`` for a near miss, else the list of known words."""
    choices = sorted(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"known keys: {', '.join(choices)}"
