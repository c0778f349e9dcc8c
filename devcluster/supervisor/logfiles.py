"""The log files on disk: one writer per file, capped and rotated; no event loop, no processes.

Every line of a log file is ``STAMP TEXT``, STAMP the local time to the microsecond
(``2026-12-06T15:30:01.123456``), so lines of different files interleave in order
(:mod:`devcluster.supervisor.logread` builds the merged view from them). Each line is
written once: an instance's output to ``logs/NAME.log``, the supervisor's lines to
``logs/devcluster.log``.

A file past its cap (``log_max`` bytes) becomes ``NAME.log.1`` (``.1`` becomes
``.2``... up to ``log_keep``; the oldest is dropped) and a new ``NAME.log`` is started,
so a log takes at most ``log_max x (log_keep + 1)`` bytes. Files are opened with
O_NOFOLLOW: a symlink planted in their place is replaced by a file, never written
through. A file deleted under the writer is opened again by :meth:`RotatingFile.refresh`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from devcluster import defaults

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def stamp(now: float | None = None) -> bytes:
    """The stamp of a line written at ``now`` (default: now), local time to the µs."""
    now = time.time() if now is None else now
    whole = int(now)
    micros = int((now - whole) * 1_000_000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(whole))
            + f".{micros:06d}").encode()


def clean(block: bytes) -> bytes:
    """``block`` (lines joined by ``\\n``, no final one) without the ``\\r`` of CRLF ends.

    >>> clean(b"a\\r\\nb\\r")
    b'a\\nb'
    """
    if b"\r" in block:
        block = block.replace(b"\r\n", b"\n").removesuffix(b"\r")
    return block


def stamped(block: bytes, at: bytes) -> bytes:
    """``block`` (lines joined by ``\\n``, no final one) as file lines stamped ``at``.

    >>> stamped(b"a\\nb", b"T")
    b'T a\\nT b\\n'
    """
    prefix = at + b" "
    return prefix + block.replace(b"\n", b"\n" + prefix) + b"\n"


@dataclass(frozen=True)
class Cap:
    """How big one log may grow: ``max_bytes`` a file, ``keep`` rotated files."""

    max_bytes: int = defaults.LOG_MAX
    keep: int = defaults.LOG_KEEP


#: What a log gets when nothing set ``log_max`` and ``log_keep``.
DEFAULT_CAP = Cap()


class LineSplitter:
    """Cuts a stream of output chunks into whole lines.

    :meth:`feed` returns the whole lines a chunk completes, as one block joined by
    ``\\n`` (without the last one), or None. A line longer than ``max_line`` is given
    out in pieces of about that size, so a stream without newlines holds no more.

    >>> s = LineSplitter(); s.feed(b"a\\nb"), s.feed(b"c\\n\\n"), s.flush()
    (b'a', b'bc\\n', None)
    """

    def __init__(self, max_line: int = defaults.LOG_LINE_MAX) -> None:
        self.max_line = max_line
        self._held: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> bytes | None:
        end = data.rfind(b"\n")
        if end < 0:
            self._hold(data)
            return self._take() if self._size >= self.max_line else None
        block = data[:end]
        if self._held:
            block = self._take() + block
        self._hold(data[end + 1:])
        if self._size >= self.max_line:
            block += b"\n" + self._take()
        return block

    def flush(self) -> bytes | None:
        """The unfinished last line (the stream ended), or None."""
        return self._take() if self._held else None

    def _hold(self, data: bytes) -> None:
        if data:
            self._held.append(data)
            self._size += len(data)

    def _take(self) -> bytes:
        out = b"".join(self._held)
        self._held.clear()
        self._size = 0
        return out


def open_log(path: Path) -> tuple[int, bool]:
    """An append-only fd on ``path`` (created 0644 less the umask), never through a
    symlink: one in its place is removed first. Returns (fd, whether one was)."""
    try:
        return os.open(path, _FLAGS, 0o644), False
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
    os.unlink(path)  # the link itself, not what it points to
    return os.open(path, _FLAGS | os.O_EXCL, 0o644), True


class RotatingFile:
    """One log file: appends whole lines, rotates past its :class:`Cap`.

    Errors (a full disk, a deleted directory) raise OSError; the caller decides what a
    lost line costs. Not thread-safe: one writer (the supervisor's event loop)."""

    def __init__(self, path: Path, cap: Cap = DEFAULT_CAP) -> None:
        self.path = path
        self.cap = cap
        self._fd: int | None = None
        self._ino = (0, 0)
        self.size = 0
        self.replaced_link = False
        """Set when a symlink was found in the file's place (and replaced)."""

    def write(self, data: bytes) -> None:
        """Append ``data`` (whole lines); a file that would pass the cap is rotated at a
        line boundary first (a single line longer than the cap is cut)."""
        fd = self._open()
        while len(data) > self.cap.max_bytes - self.size:
            room = max(0, self.cap.max_bytes - self.size)  # < 0: the cap was lowered
            cut = data.rfind(b"\n", 0, room) + 1 if room else 0
            if cut == 0 and self.size == 0:
                cut = room  # one line longer than a whole file
            if cut:
                self._write_all(fd, data[:cut])
                data = data[cut:]
            fd = self._rotate()
        if data:
            self._write_all(fd, data)

    def refresh(self) -> bool:
        """Open the file again if it was deleted or replaced under us; True if so."""
        if self._fd is None:
            return False
        try:
            st = os.stat(self.path, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == self._ino:
                return False
        except FileNotFoundError:
            pass
        self.close()
        self._open()
        return True

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def _open(self) -> int:
        if self._fd is None:
            fd, replaced = open_log(self.path)
            self.replaced_link = self.replaced_link or replaced
            st = os.fstat(fd)
            self._fd, self._ino, self.size = fd, (st.st_dev, st.st_ino), st.st_size
        return self._fd

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            self.size += n
            view = view[n:]

    def _rotate(self) -> int:
        """NAME.log -> NAME.log.1 -> ... -> NAME.log.KEEP (dropped past it); a new NAME.log."""
        self.close()
        keep = self.cap.keep
        for n in range(keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(rotated(self.path, n), rotated(self.path, n + 1))
        with contextlib.suppress(FileNotFoundError):
            if keep:
                os.replace(self.path, rotated(self.path, 1))
            else:
                os.unlink(self.path)
        return self._open()


def rotated(path: Path, n: int) -> Path:
    """The ``n``-th older file of the log at ``path``: ``NAME.log.N``."""
    return path.with_name(f"{path.name}.{n}")
