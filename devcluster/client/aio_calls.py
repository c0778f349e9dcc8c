"""The multicallables and call objects of :class:`AioBalancedChannel`.

A unary call starts its first attempt at once on the picked instance, as grpc.aio
does; failover and hedging happen while the caller awaits it, as the core's
actions say. A call that is never awaited therefore makes exactly one attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Generator
from typing import Any, Protocol

import grpc
import grpc.aio

from devcluster.client.attempts import PENDING, Action, Attempts, Delay, GiveUp, Send, Wait, begin
from devcluster.client.balancer import Balancer, Instance
from devcluster.client.calls import BalancedRpcError, NoUsableInstanceError
from devcluster.client.multi import Driver, Lost, Multi

_OK = grpc.StatusCode.OK

#: ``_new_call(AioBalancedCall)``: the bare object, without an ``__init__`` frame.
_new_call = object.__new__


class AioDriver(Driver, Protocol):
    """What the multicallables need of their channel (AioBalancedChannel)."""

    balancer: Balancer

    async def wait(self, action: Wait) -> None: ...
    def background(self, coro: Any) -> None: ...


class AioUnaryUnary(Multi, grpc.aio.UnaryUnaryMultiCallable):  # type: ignore[misc]  # grpc ships no types
    """``channel.unary_unary(method)`` of an AioBalancedChannel."""

    __slots__ = ()

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> AioBalancedCall:
        """Start the call; await the result for the response (with failover)."""
        # The call object is made here, with no __init__ of its own: one Python frame
        # fewer per call (bench scenario 20 counts them). Every field it needs is set.
        channel: AioDriver = self._channel
        attempts, action = begin(channel.balancer, channel.call_options, timeout)
        call = _new_call(AioBalancedCall)
        call._mc = self
        call._args = (request, metadata, credentials, compression)
        call._attempts = attempts
        call._running = False
        call._outcome = None
        call._callbacks = None
        # Eager first attempt, like grpc.aio: the call is under way before any await.
        if type(action) is Send:
            call._send = action
            inst, sub_timeout, _ = action  # unpacked: a NamedTuple's fields read slowly in 3.11
            call._call = (inst.callables.get(self._slot) or self._sub(inst))(
                request, timeout=sub_timeout, metadata=metadata, credentials=credentials,
                compression=compression)
        else:
            call._action = action
        return call


class AioBalancedCall(grpc.aio.UnaryUnaryCall):  # type: ignore[misc]  # grpc ships no types
    """One balanced unary call: awaitable, and a ``grpc.aio.UnaryUnaryCall``.

    ``instance`` and ``address`` tell where the current (finally: the winning or
    last) attempt went; the metadata and status accessors wait for the call to end.
    """

    # Class-level defaults: a call that succeeds first time never sets these, which
    # keeps the per-call cost (the 64-in-flight benchmark, bench scenario 20) at grpc.aio's
    # level. What every call reads is stored in __init__ instead: Python 3.11 reads a
    # class-level default through its slow, unspecialized attribute lookup.
    _finished = False
    _cancelled = False
    _response: Any = None
    _error: BaseException | None = None
    _action: Action | None = None
    _send: Send | None = None
    _call: Any = None

    # Set on every call by AioUnaryUnary.__call__, which makes the object (no __init__).
    _mc: AioUnaryUnary
    _args: tuple[Any, Any, Any, Any]
    _attempts: Attempts
    _running: bool
    _outcome: asyncio.Future[None] | None
    _callbacks: list[Callable[[Any], None]] | None

    def _begin(self, send: Send) -> Any:
        """Start the attempt ``send`` names; it becomes the current one."""
        request, metadata, credentials, compression = self._args
        self._send = send
        self._call = call = self._mc._sub(send.inst)(
            request, timeout=send.timeout, metadata=metadata, credentials=credentials,
            compression=compression)
        return call

    @property
    def instance(self) -> str | None:
        """Registry name of the instance of the current attempt."""
        inst = self._attempts.inst
        return None if inst is None else inst.name

    @property
    def address(self) -> str | None:
        """Address of the instance of the current attempt."""
        inst = self._attempts.inst
        return None if inst is None else inst.address

    def __await__(self) -> Generator[Any, None, Any]:
        if self._running:
            return (yield from self._outcome_of_run().__await__())
        # The first await drives the attempts itself: no extra task per call.
        self._running = True
        channel: AioDriver = self._mc._channel
        count_ok = channel.count_ok
        send = self._send
        if send is None or (count_ok is None and channel.on_call is not None):
            return (yield from self._run(self._action, None).__await__())
        inst, _, hedge_in = send
        if hedge_in is not None:
            return (yield from self._run(None, None).__await__())
        # The common call inline (one attempt, no hedge, nothing or only statistics to
        # report): one generator frame over grpc's own call (bench scenario 20).
        attempts = self._attempts
        try:
            response = yield from self._call.__await__()
        except grpc.aio.AioRpcError as e:
            action = attempts.failed(inst, e.code(), bool(e.initial_metadata()),
                                     cancelled=self._cancelled)
            return (yield from self._run(action, e).__await__())
        except BaseException as e:
            self._error = e
            self._settled()
            raise
        attempts.answered(inst, count_ok)
        self._response = response
        self._finished = True
        if self._outcome is not None or self._callbacks is not None:
            self._settled()  # someone else awaits it too, or wants to hear of the end
        return response

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

    async def _run(self, action: Action | None, error: grpc.RpcError | None) -> Any:
        """The call as a loop over the core's actions, from ``action`` (None: await the
        attempt under way) after ``error``."""
        attempts = self._attempts
        channel: AioDriver = self._mc._channel
        try:
            while True:
                if type(action) is Wait:
                    await channel.wait(action)
                    action = attempts.resume()
                    continue
                if type(action) is Delay:
                    await asyncio.sleep(action.seconds)
                    action = attempts.delayed()
                    continue
                if type(action) is GiveUp:
                    raise self._give_up(action, error)
                if type(action) is Send:
                    self._begin(action)
                send = self._send
                assert send is not None
                if send.hedge_in is None:
                    call = self._call
                    try:
                        response = await call
                    except grpc.aio.AioRpcError as e:
                        action, error = attempts.failed(
                            send.inst, e.code(), bool(e.initial_metadata()),
                            cancelled=self._cancelled), e
                        continue
                    inst = send.inst
                else:
                    won = await self._hedged(send)
                    if isinstance(won, Lost):
                        action, error = won
                        continue
                    response, call, inst = won
                attempts.succeeded(inst)
                if channel.on_call is not None:
                    count_ok = channel.count_ok
                    if count_ok is not None and not attempts.tried:
                        count_ok((inst.name, attempts.elapsed_ms()))  # no header to await
                    else:
                        self._mc._report(attempts, _OK, "", await call.initial_metadata(),
                                         response)
                self._response = response
                return response
        except BaseException as e:
            self._error = e
            raise
        finally:
            self._settled()

    def _settled(self) -> None:
        """The call ended: wake whoever awaits it a second time, run the callbacks."""
        self._finished = True
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_result(None)
        for callback in self._callbacks or ():
            callback(self)

    def _give_up(self, action: GiveUp, error: grpc.RpcError | None) -> grpc.RpcError:
        """Report the call's failure; the error to raise."""
        failure = action.error or error
        assert failure is not None
        own = action.error is None
        self._mc._report(self._attempts, failure.code(), failure.details() or "",
                         failure.initial_metadata() if own else None)
        return failure

    async def _hedged(self, send: Send) -> tuple[Any, Any, Instance] | Lost:
        """Await ``send``'s attempt, plus each further one the core asks for: a hedge
        when the latest stays unanswered for its ``hedge_in``, a failover when one
        fails while the others hang."""
        attempts = self._attempts
        pending: dict[asyncio.Future[Any], tuple[Instance, Any]] = {}
        loop = asyncio.get_running_loop()
        due: float | None = None

        def launch(s: Send, call: Any) -> None:
            nonlocal due
            pending[asyncio.ensure_future(call)] = (s.inst, call)
            due = None if s.hedge_in is None else loop.time() + s.hedge_in

        launch(send, self._call)
        try:
            while True:
                done, _ = await asyncio.wait(
                    pending, timeout=None if due is None else max(0.0, due - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    due = None
                    latest = self._send
                    assert latest is not None  # _begin set it
                    extra = attempts.hedge(latest.inst)
                    if extra is not None:
                        launch(extra, self._begin(extra))
                    continue
                for fut in done:
                    inst, call = pending.pop(fut)
                    self._call = call
                    error = fut.exception()
                    if error is None:
                        return fut.result(), call, inst
                    if not isinstance(error, grpc.aio.AioRpcError):
                        raise error
                    action = attempts.failed(inst, error.code(), bool(error.initial_metadata()),
                                             cancelled=self._cancelled)
                    if type(action) is Send and pending:
                        launch(action, self._begin(action))  # failing over while others hang
                    elif action is not PENDING:
                        return Lost(action, error)
        finally:
            for fut, (_inst, call) in pending.items():  # the losers
                call.cancel()
                fut.cancel()

    # -- grpc.aio.Call ------------------------------------------------------------

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._finished

    def time_remaining(self) -> float | None:
        remaining = self._attempts.remaining()
        return None if remaining is None else max(0.0, remaining)

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
        details: str = await self._call.details()
        return details

    async def wait_for_connection(self) -> None:
        await self._settle()


class AioStreamingCall(Multi):
    """A streaming multicallable of an AioBalancedChannel: one instance per call.

    The returned object is grpc.aio's own call on the picked instance; when it
    ends, its outcome counts for ejection and goes to ``on_call``, as a unary
    call's. A call must be returned at once, so with no usable instance it
    raises :class:`NoUsableInstanceError` at once rather than wait for one.
    """

    __slots__ = ()

    def __call__(self, request: Any = None, **kwargs: Any) -> Any:
        """Start the call on one instance (raise NoUsableInstanceError if none)."""
        channel: AioDriver = self._channel
        attempts = channel.attempts(kwargs.get("timeout"), replayable=False)
        action = attempts.start()
        if type(action) is Delay:  # a call must be returned at once: only the abort applies
            action = attempts.delayed()
        if type(action) is not Send:
            error = action.error if type(action) is GiveUp and action.error is not None \
                else NoUsableInstanceError(channel.balancer.why_unusable())
            self._report(attempts, error.code(), error.details())
            raise error
        kwargs.pop("wait_for_ready", None)
        kwargs["timeout"] = action.timeout
        inst = action.inst
        call = self._sub(inst)(request, **kwargs)
        call.add_done_callback(lambda done: channel.background(self._book(attempts, inst, done)))
        return call

    async def _book(self, attempts: Attempts, inst: Instance, call: Any) -> None:
        code = await call.code()
        metadata = await call.initial_metadata()
        attempts.ended(inst, code, bool(metadata), call.cancelled())
        self._report(attempts, code, await call.details() or "", metadata)
