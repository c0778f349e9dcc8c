"""How every long-running command (``up``, ``client``, ``console``, ``top``, ``logs -f``,
``events -f``, ``call -n N --interval S``) stops: on SIGINT and on SIGTERM, as on Ctrl-C.

A background job of a non-interactive shell (``devcluster console &`` in a script) starts
with SIGINT ignored, so ``kill -INT $!`` would never reach Python's KeyboardInterrupt.
:func:`heed_sigint`, called by the runner before any command, gives SIGINT back its
meaning for every command at once. SIGTERM's default would end the process without its
``finally`` blocks (no summary, a console left without its cleanup):
:func:`stop_on_signals` makes it Ctrl-C too for as long as a command runs.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def heed_sigint() -> None:
    """SIGINT raises KeyboardInterrupt even if this process was started with it ignored
    (exit 130, as interrupted). Python installs that handler only when SIGINT was not
    ignored at start; a command line is never meant to be deaf to Ctrl-C."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt inside the block; the old handlers after.

    An asyncio loop inside the block (``up``'s supervisor) may install its own handlers
    with ``loop.add_signal_handler``; they win while the loop runs."""
    old = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
