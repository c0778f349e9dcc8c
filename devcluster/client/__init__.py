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

Every decision (which instance, what an outcome means, when to hedge, what
``CallInfo`` says) is made once, in a sans-IO core (:mod:`~devcluster.client.picker`,
:mod:`~devcluster.client.balancer`, :mod:`~devcluster.client.attempts`); the two
channels are thin drivers over it and take the same keyword arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devcluster.client.aio import AioBalancedChannel
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

#: Where each public name lives. They load on first use, so that importing one light
#: piece (the policy table for the CLI's help, say) does not import grpc.
_HOME = {
    "AioBalancedChannel": "aio",
    "BalancedCall": "calls",
    "BalancedRpcError": "calls",
    "CallInfo": "calls",
    "NoUsableInstanceError": "calls",
    "served_by": "calls",
    "BalancedChannel": "channel",
    "GrpcTargetChannel": "direct",
    "POLICIES": "picker",
    "Picker": "picker",
    "PickFirst": "picker",
    "RoundRobin": "picker",
    "SmoothWRR": "picker",
    "StaticRegistry": "static",
    "static_channel": "static",
}

__all__ = [  # noqa: RUF022 - the order of _HOME
    "AioBalancedChannel", "BalancedCall", "BalancedRpcError", "CallInfo",
    "NoUsableInstanceError", "served_by", "BalancedChannel", "GrpcTargetChannel", "POLICIES",
    "Picker", "PickFirst", "RoundRobin", "SmoothWRR", "StaticRegistry", "static_channel",
]


def __getattr__(name: str) -> object:
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(f"devcluster.client.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
