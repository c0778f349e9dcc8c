"""A fixed list of addresses as a registry: the article's StaticResolver, in devcluster.

``static:///127.0.0.1:50051,127.0.0.1:50052`` needs no cluster and no state dir:
each address is one instance named by its address, serving, weight 1, in list
order. The balanced channel treats it like any registry, so pickers, failover,
ejection and health probes all work; only the list itself never changes unless
the program changes it (``update``/``register``, in memory).

>>> channel = static_channel(["127.0.0.1:50051", "127.0.0.1:50052"], policy="pick_first")  # doctest: +SKIP
>>> GreeterStub(channel).SayHello(request, timeout=1).message                             # doctest: +SKIP
'Hello world from server1'
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from devcluster.client.channel import BalancedChannel
from devcluster.errors import UnknownInstanceError
from devcluster.registry.base import Registry
from devcluster.registry.record import Record, Snapshot, State

#: The service of every static instance (a static channel takes every instance).
STATIC_SERVICE = "static"

#: How often a watcher looks at its ``stop`` event while the list is unchanged.
_STOP_CHECK = 0.05


class StaticRegistry(Registry):
    """``addresses`` as serving records named by address; changes stay in memory.

    >>> reg = StaticRegistry(["127.0.0.1:50052", "127.0.0.1:50051"])
    >>> sorted(reg.snapshot().records, key=reg.order)
    ['127.0.0.1:50052', '127.0.0.1:50051']
    """

    def __init__(self, addresses: Sequence[str]) -> None:
        self.addresses = tuple(addresses)
        self._rank = {address: i for i, address in enumerate(self.addresses)}
        self._cond = threading.Condition()
        now = time.time()
        self._snap = Snapshot(1, MappingProxyType({
            a: Record(a, STATIC_SERVICE, a, weight=1, enabled=True, state=State.SERVING,
                      updated_at=now) for a in self.addresses}))

    def __repr__(self) -> str:
        return f"StaticRegistry({list(self.addresses)!r})"

    def order(self, name: str) -> int:
        """Position of ``name`` in the list (names added later sort after it)."""
        return self._rank.get(name, len(self._rank))

    def _publish(self, records: Mapping[str, Record]) -> Snapshot:
        with self._cond:
            self._snap = Snapshot(self._snap.revision + 1, MappingProxyType(dict(records)))
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
                # Changes notify at once; the timeout only lets a set `stop` end the
                # watch promptly (an Event cannot wake a Condition).
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
            await asyncio.sleep(_STOP_CHECK)  # in-memory list: nothing to await on
            if self._snap is not seen:
                seen = self._snap
                yield seen


def static_channel(addresses: Sequence[str], **options: Any) -> BalancedChannel:
    """A BalancedChannel over a fixed list of addresses (first = first in the list).

    ``options`` are BalancedChannel's (``policy``, ``retry_on``, ``on_call``...).
    """
    registry = StaticRegistry(addresses)
    return BalancedChannel(None, registry, order=registry.order, **options)
