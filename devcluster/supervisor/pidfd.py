"""Wait for a process to exit without collecting it: its pidfd becomes readable.

One helper for every place that needs it (the supervisor's exit wait, forked
instances, the fork server's intermediates). Stdlib only: it sits on the start-up path.
"""

from __future__ import annotations

import asyncio
import os


async def exited(pid: int) -> bool:
    """Return once process ``pid`` has exited (it stays uncollected); False when no pidfd
    could be opened (not Linux >= 5.3, or the pid is gone already)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return False
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, wake, gone)
    try:
        await gone
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return True


def wake(future: asyncio.Future[None]) -> None:
    """Resolve ``future`` unless it is already (a reader or writer callback may run
    again before it is removed)."""
    if not future.done():
        future.set_result(None)
