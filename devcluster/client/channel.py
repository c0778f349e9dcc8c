"""BalancedChannel: a ``grpc.Channel`` that spreads calls over registry instances.

Generated stubs work on it unchanged::

    with BalancedChannel("server", ".devcluster") as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        reply = stub.SayHello(helloworld_pb2.HelloRequest(name="world"), timeout=2)

The sync driver: grpc's threaded sub-channels, a thread per probe, timers to
close retired sub-channels, a condition that wakes calls waiting for an instance.
Every decision is the core's (:mod:`devcluster.client.attempts`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc

from devcluster.client.attempts import Wait
from devcluster.client.balancer import Instance
from devcluster.client.driver import (
    HEALTH_REQUEST,
    RETIRE_GRACE,
    ChannelDriver,
    health_check,
    health_serving,
)
from devcluster.client.picker import OrderKey
from devcluster.client.sync_calls import StreamStream, StreamUnary, UnaryStream, UnaryUnary
from devcluster.registry.record import Snapshot

log = logging.getLogger(__name__)

__all__ = ["BalancedChannel", "OrderKey"]


class BalancedChannel(ChannelDriver, grpc.Channel):  # type: ignore[misc]  # grpc ships no types
    """A channel over every usable instance of ``service`` in ``registry``.

    Arguments: see :class:`~devcluster.client.driver.ChannelDriver` (the same for
    :class:`~devcluster.client.aio.AioBalancedChannel`). ``on_call`` runs in the
    calling thread, before a unary call returns or raises; for a streaming call,
    when it ends. Unary calls fail over and hedge; streaming calls go to one
    instance (a request stream cannot be replayed), their outcome still counts.

    >>> with BalancedChannel("server", tmp_path / ".devcluster") as ch:   # doctest: +SKIP
    ...     reply, call = GreeterStub(ch).SayHello.with_call(request, timeout=1)
    ...     served_by(call)
    'server1'
    """

    def _prepare(self) -> None:
        # Waiters sleep on the balancer's own lock, so no change slips between a
        # failed pick and the wait.
        self._cond = threading.Condition(self._lock)
        self._executor: ThreadPoolExecutor | None = None
        self._subscribers: list[Callable[[grpc.ChannelConnectivity], None]] = []
        self._connectivity: grpc.ChannelConnectivity | None = None
        self._timers: set[threading.Timer] = set()

    # -- the I/O the balancer asks for ----------------------------------------------

    def _deliver(self, snapshot: Snapshot) -> None:
        self._apply(snapshot)

    def _open_channel(self, address: str) -> grpc.Channel:
        return grpc.insecure_channel(address, options=self._options)

    def _retire_channel(self, channel: grpc.Channel) -> None:
        if self._stop.is_set():
            channel.close()
            return
        timer = threading.Timer(RETIRE_GRACE, self._close_retired, (channel,))
        timer.daemon = True
        with self._cond:
            self._timers.add(timer)
        timer.start()

    def _close_retired(self, channel: grpc.Channel) -> None:
        channel.close()
        with self._cond:
            self._timers = {t for t in self._timers if t.is_alive()}

    def _changed(self) -> None:
        self._cond.notify_all()
        if self._subscribers:
            state = self._state()
            if state is not self._connectivity:
                self._connectivity = state
                threading.Thread(target=self._tell, args=(list(self._subscribers), state),
                                 daemon=True).start()

    def _start_probe(self, inst: Instance) -> None:
        threading.Thread(target=self._probe, args=(inst,), daemon=True,
                         name=f"devcluster-probe-{inst.name}").start()

    def _probe(self, inst: Instance) -> None:
        probe = self.probe(inst)
        check = health_check(inst.channel)
        while (delay := probe.delay()) is not None:
            if self._stop.wait(delay) or not probe.wanted():
                return
            try:
                reply = check(HEALTH_REQUEST, timeout=probe.timeout)
            except grpc.RpcError as e:
                probe.answered(e.code())
            except ValueError:  # the sub-channel was closed under us
                return
            else:
                probe.answered(grpc.StatusCode.OK, health_serving(reply))

    # -- used by the multicallables -----------------------------------------------------

    def wait(self, action: Wait) -> None:
        """Block until the view changes after ``action`` was decided, or its time is up."""
        with self._cond:
            if self.balancer.generation == action.generation:
                self._cond.wait(action.seconds)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``fn`` on the channel's small thread pool (for ``future()`` calls)."""
        if self._executor is None:
            with self._cond:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        max_workers=32, thread_name_prefix="devcluster-future")
        return self._executor.submit(fn, *args)

    # -- grpc.Channel -------------------------------------------------------------

    CALLS = {"unary_unary": UnaryUnary, "unary_stream": UnaryStream,
             "stream_unary": StreamUnary, "stream_stream": StreamStream}

    def _state(self) -> grpc.ChannelConnectivity:
        if self.balancer.has_candidates():
            return grpc.ChannelConnectivity.READY
        if self._stop.is_set():
            return grpc.ChannelConnectivity.SHUTDOWN
        return grpc.ChannelConnectivity.TRANSIENT_FAILURE

    @staticmethod
    def _tell(callbacks: list[Callable[[grpc.ChannelConnectivity], None]],
              state: grpc.ChannelConnectivity) -> None:
        for callback in callbacks:
            try:
                callback(state)
            except Exception:
                log.exception("connectivity callback failed")

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None],
                  try_to_connect: bool = False) -> None:
        """Call ``callback`` with READY while some instance may take calls, else
        TRANSIENT_FAILURE; now, and on every change (``grpc.channel_ready_future`` works)."""
        with self._cond:
            self._subscribers.append(callback)
            self._connectivity = state = self._state()
        self._tell([callback], state)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        """Stop calling ``callback``."""
        with self._cond:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def close(self) -> None:
        """Stop following the registry and close every sub-channel (in-flight calls end)."""
        if self._stop.is_set():
            return
        self._stop.set()
        for inst in self.balancer.close():
            inst.channel.close()
        with self._cond:
            timers, self._timers = self._timers, set()
        for timer in timers:
            timer.cancel()
            timer.function(*timer.args)  # close the retired channel now
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._watcher.join(timeout=2.0)
        self._close_stats()
        if self._owns_registry:
            self._registry.close()

    def __enter__(self) -> BalancedChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
