"""The log stream: files on disk, plus prefixed, coloured, aligned lines like honcho's.

Each line is written once: an instance's output to ``logs/<name>.log``, the
supervisor's own lines to ``logs/devcluster.log`` (both capped and rotated: see
:mod:`devcluster.supervisor.logfiles`). A foreground supervisor also prints every line
as ``15:30:01 server1  | Received: world``, the supervisor's under the name
``devcluster``; ``devcluster logs`` builds the same merged view from the files
(:mod:`devcluster.supervisor.logread`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import deque
from pathlib import Path
from typing import TextIO

from devcluster.defaults import SYSTEM_LOG, log_file_name
from devcluster.supervisor.logfiles import DEFAULT_CAP, Cap, RotatingFile, clean, stamp, stamped

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
    """Writes each line of each instance, and of the supervisor, once to its log file,
    and to the console when there is one."""

    def __init__(self, log_dir: Path, console: TextIO | None = None, width: int = 10,
                 cap: Cap = DEFAULT_CAP) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.console = console
        self.colour = console is not None and _use_colour(console)
        self.width = max(width, len(SYSTEM))
        self._system = RotatingFile(log_dir / log_file_name(None), cap)
        self._files: dict[str, RotatingFile] = {}
        self._colours: dict[str, str] = {}

    def widen(self, name: str) -> None:
        """Make room for ``name`` in the aligned prefix."""
        self.width = max(self.width, len(name))

    def output(self, name: str, block: bytes, cap: Cap = DEFAULT_CAP) -> None:
        """Whole lines of instance ``name``'s output, joined by ``\\n`` (no final one):
        one write to its file (capped by ``cap``), one to the console."""
        block, at = clean(block), stamp()
        f = self._files.get(name)
        if f is None:
            f = self._files[name] = RotatingFile(self.log_dir / log_file_name(name), cap)
        f.cap = cap  # a reload may have changed it
        self._write(f, stamped(block, at))
        if self.console is not None:
            self._show(name, block.decode("utf-8", "replace"), at, system=False)

    def system(self, text: str) -> None:
        """A line of the supervisor itself."""
        block, at = clean(text.rstrip("\r\n").encode("utf-8", "replace")), stamp()
        self._write(self._system, stamped(block, at))
        if self.console is not None:
            self._show(SYSTEM, block.decode("utf-8", "replace"), at, system=True)

    def _write(self, f: RotatingFile, data: bytes) -> None:
        # A full disk or a deleted state dir loses log lines, never the supervisor.
        with contextlib.suppress(OSError, ValueError):
            f.write(data)
        if f.replaced_link:
            f.replaced_link = False
            self.system(f"logs/{f.path.name} was a symlink; replaced it with a file "
                        "(nothing was written through it)")

    def _show(self, name: str, text: str, at: bytes, system: bool) -> None:
        assert self.console is not None
        label = f"{at[11:19].decode()} {name:<{self.width}} |"
        if self.colour:
            colour = "1" if system else self._colour(name)
            label = f"\x1b[{colour}m{label}\x1b[0m"
        try:
            self.console.write(f"{label} " + text.replace("\n", f"\n{label} ") + "\n")
            self.console.flush()
        except (BrokenPipeError, ValueError):
            self.console = None  # the terminal went away; the files still get it

    def _colour(self, name: str) -> str:
        if name not in self._colours:
            self._colours[name] = _COLOURS[len(self._colours) % len(_COLOURS)]
        return self._colours[name]

    def refresh(self) -> list[str]:
        """Open again each log file deleted (or replaced) under us; their names."""
        again = []
        with contextlib.suppress(OSError):
            self.log_dir.mkdir(exist_ok=True)  # `rm -r logs` too
        for f in [self._system, *self._files.values()]:
            with contextlib.suppress(OSError):
                if f.refresh():
                    again.append(f.path.name)
        return again

    def reopen(self) -> None:
        """Open every log file again by name (the state dir was deleted and re-created)."""
        with contextlib.suppress(OSError):
            self.log_dir.mkdir(parents=True, exist_ok=True)
        self.close()  # each opens again at its next line

    def close(self) -> None:
        """Close the log files."""
        self._system.close()
        for f in self._files.values():
            f.close()


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
