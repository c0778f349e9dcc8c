"""BalancedChannel: a ``grpc.Channel`` that spreads calls over registry instances.

Generated stubs work on it unchanged::

    with BalancedChannel("server", ".devcluster") as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        reply = stub.SayHello(helloworld_pb2.HelloRequest(name="world"), timeout=2)

Each call picks an instance by the policy, over the instances the registry calls
usable and this channel has not ejected; a call that fails ``UNAVAILABLE`` before
the server saw it moves on to the next instance within the caller's deadline.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from devcluster.client.balancer import (
    DEFAULT_WAIT,
    HEALTH_CHECK_METHOD,
    PROBE_FIRST,
    PROBE_MAX,
    PROBE_TIMEOUT,
    SUBCHANNEL_OPTIONS,
    Balancer,
    Hooks,
    Instance,
    open_registry,
    probe_verdict,
)
from devcluster.client.calls import CallInfo
from devcluster.client.picker import OrderKey, make_picker
from devcluster.client.streams import StreamStream, StreamUnary, UnaryStream
from devcluster.client.unary import UnaryUnary
from devcluster.registry.base import Registry

log = logging.getLogger(__name__)

#: Sub-channels of replaced or removed instances stay open this long, so calls
#: still in flight on them (a draining instance) can finish.
RETIRE_GRACE = 5.0


class BalancedChannel(grpc.Channel):
    """A channel over every usable instance of ``service`` in ``registry``.

    ``service=None`` takes every instance; ``registry`` is a Registry or a state
    dir (None: ``$DEVCLUSTER_HOME`` or ``./.devcluster``). ``policy`` is
    ``weighted`` (smooth WRR), ``round_robin`` or ``pick_first``. Calls that the
    server saw are not retried unless their code is in ``retry_on``. An instance
    is ejected after one ``UNAVAILABLE`` before the server saw the call, or after
    ``eject_after`` ``DEADLINE_EXCEEDED`` in a row, until a health probe or the
    registry says it is back. ``on_call`` gets a :class:`CallInfo` per call, in the
    calling thread, before the call returns or raises. ``order`` sorts instance
    names for the policy and for failover (default: by name; a static target
    passes the position of each address in its list).

    >>> with BalancedChannel("server", tmp_path / ".devcluster") as ch:   # doctest: +SKIP
    ...     reply, call = GreeterStub(ch).SayHello.with_call(request, timeout=1)
    ...     served_by(call)
    'server1'
    """

    def __init__(
        self,
        service: str | None = None,
        registry: Registry | str | os.PathLike[str] | None = None,
        *,
        policy: str = "weighted",
        retry_on: Collection[grpc.StatusCode] = (),
        eject_after: int = 2,
        on_call: Callable[[CallInfo], None] | None = None,
        options: Sequence[tuple[str, Any]] = (),
        default_wait: float = DEFAULT_WAIT,
        order: OrderKey | None = None,
        hedge_after: float | None = None,
    ) -> None:
        #: Idempotent calls only: a unary call with no answer after this many seconds is
        #: also sent to another instance and the first answer wins, so a hung (paused)
        #: instance costs no failed call even with many calls in flight. None: off.
        self.hedge_after = hedge_after
        self._options = [*SUBCHANNEL_OPTIONS, *options]
        self._registry, self._owns_registry = open_registry(registry)
        self.on_call = on_call
        self.default_wait = default_wait
        self._stop = threading.Event()
        self._slot_numbers = itertools.count(1)
        self._executor: ThreadPoolExecutor | None = None
        self._subscribers: list[Callable[[grpc.ChannelConnectivity], None]] = []
        self._connectivity: grpc.ChannelConnectivity | None = None
        self._timers: set[threading.Timer] = set()
        self.balancer = Balancer(
            service, make_picker(policy, order),
            Hooks(self._make_channel, self._retire_channel, self._start_probe, self._changed),
            eject_after=eject_after, retry_on=retry_on, order=order)
        self._cond = threading.Condition(self.balancer.lock)
        # The first view is synchronous: a call right after construction has targets.
        self.balancer.apply(self._registry.snapshot())
        self._watcher = threading.Thread(
            target=self._follow, name=f"devcluster-watch-{service or 'all'}", daemon=True)
        self._watcher.start()

    def __repr__(self) -> str:
        names = ", ".join(repr(i) for i in self.balancer.instances())
        return f"<BalancedChannel service={self.balancer.service!r} [{names}]>"

    # -- following the registry ---------------------------------------------

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                for snapshot in self._registry.watch(self._stop):
                    self.balancer.apply(snapshot)
                return
            except Exception:
                # A registry caught mid-repair (corrupt file, deleted dir) must not end
                # live following for good; the last good view keeps serving meanwhile.
                log.warning("registry watch failed; retrying in 0.5 s", exc_info=True)
                self._stop.wait(0.5)

    def _make_channel(self, address: str) -> grpc.Channel:
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
        # Runs with the balancer lock held, after every change of the candidates.
        self._cond.notify_all()
        if self._subscribers:
            state = self._state()
            if state is not self._connectivity:
                self._connectivity = state
                threading.Thread(target=self._tell, args=(list(self._subscribers), state),
                                 daemon=True).start()

    # -- ejection probes ------------------------------------------------------

    def _start_probe(self, inst: Instance) -> None:
        threading.Thread(target=self._probe, args=(inst,), daemon=True,
                         name=f"devcluster-probe-{inst.name}").start()

    def _probe(self, inst: Instance) -> None:
        check = inst.channel.unary_unary(
            HEALTH_CHECK_METHOD,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString)
        interval = PROBE_FIRST
        while not self._stop.wait(interval):
            if inst.retired or inst.ejected is None:
                return
            try:
                reply = check(health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT)
                back = probe_verdict(grpc.StatusCode.OK,
                                     reply.status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.RpcError as e:
                back = probe_verdict(e.code())
            except ValueError:  # the sub-channel was closed under us
                return
            if back:
                log.info("instance %s answers again: back in rotation", inst.name)
                self.balancer.readmit(inst)
                return
            interval = min(interval * 2, PROBE_MAX)

    # -- used by the multicallables ---------------------------------------------

    def next_slot(self) -> int:
        """A number for a new multicallable, keying its sub-channel twins."""
        return next(self._slot_numbers)

    def wait_for_instance(
        self, deadline: float | None, tried: list[tuple[Instance, grpc.StatusCode]] | None,
    ) -> Instance:
        """Block until an instance not in ``tried`` may take the call; else raise.

        Without a deadline it waits :attr:`default_wait`. When every candidate was
        tried in this call (the last instance failed but may not be ejected) the
        tried ones become eligible again after a short, growing pause: only a new
        attempt can tell that such an instance is back.
        """
        balancer = self.balancer
        end = time.monotonic() + self.default_wait if deadline is None else deadline
        exclude = {inst.name for inst, _ in tried or ()}
        last = tried[-1][0].name if tried else ""
        pause = 0.02
        while True:
            generation = balancer.generation
            inst = balancer.next_after(last, exclude) if exclude else balancer.pick()
            if inst is not None:
                return inst
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise balancer.out_of_time(tried)
            with self._cond:
                if balancer.generation != generation:
                    continue
                if exclude and balancer.has_candidates():
                    self._cond.wait(min(remaining, pause))
                    pause = min(pause * 2, 0.5)
                    exclude.clear()
                else:
                    self._cond.wait(remaining)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the channel's small thread pool (for ``future()`` calls)."""
        if self._executor is None:
            with self._cond:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        max_workers=32, thread_name_prefix="devcluster-future")
        return self._executor.submit(fn, *args)

    # -- grpc.Channel -------------------------------------------------------------

    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> UnaryUnary:
        """A balanced unary-unary multicallable (``__call__``, ``with_call``, ``future``)."""
        return UnaryUnary(self, method, request_serializer, response_deserializer,
                          bool(_registered_method))

    def unary_stream(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> UnaryStream:
        """A unary-stream multicallable: each call picks an instance, no failover."""
        return UnaryStream(self, method, request_serializer, response_deserializer,
                           bool(_registered_method))

    def stream_unary(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> StreamUnary:
        """A stream-unary multicallable: each call picks an instance, no failover."""
        return StreamUnary(self, method, request_serializer, response_deserializer,
                           bool(_registered_method))

    def stream_stream(self, method: str, request_serializer: Any = None,
                      response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> StreamStream:
        """A stream-stream multicallable: each call picks an instance, no failover."""
        return StreamStream(self, method, request_serializer, response_deserializer,
                            bool(_registered_method))

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
        if self._owns_registry:
            self._registry.close()

    def __enter__(self) -> BalancedChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def instances(self) -> Iterator[Instance]:
        """The instances of the current view, by name (for ``ps``-like displays)."""
        return iter(self.balancer.instances())
