"""What every balanced multicallable keeps, sync or asyncio: its method, its
sub-channel twins (one per instance, made once), and how it reports a call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import grpc

from devcluster.client.attempts import Action, Attempts, CallOptions
from devcluster.client.balancer import Balancer, Instance
from devcluster.client.calls import CallInfo


class Driver(Protocol):
    """What a multicallable needs of any balanced channel."""

    on_call: Callable[[CallInfo], None] | None
    count_ok: Callable[[tuple[str, float]], None] | None

    def next_slot(self) -> int: ...
    balancer: Balancer
    call_options: CallOptions

    def attempts(self, timeout: float | None, replayable: bool = True) -> Attempts: ...


class Lost(NamedTuple):
    """A hedged pair of attempts ended without an answer: what the core says next."""

    action: Action
    error: grpc.RpcError


class Multi:
    """Base of the multicallables of both channels.

    ``kind`` is the grpc channel method that makes the sub-channel's own
    multicallable (``unary_unary``, ``unary_stream``, ...).
    """

    __slots__ = ("_channel", "_deserializer", "_kind", "_method", "_registered",
                 "_serializer", "_slot")

    def __init__(self, channel: Any, kind: str, method: str, serializer: Any,
                 deserializer: Any, registered: bool) -> None:
        self._channel = channel
        self._kind = kind
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer
        self._registered = registered
        self._slot = channel.next_slot()

    def _sub(self, inst: Instance) -> Any:
        """The sub-channel's own multicallable for this method on ``inst``, made once."""
        sub = inst.callables.get(self._slot)
        if sub is None:
            sub = getattr(inst.channel, self._kind)(
                self._method, request_serializer=self._serializer,
                response_deserializer=self._deserializer, _registered_method=self._registered)
            inst.callables[self._slot] = sub
        return sub

    def _report(self, attempts: Attempts, code: grpc.StatusCode, details: str = "",
                metadata: Any = None, response: Any = None) -> None:
        """Tell ``on_call`` (if any) how the call ended."""
        on_call = self._channel.on_call
        if on_call is not None:
            on_call(attempts.info(code, details, metadata, response))
