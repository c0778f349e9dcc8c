"""What stops or reloads a running supervisor from outside: signals and the lifeline pipe.

Handlers only schedule work on the supervisor (trio's rule); each context manager
installs its handler for the run and removes it in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Protocol


class _Stoppable(Protocol):
    def on_signal(self, sig: signal.Signals) -> None: ...

    def request_shutdown(self, grace: float | None = None, who: str = "signal") -> None: ...


@contextlib.contextmanager
def lifeline(loop: asyncio.AbstractEventLoop, sup: _Stoppable, fd: int | None) -> Iterator[None]:
    """Shut down when the process that started us is gone (its pipe end closes)."""
    if fd is None:
        yield
        return

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            sup.request_shutdown(who="the process that started the cluster exited")

    loop.add_reader(fd, readable)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        os.close(fd)


@contextlib.contextmanager
def signals(loop: asyncio.AbstractEventLoop, sup: _Stoppable) -> Iterator[None]:
    """Install SIGINT/SIGTERM/SIGHUP handlers for the run; restore the old ones after."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.getsignal(s) for s in sigs}
    for s in sigs:
        loop.add_signal_handler(s, sup.on_signal, s)
    try:
        yield
    finally:
        for s in sigs:
            loop.remove_signal_handler(s)
            signal.signal(s, old[s])

