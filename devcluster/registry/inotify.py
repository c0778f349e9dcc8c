"""Linux inotify on one directory, through ctypes: sleep until the kernel says a file changed.

The file registry's watchers used watchfiles, whose Rust side polls its change set
every ``step`` ms and delivers once the set has been stable for a step: a change
was seen 1-2 steps after it landed (p99 ~8-15 ms at step 4), and every idle watcher
woke 250 times a second. Here the watcher blocks in ``poll(2)`` on the inotify
descriptor and wakes when the kernel queues an event: a change is seen in well
under a millisecond, and an idle watcher wakes only for its periodic re-read.

Only what the registry needs: one directory, events about entries of one name, and
the directory itself going away. :func:`available` is False off Linux (or without
a libc that has inotify); the registry then falls back to watchfiles.

>>> with DirWatch(state_dir, "registry.json") as w:       # doctest: +SKIP
...     w.wait(1.0)
<Wake.CHANGED: 1>
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import math
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000

#: Entry events that can change what a reader of the file sees. A rename over the
#: file (``os.replace``) is IN_MOVED_TO; an editor saving in place ends with
#: IN_CLOSE_WRITE. IN_MODIFY is left out: it fires mid-write, on a torn file.
ENTRY_EVENTS = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE
#: The watched directory itself went away (deleted, or renamed: its inode moved).
GONE_EVENTS = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_READ_SIZE = 64 * 1024


class Wake(enum.Enum):
    """Why :meth:`DirWatch.wait` returned."""

    #: An entry of the watched name changed (or the kernel's queue overflowed).
    CHANGED = 1
    #: The timeout passed with no change.
    TIMEOUT = 2
    #: The directory was deleted or moved: this watch is blind, arm a new one.
    GONE = 3
    #: The stop event was set.
    STOPPED = 4


def _libc() -> Any:
    try:
        # The running interpreter's own symbols include libc's (no find_library: it
        # runs ldconfig in a subprocess).
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc() if os.uname().sysname == "Linux" else None


def available() -> bool:
    """True when this platform has inotify (Linux with a libc that exposes it)."""
    return _LIBC is not None


class WatchStop(threading.Event):
    """A ``threading.Event`` that also wakes watchers blocked in ``poll(2)``.

    A watcher given a plain Event can only look at it between waits; given this one,
    it registers a pipe that :meth:`set` writes to, so stopping takes effect at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self._wakers: set[Callable[[], None]] = set()
        self._wakers_lock = threading.Lock()

    def set(self) -> None:
        super().set()
        with self._wakers_lock:
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    def add_waker(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` on :meth:`set` (at once if already set)."""
        with self._wakers_lock:
            self._wakers.add(wake)
        if self.is_set():
            wake()

    def remove_waker(self, wake: Callable[[], None]) -> None:
        with self._wakers_lock:
            self._wakers.discard(wake)


#: How often a watcher given a plain Event looks at it while nothing happens.
PLAIN_STOP_POLL = 0.05


class DirWatch:
    """An inotify watch of ``directory`` for entries named ``name``.

    Raises OSError when the watch cannot be made (no such directory, the user's
    inotify limits reached); the caller falls back to another way of watching.
    """

    def __init__(self, directory: str | os.PathLike[str], name: str,
                 stop: threading.Event | None = None) -> None:
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "inotify is not available")
        self._name = os.fsencode(name)
        fd: int = _LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self._fd = fd
        self._pipe: tuple[int, int] | None = None
        self._stop = stop
        try:
            wd = _LIBC.inotify_add_watch(fd, os.fsencode(os.fspath(directory)),
                                         ENTRY_EVENTS | GONE_EVENTS | IN_ONLYDIR)
            if wd < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), os.fspath(directory))
            if isinstance(stop, WatchStop):
                self._pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
                stop.add_waker(self._wake)
        except BaseException:
            self.close()
            raise
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        if self._pipe is not None:
            self._poll.register(self._pipe[0], select.POLLIN)

    def __enter__(self) -> DirWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self._fd

    def _wake(self) -> None:
        pipe = self._pipe
        if pipe is not None:
            # Full (already woken) or closed meanwhile: either way nothing to do.
            with contextlib.suppress(OSError):
                os.write(pipe[1], b"x")

    def close(self) -> None:
        """Drop the watch (idempotent)."""
        if isinstance(self._stop, WatchStop):
            self._stop.remove_waker(self._wake)
        pipe, self._pipe = self._pipe, None
        for fd in (self._fd, *(pipe or ())):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = -1

    def wait(self, timeout: float | None) -> Wake:
        """Block until the named entry changes, the directory goes, ``stop``, or ``timeout`` s."""
        stop = self._stop
        plain = stop is not None and self._pipe is None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if stop is not None and stop.is_set():
                return Wake.STOPPED
            step = None if deadline is None else deadline - time.monotonic()
            if step is not None and step <= 0:
                return Wake.TIMEOUT
            if plain and (step is None or step > PLAIN_STOP_POLL):
                step = PLAIN_STOP_POLL
            ready = self._poll.poll(None if step is None else math.ceil(step * 1000))
            if any(fd == self._fd for fd, _ in ready):
                wake = self.drain()
                if wake is not None:
                    return wake
            # else: a timeout, or the stop pipe: the loop's first lines decide

    def drain(self) -> Wake | None:
        """Read every queued event; what they add up to (None: nothing of ours)."""
        found: Wake | None = None
        while True:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return found
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                name = data[offset:offset + length].rstrip(b"\0")
                offset += length
                if mask & GONE_EVENTS:
                    return Wake.GONE
                if mask & IN_Q_OVERFLOW or (mask & ENTRY_EVENTS and name == self._name):
                    found = Wake.CHANGED

    async def await_change(self, timeout: float | None) -> Wake:
        """Async :meth:`wait` (no stop event: cancel the awaiting task instead)."""
        import asyncio  # only async watchers pay for it

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            ready: asyncio.Future[None] = loop.create_future()

            def readable(fut: asyncio.Future[None] = ready) -> None:
                if not fut.done():
                    fut.set_result(None)

            loop.add_reader(self._fd, readable)
            try:
                await asyncio.wait_for(ready, None if deadline is None
                                       else max(0.0, deadline - loop.time()))
            except TimeoutError:
                return Wake.TIMEOUT
            finally:
                loop.remove_reader(self._fd)
            wake = self.drain()
            if wake is not None:
                return wake
