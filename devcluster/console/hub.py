"""The console's live feed: one view of the cluster, fanned out to every open page.

One registry watcher and one timer serve all pages: a registry change is merged into
the rows and sent at once (the supervisor's ``ps`` follows in a worker thread); the
timer samples CPU, RSS and the client statistics every :data:`TICK` seconds while a page
is open, and sends only what changed. An idle console with 20 pages open costs one
cheap sample a second, not twenty.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from devcluster.console.model import FULL_REFRESH, ClusterView, stable_part

log = logging.getLogger(__name__)

#: Seconds between two samples of CPU, RSS and client statistics while pages are open.
TICK = 1.0
#: Seconds between two comments on an idle stream (finds pages that went away).
KEEPALIVE = 15.0
#: Events a slow page may fall behind before it is dropped (it reconnects by itself).
BACKLOG = 64


def sse(event: str, data: Any) -> bytes:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Hub:
    """Keeps ``view`` current and hands every change to the subscribed pages."""

    def __init__(self, view: ClusterView, tick: float = TICK) -> None:
        self.view = view
        self.tick = tick
        self._pages: set[asyncio.Queue[bytes | None]] = set()
        self._refresh_wanted = asyncio.Event()
        self._sent_rows: list[tuple[Any, ...]] | None = None
        self._sent_traffic: dict[str, Any] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: When the last registry snapshot arrived and when its rows went out (bench).
        self.last_change: tuple[int | None, float] = (None, 0.0)

    async def start(self) -> None:
        await asyncio.to_thread(self.view.refresh)
        await asyncio.to_thread(self.view.sample)
        self._tasks = [asyncio.create_task(coro) for coro in
                       (self._watch(), self._refresher(), self._ticker())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for queue in self._pages:
            queue.put_nowait(None)  # ends each stream

    # -- pages -------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[bytes | None]:
        """A queue of events for one page, starting with the whole state."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(BACKLOG)
        queue.put_nowait(self._instances_event())
        queue.put_nowait(sse("traffic", {"time": time.time(), "traffic": self.view.traffic()}))
        self._pages.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes | None]) -> None:
        self._pages.discard(queue)

    @property
    def pages(self) -> int:
        return len(self._pages)

    def _broadcast(self, event: bytes) -> None:
        for queue in list(self._pages):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._pages.discard(queue)  # hung page: its stream ends, it reconnects
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(None)

    def _instances_event(self) -> bytes:
        return sse("instances", {"revision": self.view.revision, "instances": self.view.rows(),
                                 "types": self.view.process_types(),
                                 "supervisor": self.view.supervisor_note})

    def publish(self) -> None:
        """Send the rows and the traffic to every page, each only if it changed."""
        rows = self.view.rows()
        stable = stable_part(rows)
        if stable != self._sent_rows:
            self._sent_rows = stable
            self._broadcast(self._instances_event())
        traffic = self.view.traffic()
        if traffic != self._sent_traffic:
            self._sent_traffic = traffic
            self._broadcast(sse("traffic", {"time": time.time(), "traffic": traffic}))

    def want_refresh(self) -> None:
        """Ask for a full ``ps`` refresh soon (after an action, or a registry change)."""
        self._refresh_wanted.set()

    # -- the tasks ---------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            try:
                async for snapshot in self.view.registry.awatch():
                    self.view.apply(snapshot)  # at once: no supervisor call in the way
                    self.publish()
                    self.last_change = (snapshot.revision, time.monotonic())
                    self.want_refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A registry caught mid-repair or an etcd restart must not end the feed.
                log.warning("registry watch failed; retrying in 0.5 s", exc_info=True)
            await asyncio.sleep(0.5)

    async def _refresher(self) -> None:
        while True:
            await self._refresh_wanted.wait()
            self._refresh_wanted.clear()
            try:
                await asyncio.to_thread(self.view.refresh)
            except Exception:
                log.warning("refresh failed", exc_info=True)
            self.publish()

    async def _ticker(self) -> None:
        # A timer because CPU%, RSS and the clients' files change without any event.
        while True:
            await asyncio.sleep(self.tick)
            if not self._pages:
                continue
            if time.monotonic() - self.view.last_full >= FULL_REFRESH:
                self.want_refresh()
            try:
                await asyncio.to_thread(self.view.sample)
            except Exception:
                log.warning("sample failed", exc_info=True)
            self.publish()
