"""The supervisor's background duties, and what happens when one fails.

A duty (collecting adopted orphans, following the registry into the timeline, keeping
the state dir's claim, watching files for ``--watch``) is an aid: the instances serve
without it. So a duty that raises is no reason to stop the cluster. Before this module,
any task that failed cancelled the supervisor's task group and every instance stopped:
one burst of ``EMFILE`` took a whole cluster down. Now the failure is said once (the
same error again is not said again), and the duty runs again after a pause that doubles
up to a minute. Cancellation (shutdown) still ends it at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

#: Pauses before a failed duty runs again: doubling, then a minute each time.
PAUSES: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0)

Duty = Callable[[], Coroutine[Any, Any, None]]


def error_key(e: BaseException) -> str:
    """Errors that are "the same" for saying them once: the type and the errno."""
    return f"{type(e).__name__}:{getattr(e, 'errno', None)}"


async def guarded(name: str, duty: Duty, say: Callable[[str], None],
                  pauses: Sequence[float] = PAUSES) -> None:
    """Run ``duty`` until it returns; if it raises, ``say`` so (once per kind of error)
    and run it again after the next pause. A run that lasted longer than the longest
    pause starts the pauses over."""
    said: set[str] = set()
    failures = 0
    while True:
        began = time.monotonic()
        try:
            await duty()
            return
        except Exception as e:  # the point: no duty's error stops the cluster
            if time.monotonic() - began > max(pauses):
                failures = 0
            pause = pauses[min(failures, len(pauses) - 1)]
            failures += 1
            if error_key(e) not in said:
                said.add(error_key(e))
                say(f"{name} failed ({e!r}); the instances run on, it runs again in "
                    f"{pause:g}s (this error is said once)")
        await asyncio.sleep(pause)
