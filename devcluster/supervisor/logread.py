"""Reading the logs back: one instance's lines, or the merged view of every log.

Each line is on disk once (:mod:`devcluster.supervisor.logfiles`): an instance's in
``logs/NAME.log`` (then ``NAME.log.1``...), the supervisor's in ``logs/devcluster.log``.
The merged view that ``devcluster logs`` (no name), ``Cluster.logs()`` and the pytest
report show is built here, by interleaving the files on their microsecond stamps, and
shown as the foreground supervisor prints it::

    15:30:01 devcluster | greeter.1 serving on 127.0.0.1:5000 (...)
    15:30:02 greeter.1  | Received: world

A line without a stamp (written by an older devcluster, or by hand) is shown as it is,
in the place of the line before it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import struct
import termios
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from devcluster.defaults import LOG_KEEP_MAX, LOG_READ_WAIT, SYSTEM_LOG, instance_of_log, log_file_name
from devcluster.supervisor.logfiles import rotated

_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}) ")
#: Bytes read at a time from the end of a file to find its last lines.
_BLOCK = 1 << 16


@dataclass(frozen=True)
class LogLine:
    """One line of a log: its stamp (the one before it if it has none), whose, what."""

    key: str
    """The stamp the merged view orders by: ``2026-12-06T15:30:01.123456``."""
    name: str
    """The instance, or ``devcluster`` for the supervisor."""
    text: str
    stamped: bool = True
    """False: the line carried no stamp of its own (it is shown as written)."""

    @property
    def clock(self) -> str:
        """``15:30:01``."""
        return self.key[11:19] if self.stamped else ""

    def show(self, width: int | None = None) -> str:
        """As ``devcluster logs NAME`` prints it; with ``width``, as the merged view does
        (the name in a column that wide)."""
        if not self.stamped:
            return self.text
        if width is None:
            return f"{self.clock} {self.text}"
        return f"{self.clock} {self.name:<{width}} | {self.text}"

    def to_json(self) -> str:
        """``{"time", "instance", "line"}``: one line of ``logs --json``."""
        return json.dumps({"time": self.clock, "instance": self.name, "line": self.text})


def parse(raw: str, name: str, before: str = "") -> LogLine:
    """One line of a file of ``name``; ``before``: the stamp of the line before it."""
    match = _STAMP.match(raw)
    if match is None:
        return LogLine(before, name, raw, stamped=False)
    return LogLine(match.group(1), name, raw[match.end():])


def _parse_all(raw: list[bytes], name: str, before: str = "") -> list[LogLine]:
    out = []
    for line in raw:
        parsed = parse(line.decode("utf-8", "replace"), name, before)
        before = parsed.key
        out.append(parsed)
    return out


def logs_in(log_dir: Path) -> list[tuple[Path, str]]:
    """Every current log file in ``log_dir`` (not the rotated ones) and whose it is."""
    found = []
    with contextlib.suppress(OSError):
        for path in sorted(log_dir.glob("*.log")):
            name = instance_of_log(path.name)
            if name is not None or path.name == log_file_name(None):
                found.append((path, name or SYSTEM_LOG))
    return found


def width(logs: list[tuple[Path, str]]) -> int:
    """The name column of the merged view: as wide as the longest name."""
    return max([len(SYSTEM_LOG), *(len(name) for _, name in logs)])


def _tail(path: Path, n: int) -> list[bytes]:
    """The last ``n`` lines of one file (none if it does not exist)."""
    if n <= 0:
        return []
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below)
    except (FileNotFoundError, NotADirectoryError):
        return []
    with f:
        return _tail_of(f, n, f.seek(0, os.SEEK_END))


def _tail_of(f: BinaryIO, n: int, end: int) -> list[bytes]:
    """The last ``n`` lines of the open file ``f`` before offset ``end``, read backwards."""
    if n <= 0:
        return []
    pos, chunks, count = end, [], 0
    while pos > 0 and count <= n:
        step = min(_BLOCK, pos)
        pos -= step
        f.seek(pos)
        chunks.append(f.read(step))
        count += chunks[-1].count(b"\n")
    lines = b"".join(reversed(chunks)).split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the last line's newline
    if pos > 0:
        lines = lines[1:]  # began mid-line
    return lines[-n:]


def _older(path: Path, n: int, lines: list[bytes]) -> list[bytes]:
    """``lines`` (the end of a log), preceded from its rotated files up to ``n`` lines."""
    k = 1
    while len(lines) < n and rotated(path, k).exists():
        lines = _tail(rotated(path, k), n - len(lines)) + lines
        k += 1
    return lines


def _newest(lines: list[LogLine], n: int) -> list[LogLine]:
    lines.sort(key=lambda line: line.key)  # stable: a file's own order stays
    return lines[-n:] if n > 0 else []


def last(log_dir: Path, name: str | None, n: int) -> list[LogLine]:
    """The last ``n`` lines of instance ``name``'s log; None: of the merged view."""
    files = [(log_dir / log_file_name(name), name)] if name is not None else logs_in(log_dir)
    every = []
    for path, whose in files:
        every.extend(_parse_all(_older(path, n, _tail(path, n)), whose))
    return _newest(every, n)


def unread(pid: int) -> int:
    """Bytes process ``pid`` wrote to its output pipe that nobody has read yet (0 when
    its stdout is not a pipe, the process is gone, or the system does not say: Linux
    reaches the pipe through ``/proc/PID/fd/1``, and FIONREAD counts what it holds)."""
    path = f"/proc/{pid}/fd/1"
    try:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            return 0
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return 0
    try:
        held = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", held)[0])
    except OSError:
        return 0
    finally:
        os.close(fd)


def wait_read(pids: Iterable[int], timeout: float = LOG_READ_WAIT) -> bool:
    """Wait, at most ``timeout`` seconds, until the supervisor has read everything these
    processes wrote (their output pipes hold nothing), so the log files show it; True
    once they do. A pipe is not a file: nothing wakes a second reader, so this polls."""
    waiting = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        waiting = [pid for pid in waiting if unread(pid)]
        if not waiting:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)


def shown(log_dir: Path, name: str | None, n: int) -> list[str]:
    """:func:`last`, as ``devcluster logs`` prints it."""
    column = None if name is not None else width(logs_in(log_dir))
    return [line.show(column) for line in last(log_dir, name, n)]


class _Follower:
    """What is appended to one log file, across its rotation, deletion and re-creation."""

    def __init__(self, path: Path, name: str, from_start: bool) -> None:
        self.path, self.name = path, name
        self.file: BinaryIO | None = None
        self.inode: int | None = None
        self.pending = b""
        self.before = ""
        self.start = 0
        """Where reading began: the last lines before it are :meth:`tail`."""
        self._open(from_start)

    def tail(self, n: int) -> list[LogLine]:
        """The last ``n`` lines before :attr:`start` (from the rotated files too)."""
        mine: list[bytes] = []
        if self.file is not None:
            mine = _tail_of(self.file, n, self.start)
            self.file.seek(self.start)  # reading goes on from there
        return _parse_all(_older(self.path, n, mine), self.name)

    def _open(self, from_start: bool) -> None:
        try:
            self.file = open(self.path, "rb")  # noqa: SIM115 (kept open while following)
        except OSError:
            return
        if not from_start:
            self.start = self.file.seek(0, os.SEEK_END)
        self.inode = os.fstat(self.file.fileno()).st_ino

    def read(self) -> list[LogLine]:
        """The lines written since the last read (finished lines only)."""
        out = self._drain()
        try:
            inode: int | None = os.stat(self.path).st_ino
        except OSError:
            inode = None
        if inode is not None and inode != self.inode:  # rotated, or deleted and new
            out += self._drain()  # what was written to the old file meanwhile
            if self.pending:
                out += self._parse([self.pending])
            self.pending = b""
            out += self._switch()
        return out

    def _switch(self) -> list[LogLine]:
        """Our file was rotated (maybe more than once since we looked) or deleted: read
        the files rotated after it, whole, then follow the current file from its start."""
        ours = os.fstat(self.file.fileno()) if self.file is not None else None
        self.close()
        chain = _chain(self.path)
        if not chain:
            return []
        stats = [os.fstat(f.fileno()) for f in chain]
        inodes = [st.st_ino for st in stats]
        if ours is None:  # the file did not exist: only the current one is new
            first = len(chain) - 1
        elif ours.st_ino in inodes:
            first = inodes.index(ours.st_ino) + 1
        else:  # ours is gone (deleted, or rotated past log_keep): those written since
            first = next((i for i, st in enumerate(stats)
                          if st.st_mtime_ns >= ours.st_mtime_ns), len(chain))
        first = min(first, len(chain) - 1)  # the current file is followed in any case
        out = []
        for i, f in enumerate(chain[:-1]):
            with f:
                if i >= first:
                    out += self._parse(f.read().splitlines())
        self.file, self.inode = chain[-1], inodes[-1]
        return out + self._drain()

    def _drain(self) -> list[LogLine]:
        if self.file is None:
            return []
        *whole, self.pending = (self.pending + self.file.read()).split(b"\n")
        return self._parse(whole)

    def _parse(self, raw: list[bytes]) -> list[LogLine]:
        lines = _parse_all(raw, self.name, self.before)
        if lines:
            self.before = lines[-1].key
        return lines

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _chain(path: Path) -> list[BinaryIO]:
    """Every file of the log at ``path``, oldest first (``NAME.log.K`` ... ``NAME.log.1``,
    ``NAME.log``), opened; opened again if the log rotated meanwhile."""
    names = [*(rotated(path, k) for k in range(LOG_KEEP_MAX, 0, -1)), path]
    for _ in range(5):
        opened = []
        for name in names:
            with contextlib.suppress(OSError):
                opened.append((name, open(name, "rb")))  # noqa: SIM115 (the caller closes)
        if all(_same(name, f) for name, f in opened):
            break
        for _name, f in opened:
            f.close()
    return [f for _name, f in opened if not f.closed]


def _same(name: Path, f: BinaryIO) -> bool:
    """Is ``name`` still the file ``f`` is open on?"""
    try:
        return os.stat(name).st_ino == os.fstat(f.fileno()).st_ino
    except OSError:
        return False


def follow(log_dir: Path, name: str | None, n: int = 0,
           stop: threading.Event | None = None) -> Iterator[list[LogLine]]:
    """The last ``n`` lines of ``name``'s log (None: of the merged view), then each line
    as it is written, a batch at a time, each batch in stamp order (with no name, a log
    that appears is read from its start). Nothing is missed or shown twice between the
    two. Ends when ``stop`` is set; Ctrl-C raises KeyboardInterrupt."""
    import watchfiles

    files = ([(log_dir / log_file_name(name), name)] if name is not None
             else logs_in(log_dir))
    followers = {path: _Follower(path, whose, from_start=False) for path, whose in files}
    prefix = files[0][0].name if name is not None else ""

    def wanted(_change: watchfiles.Change, p: str) -> bool:
        # NAME.log and its rotated files; with no name, every log
        return Path(p).name.startswith(prefix) and ".log" in Path(p).name

    try:
        yield _newest([ln for f in followers.values() for ln in f.tail(n)], n)
        # Also every second without an event: a change inotify did not report is read.
        for _ in watchfiles.watch(log_dir, stop_event=stop, debounce=50, step=20,
                                  watch_filter=wanted, raise_interrupt=True,
                                  rust_timeout=1000, yield_on_timeout=True):
            if name is None:
                for path, whose in logs_in(log_dir):
                    if path not in followers:
                        followers[path] = _Follower(path, whose, from_start=True)
            batch = [line for f in followers.values() for line in f.read()]
            if batch:
                yield sorted(batch, key=lambda line: line.key)
    finally:
        for f in followers.values():
            f.close()
