"""The multicallables of :class:`BalancedChannel`: thin loops over the core's actions.

A unary call asks its :class:`~devcluster.client.attempts.Attempts` where to go,
makes the attempt with grpc's own sub-channel multicallable (made once per
instance and method), and reports the outcome back until the core says it is
done. The hot path (no failure, no hedge, no ``on_call``) is one pick, one dict
lookup and the call itself.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, Final, Protocol, cast

import grpc

from devcluster.client.attempts import PENDING, Action, Attempts, Delay, GiveUp, Send, Wait, begin
from devcluster.client.balancer import Instance
from devcluster.client.calls import BalancedCall, GrpcCall
from devcluster.client.multi import Driver, Lost, Multi

#: The ``wait_for_ready`` of every sub-channel call: not passed on (the core itself waits
#: for a usable instance, and a sub-channel told to wait would sit on a dead instance
#: until the deadline instead of failing over). None, grpc's default (fail fast), as the
#: asyncio driver passes; an explicit False costs grpc a flags object per call.
_NO_WAIT: Final = None


class SyncDriver(Driver, Protocol):
    """What the multicallables need of their channel (BalancedChannel)."""

    def wait(self, action: Wait) -> None: ...
    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]: ...


class UnaryUnary(Multi, grpc.UnaryUnaryMultiCallable):  # type: ignore[misc]  # grpc ships no types
    """``channel.unary_unary(method)`` of a balanced channel: failover and hedging."""

    __slots__ = ()

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,
                 credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        """Call one instance (failing over as needed); return the response."""
        # The common call inline (one attempt, no hedge, nothing or only statistics to
        # report): no frame but this one and grpc's (bench scenario 20). Every other
        # case, and any failure, continues in _invoke's loop over the core's actions.
        channel: SyncDriver = self._channel
        count_ok = channel.count_ok
        if count_ok is None and channel.on_call is not None:
            return self._invoke(request, timeout, metadata, credentials, compression, False)
        attempts, action = begin(channel.balancer, channel.call_options, timeout)
        if type(action) is not Send:
            return self._invoke(request, timeout, metadata, credentials, compression, False,
                                attempts, action)
        # Unpacked: 3.11 reads a NamedTuple field by attribute through a slow lookup.
        inst, sub_timeout, hedge_in = action
        if hedge_in is not None:
            return self._invoke(request, timeout, metadata, credentials, compression, False,
                                attempts, action)
        try:
            response = (inst.callables.get(self._slot) or self._sub(inst))(
                request, sub_timeout, metadata, credentials, _NO_WAIT, compression)
        except grpc.RpcError as e:
            return self._invoke(request, timeout, metadata, credentials, compression, False,
                                attempts, attempts.failed(inst, e.code(), bool(e.initial_metadata())),
                                e)
        attempts.answered(inst, count_ok)
        return response

    def with_call(self, request: Any, timeout: float | None = None, metadata: Any = None,
                  credentials: grpc.CallCredentials | None = None,
                  wait_for_ready: bool | None = None,
                  compression: grpc.Compression | None = None) -> tuple[Any, BalancedCall]:
        """Like ``__call__``; also return the call (``served_by(call)`` names the instance)."""
        answer: tuple[Any, BalancedCall] = self._invoke(request, timeout, metadata, credentials,
                                                        compression, True)
        return answer

    def future(self, request: Any, timeout: float | None = None, metadata: Any = None,
               credentials: grpc.CallCredentials | None = None,
               wait_for_ready: bool | None = None,
               compression: grpc.Compression | None = None) -> CallFuture:
        """Start the call on the channel's thread pool; return a grpc.Future and grpc.Call."""
        return CallFuture(self._channel.submit(
            self._invoke, request, timeout, metadata, credentials, compression, True))

    def _invoke(self, request: Any, timeout: float | None, metadata: Any,
                credentials: grpc.CallCredentials | None,
                compression: grpc.Compression | None, want_call: bool,
                attempts: Attempts | None = None, action: Action | None = None,
                error: grpc.RpcError | None = None) -> Any:
        """The call as a loop over the core's actions (from ``attempts`` at ``action``,
        after ``error``, when ``__call__`` began it)."""
        # wait_for_ready is not passed on (_NO_WAIT).
        channel: SyncDriver = self._channel
        if attempts is None or action is None:
            attempts, action = begin(channel.balancer, channel.call_options, timeout)
        on_call, count_ok = channel.on_call, channel.count_ok
        # The grpc.Call (its response header names the instance) only when asked for,
        # or for a CallInfo: counting statistics needs neither.
        with_call = want_call or (on_call is not None and count_ok is None)
        while True:
            if type(action) is Send:
                inst = action.inst
                if action.hedge_in is not None:
                    won = self._hedged(attempts, action, request, metadata, credentials,
                                       compression)
                    if isinstance(won, Lost):
                        action, error = won
                        continue
                    response, call, inst = won
                else:
                    sub = inst.callables.get(self._slot) or self._sub(inst)
                    try:
                        if with_call:
                            response, call = sub.with_call(request, action.timeout, metadata,
                                                           credentials, _NO_WAIT, compression)
                        else:
                            response = sub(request, action.timeout, metadata, credentials,
                                           _NO_WAIT, compression)
                            call = None
                    except grpc.RpcError as e:
                        error = e
                        action = attempts.failed(inst, e.code(), bool(e.initial_metadata()))
                        continue
                attempts.succeeded(inst)
                if on_call is not None:
                    if count_ok is not None and not attempts.tried:
                        count_ok((inst.name, attempts.elapsed_ms()))
                    else:
                        self._report(attempts, grpc.StatusCode.OK, "",
                                     None if call is None else call.initial_metadata(), response)
                return (response, BalancedCall(call, inst.name, inst.address)) if want_call \
                    else response
            if type(action) is Wait:
                channel.wait(action)
                action = attempts.resume()
                continue
            if type(action) is Delay:
                time.sleep(action.seconds)
                action = attempts.delayed()
                continue
            assert type(action) is GiveUp  # PENDING comes only from inside _hedged
            failure = action.error or error
            assert failure is not None
            own = action.error is None
            self._report(attempts, failure.code(), failure.details() or "",
                         failure.initial_metadata() if own else None)
            raise failure

    def _hedged(self, attempts: Attempts, send: Send, request: Any, metadata: Any,
                credentials: Any, compression: Any) -> tuple[Any, Any, Instance] | Lost:
        """Run ``send``, and each further attempt the core asks for: a hedge when the
        latest attempt stays unanswered for its ``hedge_in``, a failover when one
        fails while the others hang.

        The first answer wins and the others are cancelled; every failure goes to
        the core, which says what comes next once none is in flight.
        """
        finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
        pending: dict[Any, Instance] = {}
        latest, due = send.inst, None

        def launch(s: Send) -> None:
            nonlocal latest, due
            fut = self._sub(s.inst).future(request, s.timeout, metadata, credentials, _NO_WAIT,
                                           compression)
            pending[fut] = latest = s.inst
            due = None if s.hedge_in is None else time.monotonic() + s.hedge_in
            fut.add_done_callback(finished.put)

        launch(send)
        while True:
            try:
                fut = finished.get(timeout=None if due is None else
                                   max(0.0, due - time.monotonic()))
            except queue.Empty:
                due = None
                extra = attempts.hedge(latest)
                if extra is not None:
                    launch(extra)
                continue
            inst = pending.pop(fut)
            try:
                response = fut.result()
            except grpc.RpcError as e:
                action = attempts.failed(inst, e.code(), bool(e.initial_metadata()))
                if action is PENDING:
                    continue
                if type(action) is Send and pending:
                    launch(action)  # failing over while the others hang
                    continue
                return Lost(action, e)
            for loser in pending:
                loser.cancel()
            return response, fut, inst


class _Streaming(Multi):
    """A pick per call, no failover; the outcome counts when the call ends."""

    __slots__ = ()

    def _start(self, timeout: float | None) -> tuple[Attempts, Send]:
        channel: SyncDriver = self._channel
        attempts = channel.attempts(timeout, replayable=False)
        action = attempts.start()
        while type(action) is Wait or type(action) is Delay:
            if isinstance(action, Delay):
                time.sleep(action.seconds)
                action = attempts.delayed()
            else:
                channel.wait(action)
                action = attempts.resume()
        if type(action) is GiveUp:
            assert action.error is not None  # no attempt was made
            self._report(attempts, action.error.code(), action.error.details())
            raise action.error
        assert type(action) is Send
        return attempts, action

    def _response_stream(self, request: Any, timeout: float | None = None,
                         metadata: Any = None, credentials: grpc.CallCredentials | None = None,
                         wait_for_ready: bool | None = None,
                         compression: grpc.Compression | None = None) -> Any:
        """Start the call on one instance; return grpc's response iterator (a grpc.Call).

        ``request`` is the request message, or an iterator of them (stream-stream).
        """
        attempts, send = self._start(timeout)
        return self._follow(attempts, send.inst, self._sub(send.inst)(
            request, send.timeout, metadata, credentials, _NO_WAIT, compression))

    def _follow(self, attempts: Attempts, inst: Instance, call: Any) -> Any:
        # Booked on the channel's pool: grpc runs done-callbacks on the thread that
        # would deliver a late response header, so waiting for it there never ends.
        call.add_done_callback(
            lambda done: self._channel.submit(self._book, attempts, inst, done))
        return call

    def _book(self, attempts: Attempts, inst: Instance, call: Any) -> None:
        code, metadata = call.code(), call.initial_metadata()
        attempts.ended(inst, code, bool(metadata), call.cancelled())
        self._report(attempts, code, call.details() or "", metadata)


class UnaryStream(_Streaming, grpc.UnaryStreamMultiCallable):  # type: ignore[misc]  # grpc ships no types
    """``channel.unary_stream(method)`` of a balanced channel."""

    __slots__ = ()
    __call__ = _Streaming._response_stream


class StreamStream(_Streaming, grpc.StreamStreamMultiCallable):  # type: ignore[misc]  # grpc ships no types
    """``channel.stream_stream(method)`` of a balanced channel."""

    __slots__ = ()
    __call__ = _Streaming._response_stream


class StreamUnary(_Streaming, grpc.StreamUnaryMultiCallable):  # type: ignore[misc]  # grpc ships no types
    """``channel.stream_unary(method)`` of a balanced channel."""

    __slots__ = ()

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
        attempts, send = self._start(timeout)
        try:
            response, call = self._sub(send.inst).with_call(
                request_iterator, send.timeout, metadata, credentials, _NO_WAIT, compression)
        except grpc.RpcError as e:
            self._book(attempts, send.inst, e)
            raise
        self._book(attempts, send.inst, call)
        return response, call

    def future(self, request_iterator: Iterator[Any], timeout: float | None = None,
               metadata: Any = None, credentials: grpc.CallCredentials | None = None,
               wait_for_ready: bool | None = None,
               compression: grpc.Compression | None = None) -> Any:
        """Start the call on one instance; return grpc's future (a grpc.Call)."""
        attempts, send = self._start(timeout)
        return self._follow(attempts, send.inst, self._sub(send.inst).future(
            request_iterator, send.timeout, metadata, credentials, _NO_WAIT, compression))


class CallFuture(grpc.Future, grpc.Call):  # type: ignore[misc]  # grpc ships no types
    """A balanced call running on a worker thread: a ``grpc.Future`` and ``grpc.Call``.

    >>> fut = stub.SayHello.future(request, timeout=1)   # doctest: +SKIP
    >>> fut.result().message                            # doctest: +SKIP
    'Hello world from server2'
    """

    def __init__(self, future: Future[Any]) -> None:
        self._future = future

    def _call(self) -> GrpcCall:
        # The grpc.Call of the finished call: the BalancedCall, or the error (a call's
        # grpc.RpcError is a grpc.Call too).
        exc = self._future.exception()
        return cast(GrpcCall, exc) if exc is not None else self._future.result()[1]

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
