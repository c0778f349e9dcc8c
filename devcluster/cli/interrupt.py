"""How every long-running command (``up``, ``client``, ``console``, ``top``, ``logs -f``,
``events -f``) stops: on SIGINT and on SIGTERM, as on Ctrl-C.

A background job of a non-interactive shell (``devcluster console &`` in a script) starts
with SIGINT ignored, so ``kill -INT $!`` would never reach Python's KeyboardInterrupt;
SIGTERM's default would end the process without its ``finally`` blocks (no summary, a
console left without its cleanup). :func:`stop_on_signals` gives both the meaning of
Ctrl-C for as long as the command runs.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


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
