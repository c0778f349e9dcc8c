"""The multicallables and call objects of :class:`AioBalancedChannel`.

A unary call starts its first attempt at once on the picked instance, as grpc.aio
does; failover happens while the caller awaits it. A call that is never awaited
therefore makes exactly one attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from devcluster.client.calls import (
    BalancedRpcError,
    CallInfo,
    NoUsableInstanceError,
    header_instance,
)

if TYPE_CHECKING:
    from devcluster.client.aio import AioBalancedChannel
    from devcluster.client.balancer import Instance

_monotonic = time.monotonic
_perf_counter = time.perf_counter


class AioUnaryUnary(grpc.aio.UnaryUnaryMultiCallable):
    """``channel.unary_unary(method)`` of an AioBalancedChannel."""

    __slots__ = ("balancer", "channel", "deserializer", "method", "registered",
                 "serializer", "slot")

    def __init__(self, channel: AioBalancedChannel, method: str, serializer: Any,
                 deserializer: Any, registered: bool) -> None:
        self.channel = channel
        self.balancer = channel.balancer
        self.method = method
        self.serializer = serializer
        self.deserializer = deserializer
        self.registered = registered
        self.slot = channel.next_slot()

    def sub(self, inst: Instance) -> Any:
        """The sub-channel's own multicallable for this method, made once."""
        sub = inst.callables.get(self.slot)
        if sub is None:
            sub = inst.channel.unary_unary(
                self.method, request_serializer=self.serializer,
                response_deserializer=self.deserializer, _registered_method=self.registered)
            inst.callables[self.slot] = sub
        return sub

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> AioBalancedCall:
        """Start the call; await the result for the response (with failover)."""
        return AioBalancedCall(self, request, timeout, metadata, credentials, compression)


class AioBalancedCall(grpc.aio.UnaryUnaryCall):
    """One balanced unary call: awaitable, and a ``grpc.aio.UnaryUnaryCall``.

    ``instance`` and ``address`` tell where the current (finally: the last)
    attempt went; the metadata and status accessors wait for the call to finish.
    """

    # Class-level defaults: a call that succeeds first time never sets these, which
    # keeps the per-call cost (the 64-in-flight benchmark) at grpc.aio's level.
    _running = False
    _finished = False
    _cancelled = False
    _outcome: asyncio.Future[None] | None = None
    _response: Any = None
    _error: BaseException | None = None
    _callbacks: list[Callable[[Any], None]] | None = None
    _started = 0.0

    def __init__(self, mc: AioUnaryUnary, request: Any, timeout: float | None,
                 metadata: Any, credentials: Any, compression: Any) -> None:
        self._mc = mc
        self._args = (request, metadata, credentials, compression)
        self._deadline = None if timeout is None else _monotonic() + timeout
        if mc.channel.on_call is not None:
            self._started = _perf_counter()
        self._inst = inst = mc.balancer.pick()
        # Eager first attempt, like grpc.aio: the call is under way before any await.
        if inst is None:
            self._call = None
        else:
            sub = inst.callables.get(mc.slot) or mc.sub(inst)
            self._call = sub(request, timeout=timeout, metadata=metadata,
                             credentials=credentials, compression=compression)

    @property
    def instance(self) -> str | None:
        """Registry name of the instance of the current attempt."""
        return None if self._inst is None else self._inst.name

    @property
    def address(self) -> str | None:
        """Address of the instance of the current attempt."""
        return None if self._inst is None else self._inst.address

    def __await__(self) -> Generator[Any, None, Any]:
        if not self._running:
            # The first await drives the attempts itself: no extra task per call.
            self._running = True
            return self._run().__await__()
        return self._outcome_of_run().__await__()

    async def _outcome_of_run(self) -> Any:
        if not self._finished:
            if self._outcome is None:
                self._outcome = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._outcome)
        if self._error is not None:
            raise self._error
        return self._response

    async def _settle(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            await self

    def _start(self, inst: Instance,
               tried: list[tuple[Instance, grpc.StatusCode]] | None) -> None:
        """Start another attempt on ``inst`` with what is left of the deadline."""
        self._inst = inst
        remaining = None if self._deadline is None else self._deadline - _monotonic()
        if remaining is not None and remaining <= 0:
            # Out of time while failing over: say which instances failed and why.
            raise self._mc.balancer.out_of_time(tried)
        request, metadata, credentials, compression = self._args
        self._call = self._mc.sub(inst)(request, timeout=remaining, metadata=metadata,
                                        credentials=credentials, compression=compression)

    async def _run(self) -> Any:
        mc = self._mc
        balancer = mc.balancer
        on_call = mc.channel.on_call
        tried: list[tuple[Instance, grpc.StatusCode]] | None = None
        try:
            while True:
                if self._call is None:
                    try:
                        self._start(await mc.channel.wait_for_instance(self._deadline, tried),
                                    tried)
                    except BalancedRpcError as e:
                        if on_call is not None:
                            self._report(on_call, None, tried, e)
                        raise
                inst = self._inst
                assert inst is not None  # set together with self._call
                try:
                    response = await self._call
                except grpc.aio.AioRpcError as e:
                    code = e.code()
                    # As in the sync channel: a call the server saw is repeated only
                    # for retry_on codes, and on each instance once at most.
                    reached = bool(e.initial_metadata())
                    retry = balancer.failed(inst, code, reached)
                    if tried is None:
                        tried = []
                    tried.append((inst, code))
                    nxt = None
                    if retry and not self._cancelled:
                        nxt = balancer.next_after(inst.name, {i.name for i, _ in tried})
                    if nxt is not None or (retry and not reached and not self._cancelled):
                        self._call = None
                        if nxt is not None:
                            with contextlib.suppress(BalancedRpcError):  # raised again above
                                self._start(nxt, tried)
                        continue
                    if on_call is not None:
                        self._report(on_call, e.initial_metadata(), tried[:-1], e)
                    raise
                if inst.timeouts:
                    balancer.succeeded(inst)
                if on_call is not None:
                    self._report(on_call, await self._call.initial_metadata(), tried, None,
                                 response)
                self._response = response
                return response
        except BaseException as e:
            self._error = e
            raise
        finally:
            self._finished = True
            if self._outcome is not None and not self._outcome.done():
                self._outcome.set_result(None)
            for callback in self._callbacks or ():
                callback(self)

    def _report(self, on_call: Callable[[CallInfo], None], metadata: Any,
                tried: list[tuple[Instance, grpc.StatusCode]] | None,
                error: grpc.RpcError | None, response: Any = None) -> None:
        inst = self._inst
        on_call(CallInfo(
            seq=next(self._mc.balancer.seq),
            instance=header_instance(metadata) or (inst.name if inst is not None else "-"),
            address=inst.address if inst is not None else "",
            ok=error is None,
            code="OK" if error is None else error.code().name,
            latency_ms=(_perf_counter() - self._started) * 1000,
            retried=[(i.name, code.name) for i, code in tried or ()],
            message="" if error is None else (error.details() or ""),
            response=response,
        ))

    # -- grpc.aio.Call ------------------------------------------------------------

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._finished

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - _monotonic())

    def cancel(self) -> bool:
        if self.done():
            return False
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()
        return True

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self.done():
            callback(self)
        elif self._callbacks is None:
            self._callbacks = [callback]
        else:
            self._callbacks.append(callback)

    async def initial_metadata(self) -> Any:
        await self._settle()
        return grpc.aio.Metadata() if self._call is None else await self._call.initial_metadata()

    async def trailing_metadata(self) -> Any:
        await self._settle()
        return grpc.aio.Metadata() if self._call is None \
            else await self._call.trailing_metadata()

    async def code(self) -> grpc.StatusCode:
        await self._settle()
        if isinstance(self._error, BalancedRpcError) or self._call is None:
            return self._error.code() if isinstance(self._error, grpc.RpcError) \
                else grpc.StatusCode.CANCELLED
        return await self._call.code()

    async def details(self) -> str:
        await self._settle()
        if isinstance(self._error, BalancedRpcError) or self._call is None:
            return self._error.details() if isinstance(self._error, grpc.RpcError) else ""
        return await self._call.details()

    async def wait_for_connection(self) -> None:
        await self._settle()


class AioStreamingCall:
    """A streaming multicallable of an AioBalancedChannel: one instance per call.

    The returned object is grpc.aio's own call on the picked instance; when it
    ends, its outcome counts for ejection like a unary call's.
    """

    def __init__(self, channel: AioBalancedChannel, kind: str, method: str, serializer: Any,
                 deserializer: Any, registered: bool) -> None:
        self._channel = channel
        self._kind = kind
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer
        self._registered = registered
        self._slot = channel.next_slot()

    def __call__(self, request: Any = None, **kwargs: Any) -> Any:
        """Start the call on one instance (raise NoUsableInstanceError if none)."""
        balancer = self._channel.balancer
        inst = balancer.pick()
        if inst is None:
            raise NoUsableInstanceError(balancer.why_unusable())
        sub = inst.callables.get(self._slot)
        if sub is None:
            sub = getattr(inst.channel, self._kind)(
                self._method, request_serializer=self._serializer,
                response_deserializer=self._deserializer, _registered_method=self._registered)
            inst.callables[self._slot] = sub
        kwargs.pop("wait_for_ready", None)
        call = sub(request, **kwargs)
        call.add_done_callback(lambda done: self._channel.background(self._book(inst, done)))
        return call

    async def _book(self, inst: Instance, call: Any) -> None:
        code = await call.code()
        if code is grpc.StatusCode.OK:
            self._channel.balancer.succeeded(inst)
        else:
            reached = bool(await call.initial_metadata())
            self._channel.balancer.failed(inst, code, reached)
