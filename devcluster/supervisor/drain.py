"""Drain: wait until the registry's watchers have applied a change, not a fixed time (issue 28).

A stopping gRPC server refuses new calls, so before an instance gets its SIGINT the
clients that watch the registry should have stopped sending to it: the registry says
``draining`` (or, in a reload, names the replacement), and the stop waits until every
watcher has *applied* that write. Two kinds of watcher say so:

* a balanced client (:class:`devcluster.client.BalancedChannel` and its asyncio twin)
  reports the registry revision it has applied in its statistics file
  (``clients/<pid>-<id>.json``, field ``revision``), written as soon as it applies one;
* an xDS client ACKs the update; the xDS server (:class:`AckSource`) counts the
  connected streams that have not yet ACKed one made from that revision.

The wait ends when none is behind, or after :data:`DRAIN_BOUND` seconds (today's fixed
delay, now an upper bound) for watchers that say nothing: a client whose file has no
``revision`` (an older devcluster), one that is hung, one that never ACKs. With no
watcher at all (no live client file, no xDS stream) there is no wait. A client that
publishes no statistics (``DEVCLUSTER_CLIENT_STATS=0``, an etcd registry without a
``state_dir``) is invisible here: it relies on failover alone.

>>> watchers = Watchers(Path(".devcluster"))                # doctest: +SKIP
>>> await watchers.until_applied(42)                         # doctest: +SKIP
Drained(revision=42, watchers=2, behind=0, waited_s=0.004)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from devcluster import statedir

#: The longest a drain waits for watchers that have not said they applied the change
#: (the fixed delay of before issue 28, kept as the bound for those that say nothing).
DRAIN_BOUND = 0.1
#: How often a drain looks again while a watcher is behind (a client file is a stat
#: and a read; an xDS stream a few attributes).
POLL = 0.003


class AckSource(Protocol):
    """Watchers that acknowledge what they applied (the xDS server's streams)."""

    def lagging(self, revision: int | None) -> tuple[int, int]:
        """(connected watchers, those that have not applied registry ``revision`` yet;
        None: an unknown revision, every connected one). Called on the event loop."""


@dataclass(frozen=True)
class Drained:
    """How a drain ended: ``behind`` watchers (of ``watchers`` seen) had not applied
    ``revision`` when it stopped waiting, after ``waited_s``."""

    revision: int | None
    watchers: int
    behind: int
    waited_s: float


class Watchers:
    """Who watches the registry of one cluster: the client files of ``state_dir`` and the
    :class:`AckSource` s added (the xDS server, once it listens)."""

    def __init__(self, state_dir: Path | None, bound: float = DRAIN_BOUND, poll: float = POLL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.state_dir = state_dir
        self.bound = bound
        self.poll = poll
        self._clock = clock
        self._sources: list[AckSource] = []

    def __repr__(self) -> str:
        return f"<Watchers {self.state_dir} sources={len(self._sources)} bound={self.bound:g}s>"

    def add(self, source: AckSource) -> None:
        self._sources.append(source)

    def remove(self, source: AckSource) -> None:
        if source in self._sources:
            self._sources.remove(source)

    def clients(self, revision: int | None) -> tuple[int, int]:
        """(live clients, clients behind ``revision``): a file read, for a thread."""
        if self.state_dir is None:
            return 0, 0
        applied = statedir.client_revisions(self.state_dir)
        behind = sum(1 for r in applied if revision is None or r is None or r < revision)
        return len(applied), behind

    def streams(self, revision: int | None) -> tuple[int, int]:
        """(connected xDS streams, streams behind ``revision``), on the loop."""
        counts = [source.lagging(revision) for source in list(self._sources)]
        return sum(c for c, _ in counts), sum(b for _, b in counts)

    async def until_applied(self, revision: int | None) -> Drained:
        """Wait until every watcher has applied registry ``revision`` (None: unknown, so
        any watcher at all waits the bound), at most :attr:`bound` seconds."""
        began = self._clock()
        seen = 0
        while True:
            clients, behind = await asyncio.to_thread(self.clients, revision)
            streams, lagging = self.streams(revision)
            seen, behind = max(seen, clients + streams), behind + lagging
            waited = self._clock() - began
            if not behind or waited >= self.bound:
                return Drained(revision, seen, behind, round(waited, 4))
            await asyncio.sleep(min(self.poll, self.bound - waited))
