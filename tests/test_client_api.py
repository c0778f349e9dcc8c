"""What only one flavour has: grpc.Channel's futures and subscriptions, grpc.aio's
call objects and readiness. (Behaviour both share: tests/test_client_channel.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import grpc.aio
import pytest

from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc
from devcluster.client import (
    AioBalancedChannel,
    BalancedChannel,
    NoUsableInstanceError,
    served_by,
)
from devcluster.errors import UsageError
from devcluster.registry.record import State
from tests._servers import LocalServer, MemoryRegistry, local_servers, wait_for

REQ = helloworld_pb2.HelloRequest(name="world")


@pytest.fixture
def servers() -> Iterator[dict[str, LocalServer]]:
    with local_servers("server1", "server2", "server3") as found:
        yield found


@pytest.fixture
def registry(servers: dict[str, LocalServer]) -> MemoryRegistry:
    return MemoryRegistry(s.record() for s in servers.values())


def test_future_with_call_and_served_by(registry: MemoryRegistry) -> None:
    with BalancedChannel("server", registry) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        futures = [stub.SayHello.future(REQ, timeout=2) for _ in range(3)]
        replies = sorted(f.result(timeout=5).message for f in futures)
        assert replies == [f"Hello world from server{i}" for i in (1, 2, 3)]
        assert futures[0].code() is grpc.StatusCode.OK and futures[0].done()
        _, call = stub.SayHello.with_call(REQ, timeout=2)
        assert served_by(call) == call.instance
        assert call.address == registry.get(call.instance).address


def test_channel_ready_future_and_subscribe(servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([servers["server1"].record(state=State.STARTING)])
    with BalancedChannel("server", registry) as channel:
        states: list[grpc.ChannelConnectivity] = []
        channel.subscribe(states.append)
        ready = grpc.channel_ready_future(channel)
        assert not ready.done()
        registry.update("server1", state="serving")
        ready.result(timeout=2)
        wait_for(lambda: grpc.ChannelConnectivity.READY in states, 2, "READY")
        assert states[0] is grpc.ChannelConnectivity.TRANSIENT_FAILURE
        channel.unsubscribe(states.append)


def test_close_is_idempotent_and_stops_following(registry: MemoryRegistry) -> None:
    channel = BalancedChannel("server", registry)
    assert "server1" in repr(channel)
    channel.close()
    channel.close()
    assert not channel._watcher.is_alive()
    assert channel.balancer.instances() == []


def test_hedge_after_must_be_positive(registry: MemoryRegistry) -> None:
    with pytest.raises(UsageError, match="hedge_after must be > 0"):
        BalancedChannel("server", registry, hedge_after=0)
    with pytest.raises(UsageError, match="unknown policy 'random'"):
        BalancedChannel("server", registry, policy="random")


def test_aio_call_object_says_where_it_went(registry: MemoryRegistry) -> None:
    async def main() -> None:
        async with AioBalancedChannel("server", registry) as channel:
            stub = helloworld_pb2_grpc.GreeterStub(channel)
            call = stub.SayHello(REQ, timeout=2)
            assert call.instance == "server1"  # the first attempt is under way at once
            assert (await call.code()) is grpc.StatusCode.OK and call.done()
            assert (await call).message == "Hello world from server1"
            assert (await call.initial_metadata())["devcluster-instance"] == "server1"
            assert call.address == registry.get("server1").address
            assert not call.cancel() and not call.cancelled()

    asyncio.run(main())


def test_aio_readiness_follows_the_registry(servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([servers["server1"].record(enabled=False)])

    async def main() -> None:
        async with AioBalancedChannel("server", registry) as channel:
            assert channel.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE
            # A stream must be returned at once: with no instance it fails at once.
            with pytest.raises(NoUsableInstanceError, match="server1 disabled"):
                channel.unary_stream("/test.Echo/Split")(b"ab", timeout=2)
            registry.update("server1", enabled=True)
            await asyncio.wait_for(channel.channel_ready(), 2)
            stub = helloworld_pb2_grpc.GreeterStub(channel)
            assert (await stub.SayHello(REQ, timeout=2)).message.endswith("server1")
        assert channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN

    asyncio.run(main())


def test_aio_cancel_ends_the_call_and_ejects_nobody(servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([s.record() for s in servers.values()])
    servers["server1"].greeter.delay = 0.5

    async def main() -> None:
        async with AioBalancedChannel("server", registry) as channel:
            call = helloworld_pb2_grpc.GreeterStub(channel).SayHello(REQ, timeout=2)
            assert call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert all(i.ejected is None for i in channel.instances())

    asyncio.run(main())
