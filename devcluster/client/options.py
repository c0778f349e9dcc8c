"""The keyword arguments both balancing channels take, as one typed dict.

:meth:`devcluster.api.Cluster.channel` passes them through (``**options``), so a
misspelt option or a wrong type is caught by a type checker, not at the first call.
The meaning of each: :class:`~devcluster.client.driver.ChannelDriver`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    import grpc

    from devcluster.client.calls import CallInfo
    from devcluster.client.picker import OrderKey

__all__ = ["ChannelOptions"]


class ChannelOptions(TypedDict, total=False):
    """``BalancedChannel``/``AioBalancedChannel`` keyword arguments (all optional)."""

    policy: str
    retry_on: Collection[grpc.StatusCode]
    eject_after: int
    on_call: Callable[[CallInfo], None] | None
    options: Sequence[tuple[str, Any]]
    default_wait: float
    order: OrderKey | None
    hedge_after: float | None
    stats: bool | None
    state_dir: str | os.PathLike[str] | None
    where: Mapping[str, str] | None
