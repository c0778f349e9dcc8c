"""The load-balancing client: channels that follow the registry live.

>>> from devcluster.client import BalancedChannel, served_by      # doctest: +SKIP
>>> with BalancedChannel("server", ".devcluster") as channel:      # doctest: +SKIP
...     reply, call = GreeterStub(channel).SayHello.with_call(request, timeout=2)
...     served_by(call)
'server1'

``BalancedChannel`` (sync) and ``AioBalancedChannel`` (grpc.aio) pick an instance
per call with smooth weighted round robin (or ``round_robin``/``pick_first``),
fail over on ``UNAVAILABLE`` before the server saw the call, and eject hung
instances until a health probe gets an answer. ``static_channel`` does the same
over a fixed list of addresses (no registry), and ``GrpcTargetChannel`` is grpc's
own resolver and policy, reporting calls the same way, for comparison.
``run_client`` is the engine of ``devcluster client``.
"""

from __future__ import annotations

from devcluster.client.calls import (
    BalancedCall,
    BalancedRpcError,
    CallInfo,
    NoUsableInstanceError,
    served_by,
)
from devcluster.client.channel import BalancedChannel
from devcluster.client.direct import GrpcTargetChannel
from devcluster.client.picker import POLICIES, Picker, PickFirst, RoundRobin, SmoothWRR
from devcluster.client.static import StaticRegistry, static_channel

__all__ = [
    "POLICIES",
    "AioBalancedChannel",
    "BalancedCall",
    "BalancedChannel",
    "BalancedRpcError",
    "CallInfo",
    "ClientOptions",
    "GrpcTargetChannel",
    "NoUsableInstanceError",
    "PickFirst",
    "Picker",
    "RoundRobin",
    "SmoothWRR",
    "StaticRegistry",
    "Summary",
    "run_client",
    "served_by",
    "static_channel",
]


def __getattr__(name: str) -> object:
    # The asyncio channel and the CLI runner (rich) load only when asked for.
    if name == "AioBalancedChannel":
        from devcluster.client.aio import AioBalancedChannel

        return AioBalancedChannel
    if name in ("ClientOptions", "Summary", "run_client"):
        from devcluster.client import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
