"""A plain grpc channel that reports its unary calls like a balanced one.

``devcluster client --target ipv4:H:P,H:P --policy round_robin`` hands the target
to grpc's own resolver and the policy to grpc's own load balancer
(``grpc.lb_policy_name``): nothing of devcluster sits between the caller and the
servers except a stopwatch. Each unary call still yields a :class:`CallInfo`, whose
instance is the server's ``devcluster-instance`` header (grpc does not tell a
Python client which address served a call, so ``address`` stays empty), so the
two balancers can be compared line by line on the same servers.

>>> with GrpcTargetChannel("ipv4:127.0.0.1:50051,127.0.0.1:50052", "round_robin") as ch:  # doctest: +SKIP
...     GreeterStub(ch).SayHello(request, timeout=1)
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc

from devcluster.client.calls import CallInfo, header_instance

#: ``instance`` of a call answered by a server that sent no ``devcluster-instance``.
UNNAMED = "?"


class GrpcTargetChannel(grpc.Channel):  # type: ignore[misc]  # grpc ships no types
    """``grpc.insecure_channel(target)`` with grpc's ``policy`` (None: the resolver's);
    ``on_call`` per unary call.

    Streaming calls and ``future()`` go straight through, unreported.
    """

    def __init__(self, target: str, policy: str | None = "pick_first", *,
                 on_call: Callable[[CallInfo], None] | None = None,
                 options: Sequence[tuple[str, Any]] = ()) -> None:
        self.target = target
        self.policy = policy
        self.on_call = on_call
        self._seq = itertools.count(1)
        # None: the policy the resolver's service config names (xds:/// has its own).
        chosen = [("grpc.lb_policy_name", policy)] if policy is not None else []
        self._channel = grpc.insecure_channel(target, options=[*chosen, *options])

    def __repr__(self) -> str:
        return f"<GrpcTargetChannel {self.target!r} policy={self.policy}>"

    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> _ReportingUnary:
        """grpc's multicallable, timed and reported to ``on_call``."""
        return _ReportingUnary(self, self._channel.unary_unary(
            method, request_serializer=request_serializer,
            response_deserializer=response_deserializer,
            _registered_method=_registered_method))

    def unary_stream(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return self._channel.unary_stream(method, request_serializer, response_deserializer,
                                          _registered_method)

    def stream_unary(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> Any:
        return self._channel.stream_unary(method, request_serializer, response_deserializer,
                                          _registered_method)

    def stream_stream(self, method: str, request_serializer: Any = None,
                      response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> Any:
        return self._channel.stream_stream(method, request_serializer, response_deserializer,
                                           _registered_method)

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None],
                  try_to_connect: bool = False) -> None:
        self._channel.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GrpcTargetChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def instances(self) -> Iterator[Any]:
        """Nothing: grpc keeps its subchannels to itself."""
        return iter(())

    def weights(self) -> dict[str, int]:
        """Nothing: grpc's policies have no weights."""
        return {}

    def report(self, started: float, call: Any, error: grpc.RpcError | None,
               response: Any = None) -> None:
        """Tell ``on_call`` about one finished call (``call``: a grpc.Call or the error)."""
        if self.on_call is None:
            return
        name = header_instance(call.initial_metadata()) if call is not None else None
        self.on_call(CallInfo(
            seq=next(self._seq),
            # A failure with no answer at all (the target did not resolve, nothing
            # listens) was served by nobody: "-", as the balanced channel says.
            instance=name or (UNNAMED if error is None else "-"),
            address="",
            ok=error is None,
            code="OK" if error is None else error.code().name,
            latency_ms=(time.perf_counter() - started) * 1000,
            message="" if error is None else (error.details() or ""),
            response=response,
        ))


class _ReportingUnary(grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]  # grpc ships no types
    __slots__ = ("_channel", "_sub")

    def __init__(self, channel: GrpcTargetChannel, sub: grpc.UnaryUnaryMultiCallable) -> None:
        self._channel = channel
        self._sub = sub

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        return self.with_call(request, timeout, metadata, credentials, wait_for_ready,
                              compression)[0]

    def with_call(self, request: Any, timeout: float | None = None, metadata: Any = None,
                  credentials: grpc.CallCredentials | None = None,
                  wait_for_ready: bool | None = None,
                  compression: grpc.Compression | None = None) -> tuple[Any, grpc.Call]:
        started = time.perf_counter()
        try:
            response, call = self._sub.with_call(request, timeout, metadata, credentials,
                                                 wait_for_ready, compression)
        except grpc.RpcError as e:
            self._channel.report(started, e, e)
            raise
        self._channel.report(started, call, None, response)
        return response, call

    def future(self, request: Any, timeout: float | None = None, metadata: Any = None,
               credentials: grpc.CallCredentials | None = None,
               wait_for_ready: bool | None = None,
               compression: grpc.Compression | None = None) -> Any:
        return self._sub.future(request, timeout, metadata, credentials, wait_for_ready,
                                compression)
