"""The merged log stream: prefixed, coloured, aligned lines like honcho's, plus files.

Every instance line goes to the console (when there is one) as
``15:30:01 server1  | Received: world`` and to ``logs/<name>.log``; the supervisor's
own lines use the name ``devcluster``. Detached supervisors write the console
stream to ``logs/devcluster.log``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import IO, TextIO

from devcluster.defaults import SYSTEM_LOG, log_file_name
from devcluster.statedir import open_nofollow

SYSTEM = SYSTEM_LOG
_COLOURS = ("36", "33", "32", "35", "34", "31", "96", "93", "92", "95", "94", "91")


def _use_colour(stream: TextIO) -> bool:
    # NO_COLOR (https://no-color.org) wins; then FORCE_COLOR; then "is it a terminal".
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return hasattr(stream, "isatty") and stream.isatty()


class LogSink:
    """Writes every line of every instance to the console and to its log file."""

    def __init__(self, log_dir: Path, console: TextIO | None = None, width: int = 10) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.console = console
        self.colour = console is not None and _use_colour(console)
        self.width = max(width, len(SYSTEM))
        self._files: dict[str, IO[str]] = {}
        self._colours: dict[str, str] = {}
        self._recent: dict[str, deque[str]] = {}
        # The merged stream is always on disk too, for `devcluster logs` and post-mortems.
        self._merged = open(log_dir / log_file_name(None), "a", buffering=1, encoding="utf-8",  # noqa: SIM115
                            opener=open_nofollow)

    def widen(self, name: str) -> None:
        """Make room for ``name`` in the aligned prefix."""
        self.width = max(self.width, len(name))

    def line(self, name: str, text: str, *, system: bool = False) -> None:
        """One line of output of instance ``name`` (or of the supervisor: ``system``)."""
        stamp = time.strftime("%H:%M:%S")
        text = text.rstrip("\r\n")
        # A full disk or a deleted state dir loses log lines, never the supervisor.
        with contextlib.suppress(OSError, ValueError):
            if not system:  # an instance may be named like the supervisor: it has its log
                self._recent.setdefault(name, deque(maxlen=50)).append(text)
                self._file(name).write(f"{stamp} {text}\n")
            self._merged.write(f"{stamp} {name:<{self.width}} | {text}\n")
        if self.console is not None:
            label = f"{stamp} {name:<{self.width}} |"
            if self.colour:
                colour = "1" if system else self._colour(name)
                label = f"\x1b[{colour}m{label}\x1b[0m"
            try:
                self.console.write(f"{label} {text}\n")
                self.console.flush()
            except (BrokenPipeError, ValueError):
                self.console = None  # the terminal went away; the files still get it

    def system(self, text: str) -> None:
        """A line of the supervisor itself."""
        self.line(SYSTEM, text, system=True)

    def recent(self, name: str, n: int = 10) -> list[str]:
        """The last ``n`` lines of ``name`` (kept in memory for error reports)."""
        return list(self._recent.get(name, ()))[-n:]

    def _colour(self, name: str) -> str:
        if name not in self._colours:
            self._colours[name] = _COLOURS[len(self._colours) % len(_COLOURS)]
        return self._colours[name]

    def _file(self, name: str) -> IO[str]:
        f = self._files.get(name)
        if f is None:
            f = open(self.log_dir / log_file_name(name), "a", buffering=1, encoding="utf-8",  # noqa: SIM115
                     opener=open_nofollow)
            self._files[name] = f
        return f

    def reopen(self) -> None:
        """Open every log file again by name (the state dir was deleted and re-created)."""
        with contextlib.suppress(OSError):
            self.log_dir.mkdir(parents=True, exist_ok=True)
            merged = open(self.log_dir / log_file_name(None), "a", buffering=1, encoding="utf-8",  # noqa: SIM115
                          opener=open_nofollow)
            self._merged.close()
            self._merged = merged
            for f in self._files.values():
                f.close()
            self._files.clear()

    def close(self) -> None:
        """Close the log files."""
        for f in self._files.values():
            with contextlib.suppress(OSError):
                f.close()
        self._files.clear()
        with contextlib.suppress(OSError):
            self._merged.close()


def tail(path: Path, n: int) -> list[str]:
    """The last ``n`` lines of a log file (empty when it does not exist)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [ln.rstrip("\n") for ln in deque(f, maxlen=n)]
    except FileNotFoundError:
        return []


def default_console() -> TextIO:
    """Where a foreground supervisor prints."""
    return sys.stdout
