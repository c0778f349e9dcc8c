"""An in-process registry: the contract without files or servers.

Used by ``static:///`` targets (a fixed address list) and by unit tests. Every write
publishes a new snapshot and wakes watchers at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from devcluster.errors import UnknownInstanceError
from devcluster.registry.base import Registry
from devcluster.registry.record import Record, Snapshot

#: How often a waiting watcher looks at its ``stop`` event (an Event cannot wake a
#: Condition), and how often ``awatch`` looks for a change (nothing to await on).
_STOP_CHECK = 0.05
_AWATCH_STEP = 0.002


class MemoryRegistry(Registry):
    """Records in memory, one writer process; same contract as the file backend.

    >>> reg = MemoryRegistry([Record("server1", "server", "127.0.0.1:50051")])
    >>> reg.update("server1", weight=5).weight
    5
    """

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self._cond = threading.Condition()
        self._snap = Snapshot(0)
        records = list(records)
        if records:
            self.reset(records)

    def _publish(self, records: Mapping[str, Record]) -> Snapshot:
        with self._cond:
            self._snap = Snapshot(self._snap.revision + 1,
                                  MappingProxyType(dict(sorted(records.items()))))
            self._cond.notify_all()
            return self._snap

    def register(self, record: Record) -> Record:
        stored = record.with_(updated_at=time.time())
        with self._cond:
            self._publish({**self._snap.records, record.name: stored})
        return stored

    def update(self, name: str, **fields: Any) -> Record:
        return self.update_many({name: fields}).records[name]

    def update_many(self, changes: Mapping[str, Mapping[str, Any]]) -> Snapshot:
        with self._cond:
            records = dict(self._snap.records)
            for name, fields in changes.items():
                if name not in records:
                    raise UnknownInstanceError(name, list(records))
                records[name] = records[name].with_(**fields, updated_at=time.time())
            return self._publish(records)

    def deregister(self, name: str) -> None:
        with self._cond:
            self._publish({n: r for n, r in self._snap.records.items() if n != name})

    def reset(self, records: Iterable[Record]) -> Snapshot:
        return self._publish({r.name: r for r in records})

    def snapshot(self) -> Snapshot:
        return self._snap

    def watch(self, stop: threading.Event | None = None) -> Iterator[Snapshot]:
        stop = stop or threading.Event()
        seen = self._snap
        yield seen
        while not stop.is_set():
            with self._cond:
                if self._snap is seen:
                    self._cond.wait(_STOP_CHECK)
                snap = self._snap
            if snap is not seen:
                seen = snap
                yield snap

    async def awatch(self) -> AsyncIterator[Snapshot]:
        seen = self._snap
        yield seen
        while True:
            await asyncio.sleep(_AWATCH_STEP)
            if self._snap is not seen:
                seen = self._snap
                yield seen
