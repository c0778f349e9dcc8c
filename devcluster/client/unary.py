"""The balanced unary-unary multicallable of :class:`BalancedChannel`: the hot path.

Per call: one pick under the balancer lock, one dict lookup for the sub-channel's
own multicallable (made once per instance and method), the call itself. Timing,
header parsing and :class:`CallInfo` happen only when someone listens (``on_call``).
"""

from __future__ import annotations

import queue
import time
from typing import TYPE_CHECKING, Any

import grpc

from devcluster.client.calls import BalancedCall, BalancedRpcError, CallInfo, header_instance

if TYPE_CHECKING:
    from devcluster.client.balancer import Instance
    from devcluster.client.channel import BalancedChannel

_monotonic = time.monotonic
_perf_counter = time.perf_counter


class UnaryUnary(grpc.UnaryUnaryMultiCallable):
    """``channel.unary_unary(method)`` of a balanced channel; see BalancedChannel."""

    __slots__ = ("_balancer", "_channel", "_deserializer", "_method", "_registered",
                 "_serializer", "_slot")

    def __init__(self, channel: BalancedChannel, method: str, serializer: Any,
                 deserializer: Any, registered: bool) -> None:
        self._channel = channel
        self._balancer = channel.balancer
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer
        self._registered = registered
        self._slot = channel.next_slot()

    def _bind(self, inst: Instance) -> Any:
        sub = inst.channel.unary_unary(
            self._method, request_serializer=self._serializer,
            response_deserializer=self._deserializer, _registered_method=self._registered)
        inst.callables[self._slot] = sub
        return sub

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        """Call one instance (failing over as needed); return the response."""
        return self._invoke(request, timeout, metadata, credentials, compression, False)

    def with_call(self, request: Any, timeout: float | None = None, metadata: Any = None,
                  credentials: grpc.CallCredentials | None = None,
                  wait_for_ready: bool | None = None,
                  compression: grpc.Compression | None = None) -> tuple[Any, BalancedCall]:
        """Like ``__call__``; also return the call (``served_by(call)`` names the instance)."""
        return self._invoke(request, timeout, metadata, credentials, compression, True)

    def future(self, request: Any, timeout: float | None = None, metadata: Any = None,
               credentials: grpc.CallCredentials | None = None,
               wait_for_ready: bool | None = None,
               compression: grpc.Compression | None = None) -> CallFuture:
        """Start the call on the channel's thread pool; return a grpc.Future and grpc.Call."""
        return CallFuture(self._channel.submit(
            self._invoke, request, timeout, metadata, credentials, compression, True))

    def _invoke(self, request: Any, timeout: float | None, metadata: Any,
                credentials: grpc.CallCredentials | None,
                compression: grpc.Compression | None, want_call: bool) -> Any:
        # wait_for_ready is not passed on: this channel itself waits for a usable
        # instance, and a sub-channel told to wait would sit on a dead instance
        # until the deadline instead of failing over.
        balancer = self._balancer
        on_call = self._channel.on_call
        deadline = None if timeout is None else _monotonic() + timeout
        started = _perf_counter() if on_call is not None else 0.0
        tried: list[tuple[Instance, grpc.StatusCode]] | None = None
        inst = balancer.pick()
        while True:
            if inst is None:
                try:
                    inst = self._channel.wait_for_instance(deadline, tried)
                except BalancedRpcError as e:
                    if on_call is not None:
                        self._report(on_call, started, None, None, tried, e)
                    raise
            sub = inst.callables.get(self._slot) or self._bind(inst)
            remaining = None if deadline is None else deadline - _monotonic()
            if remaining is not None and remaining <= 0:
                # Out of time while failing over: say which instances failed and why.
                error = balancer.out_of_time(tried)
                if on_call is not None:
                    self._report(on_call, started, inst, None, tried, error)
                raise error
            try:
                hedge = self._channel.hedge_after
                if hedge is not None and (remaining is None or remaining > hedge):
                    response, call, winner = self._hedged(
                        sub, inst, request, remaining, metadata, credentials, compression,
                        hedge)
                    if winner is not inst:
                        tried = [*(tried or []), (inst, grpc.StatusCode.DEADLINE_EXCEEDED)]
                        inst = winner
                elif want_call or on_call is not None:
                    response, call = sub.with_call(request, remaining, metadata, credentials,
                                                  False, compression)
                else:
                    response = sub(request, remaining, metadata, credentials, False, compression)
                    call = None
            except grpc.RpcError as e:
                code = e.code()
                # Initial metadata means the server's application saw the call (a
                # devcluster server sends its header first thing): not ours to repeat
                # unless retry_on says so, and then once per instance at most.
                reached = bool(e.initial_metadata())
                retry = balancer.failed(inst, code, reached)
                if tried is None:
                    tried = []
                tried.append((inst, code))
                if retry:
                    inst = balancer.next_after(inst.name, {i.name for i, _ in tried})
                    if inst is not None or not reached:
                        continue
                    inst = tried[-1][0]
                if on_call is not None:
                    self._report(on_call, started, inst, e, tried[:-1], e)
                raise
            if inst.timeouts:
                balancer.succeeded(inst)
            if on_call is not None:
                self._report(on_call, started, inst, call, tried, None, response)
            if want_call:
                return response, BalancedCall(call, inst.name, inst.address)
            return response

    def _hedged(self, sub: Any, inst: Instance, request: Any, remaining: float | None,
                metadata: Any, credentials: Any, compression: Any,
                hedge: float) -> tuple[Any, Any, Instance]:
        """Call ``inst``; if it has not answered after ``hedge`` s, call another one too.

        The first successful answer wins and the other call is cancelled; when both
        fail, the original's error is raised. Only for idempotent calls (opt-in).
        """
        finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
        first = sub.future(request, remaining, metadata, credentials, False, compression)
        first.add_done_callback(finished.put)
        try:
            finished.get(timeout=hedge)
        except queue.Empty:
            pass
        else:
            return first.result(), first, inst  # raises its RpcError: the caller books it
        self._balancer.stalled(inst)
        other = self._balancer.next_after(inst.name, {inst.name})
        if other is None:
            return first.result(), first, inst
        sub2 = other.callables.get(self._slot) or self._bind(other)
        left = None if remaining is None else max(0.001, remaining - hedge)
        second = sub2.future(request, left, metadata, credentials, False, compression)
        second.add_done_callback(finished.put)
        pending = {first: inst, second: other}
        while pending:
            fut = finished.get()
            if fut not in pending:
                continue
            owner = pending.pop(fut)
            if not fut.cancelled() and fut.exception() is None:
                for loser in pending:
                    loser.cancel()
                if owner is inst:
                    self._balancer.succeeded(inst)
                return fut.result(), fut, owner
        return first.result(), first, inst  # both failed: the original's error

    def _report(self, on_call: Any, started: float, inst: Instance | None, call: Any,
                tried: list[tuple[Instance, grpc.StatusCode]] | None,
                error: grpc.RpcError | None, response: Any = None) -> None:
        name = header_instance(call.initial_metadata()) if call is not None else None
        info = CallInfo(
            seq=next(self._balancer.seq),
            instance=name or (inst.name if inst is not None else "-"),
            address=inst.address if inst is not None else "",
            ok=error is None,
            code="OK" if error is None else error.code().name,
            latency_ms=(_perf_counter() - started) * 1000,
            retried=[(i.name, code.name) for i, code in tried or ()],
            message="" if error is None else (error.details() or ""),
            response=response,
        )
        on_call(info)


class CallFuture(grpc.Future, grpc.Call):
    """A balanced call running on a worker thread: a ``grpc.Future`` and ``grpc.Call``.

    >>> fut = stub.SayHello.future(request, timeout=1)   # doctest: +SKIP
    >>> fut.result().message                            # doctest: +SKIP
    'Hello world from server2'
    """

    def __init__(self, future: Any) -> None:
        self._future = future

    def _call(self) -> Any:
        # The grpc.Call of the finished call: the BalancedCall, or the error.
        exc = self._future.exception()
        return exc if exc is not None else self._future.result()[1]

    def cancel(self) -> bool:
        return self._future.cancel()

    def cancelled(self) -> bool:
        return self._future.cancelled()

    def running(self) -> bool:
        return self._future.running()

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> Any:
        return self._future.result(timeout)[0]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._future.exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        exc = self._future.exception(timeout)
        return None if exc is None else exc.__traceback__

    def add_done_callback(self, fn: Any) -> None:
        self._future.add_done_callback(lambda _f: fn(self))

    def initial_metadata(self) -> Any:
        return self._call().initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._call().trailing_metadata()

    def code(self) -> grpc.StatusCode:
        return self._call().code()

    def details(self) -> str:
        return self._call().details()

    def is_active(self) -> bool:
        return not self._future.done()

    def time_remaining(self) -> float | None:
        return None

    def add_callback(self, callback: Any) -> bool:
        self._future.add_done_callback(lambda _f: callback())
        return True
