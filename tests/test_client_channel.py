"""BalancedChannel against grpc servers in this process and a registry fake.

Real grpc on both sides (no mocks); the registry is the in-memory fake, so these
run fast. Killed and frozen processes are in tests/integration/test_client_live.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import grpc.aio
import pytest
from rich.console import Console

from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc
from devcluster.cli.client_runner import ClientOptions, run_client
from devcluster.client import (
    AioBalancedChannel,
    BalancedChannel,
    CallInfo,
    NoUsableInstanceError,
    served_by,
)
from devcluster.errors import DevclusterError
from devcluster.registry.record import Record, State
from tests._servers import (
    ABORT_HEADER,
    LocalServer,
    MemoryRegistry,
    dead_address,
    local_servers,
    wait_for,
)

REQ = helloworld_pb2.HelloRequest(name="world")


@pytest.fixture
def servers() -> Iterator[dict[str, LocalServer]]:
    with local_servers("server1", "server2", "server3") as found:
        yield found


@pytest.fixture
def registry(servers: dict[str, LocalServer]) -> MemoryRegistry:
    return MemoryRegistry(s.record() for s in servers.values())


def call_many(channel: grpc.Channel, n: int, timeout: float = 2.0) -> Counter[str]:
    stub = helloworld_pb2_grpc.GreeterStub(channel)
    seen: Counter[str] = Counter()
    for _ in range(n):
        _, call = stub.SayHello.with_call(REQ, timeout=timeout)
        seen[served_by(call) or "?"] += 1
    return seen


def test_generated_stubs_work_unchanged(registry: MemoryRegistry) -> None:
    with BalancedChannel("server", registry) as channel:
        reply = helloworld_pb2_grpc.GreeterStub(channel).SayHello(REQ, timeout=2)
    assert reply.message.startswith("Hello world from server")


def test_equal_weights_rotate_exactly(registry: MemoryRegistry) -> None:
    with BalancedChannel("server", registry) as channel:
        assert call_many(channel, 30) == {"server1": 10, "server2": 10, "server3": 10}


def test_weights_give_exact_shares_and_follow_the_registry_live(
        registry: MemoryRegistry) -> None:
    registry.update("server1", weight=5)
    with BalancedChannel("server", registry) as channel:
        assert call_many(channel, 70) == {"server1": 50, "server2": 10, "server3": 10}
        registry.update("server2", enabled=False)
        registry.update("server3", weight=0)
        wait_for(lambda: channel.balancer.weights() == {"server1": 5}, 2, "the new view")
        assert call_many(channel, 10) == {"server1": 10}


@pytest.mark.parametrize(("policy", "expected"), [
    ("round_robin", {"server1": 4, "server2": 4, "server3": 4}),
    ("pick_first", {"server1": 12}),
])
def test_policies(registry: MemoryRegistry, policy: str, expected: dict[str, int]) -> None:
    registry.update("server1", weight=5)
    with BalancedChannel("server", registry, policy=policy) as channel:
        assert call_many(channel, 12) == expected


def test_service_filter_and_every_service(servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([servers["server1"].record("server"),
                               servers["server2"].record("other")])
    with BalancedChannel("other", registry) as channel:
        assert call_many(channel, 4) == {"server2": 4}
    with BalancedChannel(None, registry) as channel:
        assert call_many(channel, 4) == {"server1": 2, "server2": 2}


def test_on_call_reports_every_call(registry: MemoryRegistry) -> None:
    infos: list[CallInfo] = []
    with BalancedChannel("server", registry, on_call=infos.append) as channel:
        reply = helloworld_pb2_grpc.GreeterStub(channel).SayHello(REQ, timeout=2)
    (info,) = infos
    assert info.ok and info.code == "OK" and info.retried == []
    assert info.instance == "server1" and info.address == registry.get("server1").address
    assert info.response == reply and info.latency_ms > 0 and info.seq == 1
    assert info.to_dict()["instance"] == "server1"


def test_a_dead_address_costs_no_failed_call_and_is_ejected(
        servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([servers["server1"].record(),
                               Record("ghost", "server", dead_address(), state=State.SERVING,
                                      pid=1, started_at=1.0),
                               servers["server2"].record()])
    infos: list[CallInfo] = []
    with BalancedChannel("server", registry, on_call=infos.append) as channel:
        seen = call_many(channel, 12)  # raises on any failed call
        assert set(seen) == {"server1", "server2"}
        retried = [i for i in infos if i.retried]
        # Failover goes to the next instance in name order.
        assert [(i.retried, i.instance) for i in retried] == [([("ghost", "UNAVAILABLE")],
                                                               "server1")]
        (ghost,) = [i for i in channel.instances() if i.name == "ghost"]
        assert ghost.ejected == "unreachable"


def test_errors_from_the_server_are_not_retried_unless_asked(
        registry: MemoryRegistry, servers: dict[str, LocalServer]) -> None:
    abort = ((ABORT_HEADER, "UNAVAILABLE"),)
    with BalancedChannel("server", registry) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.SayHello(REQ, timeout=2, metadata=abort)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert sum(s.greeter.calls for s in servers.values()) == 1
        # The server answered, so it is not ejected.
        assert all(i.ejected is None for i in channel.instances())
    with BalancedChannel("server", registry,
                         retry_on={grpc.StatusCode.UNAVAILABLE}) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.SayHello(REQ, timeout=2, metadata=abort)
        # Tried on every instance once, then the last error stands.
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert [s.greeter.calls for s in servers.values()] == [2, 1, 1]


def test_no_usable_instance_names_every_instance_and_why(
        servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([
        servers["server1"].record(state=State.KILLED),
        servers["server2"].record(enabled=False),
        servers["server3"].record(weight=0),
    ])
    with BalancedChannel("server", registry) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stub.SayHello(REQ, timeout=0.3)
        waited = time.monotonic() - started
    assert 0.25 < waited < 2
    error = err.value
    assert isinstance(error, NoUsableInstanceError) and isinstance(error, grpc.Call)
    assert isinstance(error, DevclusterError)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert error.details() == ("no usable instance of service 'server': server1 killed, "
                               "server2 disabled, server3 weight 0")


def test_a_call_waits_for_an_instance_to_appear(servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([servers["server1"].record(state=State.STARTING)])
    with BalancedChannel("server", registry, default_wait=5) as channel:
        timer = threading.Timer(0.2, registry.update, ("server1",), {"state": "serving"})
        timer.start()
        try:
            reply = helloworld_pb2_grpc.GreeterStub(channel).SayHello(REQ)  # no deadline
        finally:
            timer.join()
    assert reply.message == "Hello world from server1"


def test_an_empty_registry_says_so() -> None:
    with (BalancedChannel("server", MemoryRegistry(), default_wait=0.1) as channel,
          pytest.raises(NoUsableInstanceError, match="the registry lists none")):
        helloworld_pb2_grpc.GreeterStub(channel).SayHello(REQ)


def test_a_slow_instance_is_ejected_after_two_timeouts_and_probed_back(
        registry: MemoryRegistry, servers: dict[str, LocalServer]) -> None:
    servers["server2"].greeter.delay = 0.5
    with BalancedChannel("server", registry) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        codes = []
        for _ in range(12):
            try:
                stub.SayHello(REQ, timeout=0.1)
                codes.append("OK")
            except grpc.RpcError as e:
                codes.append(e.code().name)
        assert codes.count("DEADLINE_EXCEEDED") == 2
        server2 = channel.balancer.instances()[1]
        assert server2.ejected == "hung (2 calls in a row timed out)"
        # Its health service answers, so the probe brings it back.
        servers["server2"].greeter.delay = 0
        wait_for(lambda: server2.ejected is None, 3, "server2 readmitted")
        assert call_many(channel, 3) == {"server1": 1, "server2": 1, "server3": 1}


def test_only_timeouts_in_a_row_eject(servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([servers["server1"].record(), servers["server2"].record()])
    slow = servers["server2"].greeter
    with BalancedChannel("server", registry) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        server2 = channel.balancer.instances()[1]

        def pair(delay: float) -> str:
            stub.SayHello(REQ, timeout=1)  # server1
            slow.delay = delay
            try:
                stub.SayHello(REQ, timeout=0.1)  # server2
                return "OK"
            except grpc.RpcError as e:
                return e.code().name

        assert pair(0.3) == "DEADLINE_EXCEEDED"
        assert pair(0) == "OK"  # an answer ends the streak...
        assert pair(0.3) == "DEADLINE_EXCEEDED"
        assert server2.ejected is None  # ...so this is one in a row, not two
        assert pair(0.3) == "DEADLINE_EXCEEDED"
        assert server2.ejected == "hung (2 calls in a row timed out)"


def test_the_last_usable_instance_is_never_ejected(servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([servers["server1"].record()])
    servers["server1"].greeter.delay = 0.3
    with BalancedChannel("server", registry) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        for _ in range(3):
            with pytest.raises(grpc.RpcError):
                stub.SayHello(REQ, timeout=0.05)
        assert channel.balancer.instances()[0].ejected is None
        servers["server1"].greeter.delay = 0
        assert stub.SayHello(REQ, timeout=2).message.endswith("server1")


def test_a_restart_gets_a_fresh_sub_channel(registry: MemoryRegistry) -> None:
    with BalancedChannel("server", registry) as channel:
        before = {i.name: i for i in channel.instances()}
        registry.update("server2", pid=424242, started_at=2.0)
        wait_for(lambda: channel.instances() and
                 next(i for i in channel.instances() if i.name == "server2")
                 is not before["server2"], 2, "a new server2")
        after = {i.name: i for i in channel.instances()}
        assert after["server1"] is before["server1"]
        assert before["server2"].retired
        assert call_many(channel, 3) == {"server1": 1, "server2": 1, "server3": 1}


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


def test_streaming_kinds_pick_an_instance_per_call(registry: MemoryRegistry) -> None:
    with BalancedChannel("server", registry) as channel:
        split = channel.unary_stream("/test.Echo/Split")
        join = channel.stream_unary("/test.Echo/Join")
        each = channel.stream_stream("/test.Echo/Each")
        assert list(split(b"abc", timeout=2)) == [b"a", b"b", b"c"]
        assert join(iter([b"a", b"b"]), timeout=2) == b"ab"
        assert join.future(iter([b"x"]), timeout=2).result() == b"x"
        assert list(each(iter([b"a", b"b"]), timeout=2)) == [b"A", b"B"]


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
    channel.close()
    channel.close()
    assert not channel._watcher.is_alive()
    assert channel.balancer.instances() == []


# -- asyncio ------------------------------------------------------------------------


def test_aio_channel_fails_over_and_reports(servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([servers["server1"].record(),
                               Record("ghost", "server", dead_address(), state=State.SERVING,
                                      pid=1, started_at=1.0)])
    infos: list[CallInfo] = []

    async def main() -> list[str]:
        async with AioBalancedChannel("server", registry, on_call=infos.append) as channel:
            stub = helloworld_pb2_grpc.GreeterStub(channel)
            replies = await asyncio.gather(*(stub.SayHello(REQ, timeout=2) for _ in range(6)))
            call = stub.SayHello(REQ, timeout=2)
            assert (await call.code()) is grpc.StatusCode.OK
            assert call.instance == "server1" and call.done()
            return [r.message for r in replies]

    assert asyncio.run(main()) == ["Hello world from server1"] * 6
    assert all(i.ok and i.instance == "server1" for i in infos)
    # The six calls started together, so up to three first attempts hit the ghost.
    retried = [i.retried for i in infos if i.retried]
    assert 1 <= len(retried) <= 3 and all(r == [("ghost", "UNAVAILABLE")] for r in retried)


def test_aio_no_usable_instance(servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([servers["server1"].record(enabled=False)])

    async def main() -> None:
        async with AioBalancedChannel("server", registry) as channel:
            stub = helloworld_pb2_grpc.GreeterStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.SayHello(REQ, timeout=0.2)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
            assert err.value.details() == "no usable instance of service 'server': server1 disabled"
            registry.update("server1", enabled=True)
            await asyncio.wait_for(channel.channel_ready(), 2)
            assert (await stub.SayHello(REQ, timeout=2)).message.endswith("server1")

    asyncio.run(main())


def test_aio_streaming_kinds(registry: MemoryRegistry) -> None:
    async def main() -> None:
        async with AioBalancedChannel("server", registry) as channel:
            split = channel.unary_stream("/test.Echo/Split")
            join = channel.stream_unary("/test.Echo/Join")
            each = channel.stream_stream("/test.Echo/Each")
            assert [m async for m in split(b"ab", timeout=2)] == [b"a", b"b"]
            assert await join(iter([b"a", b"b"]), timeout=2) == b"ab"
            assert [m async for m in each(iter([b"x"]), timeout=2)] == [b"X"]

    asyncio.run(main())


# -- the runner behind `devcluster client` ----------------------------------------------


def test_runner_prints_each_call_and_a_summary(servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([servers["server1"].record(weight=2), servers["server2"].record(),
                               Record("server3", "server", dead_address(), state=State.SERVING,
                                      pid=1, started_at=1.0)])
    console = Console(record=True, width=200, color_system=None, file=io.StringIO())
    summary = run_client(ClientOptions("server", count=7, interval=0, registry=registry),
                         console)
    text = console.export_text()
    assert re.search(r"^  1  server1  127\.0\.0\.1:\d+  \d+\.\d ms  Hello world-1 from server1$",
                     text, re.M)
    assert re.search(r"server3  127\.0\.0\.1:\d+  UNAVAILABLE  retried on server1", text)
    assert summary.calls == 7 and summary.failures == 0
    assert summary.instances["server3"].failures == 1
    assert summary.weights == {"server1": 2, "server2": 1, "server3": 1}
    assert "7 calls, 0 failed" in text


def test_runner_json_lines(registry: MemoryRegistry) -> None:
    console = Console(record=True, width=200, color_system=None, file=io.StringIO())
    run_client(ClientOptions("server", count=6, interval=0, registry=registry, json=True,
                             concurrency=3), console)
    lines = [json.loads(line) for line in console.export_text().splitlines()]
    calls, (last,) = lines[:-1], lines[-1:]
    assert sorted(c["seq"] for c in calls) == [1, 2, 3, 4, 5, 6]
    assert set(calls[0]) == {"seq", "instance", "address", "ok", "code", "latency_ms",
                             "retried", "message"}
    assert all(c["message"] == f"Hello world-{c['seq']} from {c['instance']}" for c in calls)
    summary = last["summary"]
    assert summary["calls"] == 6 and summary["failures"] == 0
    assert {n: s["calls"] for n, s in summary["instances"].items()} == {
        "server1": 2, "server2": 2, "server3": 2}
    assert summary["instances"]["server1"]["weight_share"] == pytest.approx(1 / 3, abs=1e-3)


def test_runner_reports_failures_and_stops_on_request(servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([servers["server1"].record(state=State.DRAINING)])
    console = Console(record=True, width=300, color_system=None, file=io.StringIO())
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    summary = run_client(ClientOptions("server", interval=0.05, timeout=0.1,
                                       registry=registry), console, stop)
    assert summary.calls >= 1 and summary.failures == summary.calls
    text = console.export_text()
    assert "  1  -    UNAVAILABLE  " in text
    assert "no usable instance of service 'server': server1 draining" in text
    assert summary.instances == {}  # no instance took part
