"""AioBalancedChannel: the balanced channel for ``grpc.aio`` (many calls in flight).

The same decisions as :class:`~devcluster.client.channel.BalancedChannel` (they
are the core's), the same keyword arguments, with ``grpc.aio`` sub-channels.
Create it inside a running event loop (grpc.aio channels belong to the loop they
are made in)::

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
from typing import Any

import grpc
import grpc.aio

from devcluster.client.aio_calls import AioStreamingCall, AioUnaryUnary
from devcluster.client.attempts import Wait
from devcluster.client.balancer import Instance
from devcluster.client.driver import (
    HEALTH_REQUEST,
    RETIRE_GRACE,
    ChannelDriver,
    health_check,
    health_serving,
)
from devcluster.registry.record import Snapshot


class AioBalancedChannel(ChannelDriver, grpc.aio.Channel):  # type: ignore[misc]  # grpc ships no types
    """A ``grpc.aio.Channel`` over every usable instance of ``service`` in ``registry``.

    Arguments: see :class:`~devcluster.client.driver.ChannelDriver` (the same for
    :class:`~devcluster.client.channel.BalancedChannel`). Unary calls fail over,
    eject and hedge as there; ``on_call`` runs on the loop. Streaming calls pick
    an instance per call and, as they must return a call object at once, raise
    :class:`NoUsableInstanceError` at once when none is usable.

    >>> async with AioBalancedChannel("server", state_dir) as ch:    # doctest: +SKIP
    ...     call = GreeterStub(ch).SayHello(request, timeout=1)
    ...     reply = await call
    """

    def _prepare(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed_event = asyncio.Event()
        self._probes: set[asyncio.Future[Any]] = set()
        self._closing: set[asyncio.Future[Any]] = set()
        #: Retired sub-channels still open for in-flight calls, with their close timers.
        self._retired: dict[grpc.aio.Channel, asyncio.TimerHandle] = {}

    # -- the I/O the balancer asks for ----------------------------------------------

    def _deliver(self, snapshot: Snapshot) -> None:
        try:
            self._loop.call_soon_threadsafe(self._apply, snapshot)
        except RuntimeError:  # the loop is closed: nobody left to serve
            self._stop.set()

    def _open_channel(self, address: str) -> grpc.aio.Channel:
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

    def _start_probe(self, inst: Instance) -> None:
        self._spawn(self._probe(inst), self._probes)

    async def _probe(self, inst: Instance) -> None:
        probe = self.probe(inst)
        check = health_check(inst.channel)
        while (delay := probe.delay()) is not None:
            await asyncio.sleep(delay)
            if self._stop.is_set() or not probe.wanted():
                return
            try:
                reply = await check(HEALTH_REQUEST, timeout=probe.timeout)
            except grpc.aio.AioRpcError as e:
                probe.answered(e.code())
            except grpc.aio.UsageError:  # the sub-channel was closed under us
                return
            else:
                probe.answered(grpc.StatusCode.OK, health_serving(reply))

    # -- used by the calls -----------------------------------------------------------

    async def wait(self, action: Wait) -> None:
        """Return once the view changed after ``action`` was decided, or its time is up."""
        if self.balancer.generation == action.generation:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed_event.wait(), action.seconds)

    # -- grpc.aio.Channel -----------------------------------------------------------

    CALLS = {"unary_unary": AioUnaryUnary, "unary_stream": AioStreamingCall,
             "stream_unary": AioStreamingCall, "stream_stream": AioStreamingCall}

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
        self._close_stats()
        if self._owns_registry:
            self._registry.close()

    async def __aenter__(self) -> AioBalancedChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
