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

import time
from collections.abc import Sequence
from typing import Any

from devcluster.client.channel import BalancedChannel
from devcluster.registry.memory import MemoryRegistry
from devcluster.registry.record import Record, State

#: The service of every static instance (a static channel takes every instance).
STATIC_SERVICE = "static"

class StaticRegistry(MemoryRegistry):
    """``addresses`` as serving records named by address; changes stay in memory.

    >>> reg = StaticRegistry(["127.0.0.1:50052", "127.0.0.1:50051"])
    >>> sorted(reg.snapshot().records, key=reg.order)
    ['127.0.0.1:50052', '127.0.0.1:50051']
    """

    def __init__(self, addresses: Sequence[str]) -> None:
        self.addresses = tuple(addresses)
        self._rank = {address: i for i, address in enumerate(self.addresses)}
        now = time.time()
        super().__init__(Record(a, STATIC_SERVICE, a, weight=1, enabled=True,
                                state=State.SERVING, updated_at=now) for a in self.addresses)

    def __repr__(self) -> str:
        return f"StaticRegistry({list(self.addresses)!r})"

    def order(self, name: str) -> int:
        """Position of ``name`` in the list (names added later sort after it)."""
        return self._rank.get(name, len(self._rank))


def static_channel(addresses: Sequence[str], **options: Any) -> BalancedChannel:
    """A BalancedChannel over a fixed list of addresses (first = first in the list).

    ``options`` are BalancedChannel's (``policy``, ``retry_on``, ``on_call``...).
    """
    registry = StaticRegistry(addresses)
    return BalancedChannel(None, registry, order=registry.order, **options)
