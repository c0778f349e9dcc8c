"""Streaming multicallables of :class:`BalancedChannel`: a pick per call, no failover.

A request stream cannot be replayed on another instance, and a response stream
may already have been partly consumed, so streaming calls go to one instance
chosen by the policy. Their outcome still counts: an ``UNAVAILABLE`` before the
server answered ejects the instance, so the next call goes elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc

from devcluster.client.calls import BalancedRpcError, CallInfo, header_instance

if TYPE_CHECKING:
    from devcluster.client.balancer import Instance
    from devcluster.client.channel import BalancedChannel


class _PerCall:
    """What the three streaming kinds share: pick, bind, book the outcome."""

    _kind = ""

    def __init__(self, channel: BalancedChannel, method: str, serializer: Any,
                 deserializer: Any, registered: bool) -> None:
        self._channel = channel
        self._balancer = channel.balancer
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer
        self._registered = registered
        self._slot = channel.next_slot()

    def _target(self, timeout: float | None) -> tuple[Instance, Any, float | None, float]:
        started = time.perf_counter()
        deadline = None if timeout is None else time.monotonic() + timeout
        inst = self._balancer.pick()
        if inst is None:
            try:
                inst = self._channel.wait_for_instance(deadline, None)
            except BalancedRpcError as e:
                self._book(None, e, started)
                raise
        sub = inst.callables.get(self._slot)
        if sub is None:
            sub = getattr(inst.channel, self._kind)(
                self._method, request_serializer=self._serializer,
                response_deserializer=self._deserializer, _registered_method=self._registered)
            inst.callables[self._slot] = sub
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        return inst, sub, remaining, started

    def _follow(self, inst: Instance, call: Any, started: float) -> Any:
        call.add_done_callback(lambda done: self._book(inst, done, started))
        return call

    def _book(self, inst: Instance | None, call: Any, started: float) -> None:
        code = call.code()
        reached = bool(call.initial_metadata())
        if inst is not None:
            if code is grpc.StatusCode.OK:
                self._balancer.succeeded(inst)
            else:
                self._balancer.failed(inst, code, reached)
        on_call = self._channel.on_call
        if on_call is None:
            return
        on_call(CallInfo(
            seq=next(self._balancer.seq),
            instance=header_instance(call.initial_metadata())
            or (inst.name if inst is not None else "-"),
            address=inst.address if inst is not None else "",
            ok=code is grpc.StatusCode.OK, code=code.name,
            latency_ms=(time.perf_counter() - started) * 1000,
            message="" if code is grpc.StatusCode.OK else (call.details() or ""),
        ))


class UnaryStream(_PerCall, grpc.UnaryStreamMultiCallable):
    """``channel.unary_stream(method)`` of a balanced channel."""

    _kind = "unary_stream"

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        """Start the call on one instance; return grpc's response iterator (a grpc.Call)."""
        inst, sub, remaining, started = self._target(timeout)
        return self._follow(inst, sub(request, remaining, metadata, credentials, False,
                                      compression), started)


class StreamStream(_PerCall, grpc.StreamStreamMultiCallable):
    """``channel.stream_stream(method)`` of a balanced channel."""

    _kind = "stream_stream"

    def __call__(self, request_iterator: Iterator[Any], timeout: float | None = None,
                 metadata: Any = None, credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        """Start the call on one instance; return grpc's response iterator (a grpc.Call)."""
        inst, sub, remaining, started = self._target(timeout)
        return self._follow(inst, sub(request_iterator, remaining, metadata, credentials,
                                      False, compression), started)


class StreamUnary(_PerCall, grpc.StreamUnaryMultiCallable):
    """``channel.stream_unary(method)`` of a balanced channel."""

    _kind = "stream_unary"

    def __call__(self, request_iterator: Iterator[Any], timeout: float | None = None,
                 metadata: Any = None, credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        """Call one instance with the request stream; return the response."""
        return self.with_call(request_iterator, timeout, metadata, credentials, None,
                              compression)[0]

    def with_call(self, request_iterator: Iterator[Any], timeout: float | None = None,
                  metadata: Any = None, credentials: grpc.CallCredentials | None = None,
                  wait_for_ready: bool | None = None,
                  compression: grpc.Compression | None = None) -> tuple[Any, grpc.Call]:
        """Like ``__call__``; also return the grpc.Call."""
        inst, sub, remaining, started = self._target(timeout)
        try:
            response, call = sub.with_call(request_iterator, remaining, metadata, credentials,
                                           False, compression)
        except grpc.RpcError as e:
            self._book(inst, e, started)
            raise
        self._book(inst, call, started)
        return response, call

    def future(self, request_iterator: Iterator[Any], timeout: float | None = None,
               metadata: Any = None, credentials: grpc.CallCredentials | None = None,
               wait_for_ready: bool | None = None,
               compression: grpc.Compression | None = None) -> Any:
        """Start the call on one instance; return grpc's future (a grpc.Call)."""
        inst, sub, remaining, started = self._target(timeout)
        return self._follow(inst, sub.future(request_iterator, remaining, metadata,
                                             credentials, False, compression), started)
