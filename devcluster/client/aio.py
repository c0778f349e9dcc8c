"""AioBalancedChannel: the balanced channel for ``grpc.aio`` (many calls in flight).

The same picking, failover and ejection as :class:`BalancedChannel`, with
``grpc.aio`` sub-channels. Create it inside a running event loop (grpc.aio
channels belong to the loop they are made in)::

    async with AioBalancedChannel("server", ".devcluster") as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        reply = await stub.SayHello(helloworld_pb2.HelloRequest(name="world"), timeout=2)

The registry is followed by its blocking ``watch`` in a thread that hands every
snapshot to the loop: the view is only ever changed on the loop, so sub-channels
are made there and no call ever waits for a lock held across an await.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2

from devcluster.client.aio_calls import AioStreamingCall, AioUnaryUnary
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
from devcluster.client.channel import RETIRE_GRACE
from devcluster.client.picker import OrderKey, make_picker
from devcluster.registry.base import Registry

log = logging.getLogger(__name__)


class AioBalancedChannel(grpc.aio.Channel):
    """A ``grpc.aio.Channel`` over every usable instance of ``service`` in ``registry``.

    Arguments as for :class:`~devcluster.client.channel.BalancedChannel`. Unary
    calls fail over and eject like there; streaming calls pick an instance per
    call and raise :class:`NoUsableInstanceError` at once when none is usable.

    >>> async with AioBalancedChannel("server", state_dir) as ch:    # doctest: +SKIP
    ...     call = GreeterStub(ch).SayHello(request, timeout=1)
    ...     reply = await call
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
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._options = [*SUBCHANNEL_OPTIONS, *options]
        self._registry, self._owns_registry = open_registry(registry)
        self.on_call = on_call
        self.default_wait = default_wait
        self._stop = threading.Event()
        self._slot_numbers = itertools.count(1)
        self._changed_event = asyncio.Event()
        self._probes: set[asyncio.Future[Any]] = set()
        self._closing: set[asyncio.Future[Any]] = set()
        #: Retired sub-channels still open for in-flight calls, with their close timers.
        self._retired: dict[grpc.aio.Channel, asyncio.TimerHandle] = {}
        self.balancer = Balancer(
            service, make_picker(policy, order),
            Hooks(self._make_channel, self._retire_channel, self._start_probe, self._changed),
            eject_after=eject_after, retry_on=retry_on, order=order)
        self.balancer.apply(self._registry.snapshot())
        self._watcher = threading.Thread(
            target=self._follow, name=f"devcluster-aio-watch-{service or 'all'}", daemon=True)
        self._watcher.start()

    def __repr__(self) -> str:
        names = ", ".join(repr(i) for i in self.balancer.instances())
        return f"<AioBalancedChannel service={self.balancer.service!r} [{names}]>"

    # -- following the registry (watch thread -> loop) ------------------------------

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                for snapshot in self._registry.watch(self._stop):
                    self._loop.call_soon_threadsafe(self.balancer.apply, snapshot)
                return
            except RuntimeError:  # the loop is closed: nobody left to serve
                return
            except Exception:
                log.warning("registry watch failed; retrying in 0.5 s", exc_info=True)
                self._stop.wait(0.5)

    def _make_channel(self, address: str) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(address, options=self._options)

    def background(self, coro: Any) -> None:
        """Run ``coro`` as a task the channel keeps alive (and awaits on close)."""
        self._spawn(coro, self._closing)

    @staticmethod
    def _spawn(coro: Any, tasks: set[asyncio.Future[Any]]) -> None:
        # Hold a reference: the loop keeps only weak ones to running tasks.
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _retire_channel(self, channel: grpc.aio.Channel) -> None:
        if self._stop.is_set():
            self._spawn(channel.close(), self._closing)
            return
        def close_now() -> None:
            self._retired.pop(channel, None)
            self._spawn(channel.close(), self._closing)

        self._retired[channel] = self._loop.call_later(RETIRE_GRACE, close_now)

    def _changed(self) -> None:
        # On the loop, with the balancer lock held: wake every waiter, arm a new event.
        self._changed_event.set()
        self._changed_event = asyncio.Event()

    # -- ejection probes ---------------------------------------------------------

    def _start_probe(self, inst: Instance) -> None:
        self._spawn(self._probe(inst), self._probes)

    async def _probe(self, inst: Instance) -> None:
        check = inst.channel.unary_unary(
            HEALTH_CHECK_METHOD,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString)
        interval = PROBE_FIRST
        while True:
            await asyncio.sleep(interval)
            if self._stop.is_set() or inst.retired or inst.ejected is None:
                return
            try:
                reply = await check(health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT)
                back = probe_verdict(grpc.StatusCode.OK,
                                     reply.status == health_pb2.HealthCheckResponse.SERVING)
            except grpc.aio.AioRpcError as e:
                back = probe_verdict(e.code())
            except grpc.aio.UsageError:  # the sub-channel was closed under us
                return
            if back:
                log.info("instance %s answers again: back in rotation", inst.name)
                self.balancer.readmit(inst)
                return
            interval = min(interval * 2, PROBE_MAX)

    # -- used by the calls -----------------------------------------------------------

    def next_slot(self) -> int:
        """A number for a new multicallable, keying its sub-channel twins."""
        return next(self._slot_numbers)

    async def wait_for_instance(
        self, deadline: float | None, tried: list[tuple[Instance, grpc.StatusCode]] | None,
    ) -> Instance:
        """Wait until an instance not in ``tried`` may take the call; else raise.

        See :meth:`BalancedChannel.wait_for_instance`.
        """
        balancer = self.balancer
        end = time.monotonic() + self.default_wait if deadline is None else deadline
        exclude = {inst.name for inst, _ in tried or ()}
        last = tried[-1][0].name if tried else ""
        pause = 0.02
        while True:
            inst = balancer.next_after(last, exclude) if exclude else balancer.pick()
            if inst is not None:
                return inst
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise balancer.out_of_time(tried)
            changed = self._changed_event
            if exclude and balancer.has_candidates():
                # Every candidate failed this call but none could be ejected: only a
                # new attempt shows when one is back, so pause (growing) and retry.
                wait = min(remaining, pause)
                pause = min(pause * 2, 0.5)
                exclude.clear()
            else:
                wait = remaining
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), wait)

    # -- grpc.aio.Channel -----------------------------------------------------------

    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None,
                    _registered_method: bool | None = False) -> AioUnaryUnary:
        """A balanced unary-unary multicallable; calls fail over and eject."""
        return AioUnaryUnary(self, method, request_serializer, response_deserializer,
                             bool(_registered_method))

    def unary_stream(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> AioStreamingCall:
        """A unary-stream multicallable: one instance per call, no failover."""
        return AioStreamingCall(self, "unary_stream", method, request_serializer,
                                response_deserializer, bool(_registered_method))

    def stream_unary(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None,
                     _registered_method: bool | None = False) -> AioStreamingCall:
        """A stream-unary multicallable: one instance per call, no failover."""
        return AioStreamingCall(self, "stream_unary", method, request_serializer,
                                response_deserializer, bool(_registered_method))

    def stream_stream(self, method: str, request_serializer: Any = None,
                      response_deserializer: Any = None,
                      _registered_method: bool | None = False) -> AioStreamingCall:
        """A stream-stream multicallable: one instance per call, no failover."""
        return AioStreamingCall(self, "stream_stream", method, request_serializer,
                                response_deserializer, bool(_registered_method))

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """READY while some instance may take calls, else TRANSIENT_FAILURE."""
        if self._stop.is_set():
            return grpc.ChannelConnectivity.SHUTDOWN
        if self.balancer.has_candidates():
            return grpc.ChannelConnectivity.READY
        return grpc.ChannelConnectivity.TRANSIENT_FAILURE

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Return once :meth:`get_state` differs from ``last_observed_state``."""
        while self.get_state() is last_observed_state:
            await self._changed_event.wait()

    async def channel_ready(self) -> None:
        """Return once some instance may take calls."""
        while self.get_state() is not grpc.ChannelConnectivity.READY:
            await self.wait_for_state_change(self.get_state())

    async def close(self, grace: float | None = None) -> None:
        """Stop following the registry, close every sub-channel (after ``grace``)."""
        if self._stop.is_set():
            return
        self._stop.set()
        for task in list(self._probes):
            task.cancel()
        channels = [inst.channel for inst in self.balancer.close()]
        for channel, handle in self._retired.items():
            handle.cancel()
            channels.append(channel)
        self._retired.clear()
        await asyncio.gather(*(ch.close(grace) for ch in channels), *self._closing,
                             return_exceptions=True)
        await asyncio.to_thread(self._watcher.join, 2.0)
        if self._owns_registry:
            self._registry.close()

    async def __aenter__(self) -> AioBalancedChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
