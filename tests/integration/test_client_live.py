"""The balancing client against real greeter processes and the real file registry.

Each test starts its own greeters (in parallel, on kernel-chosen ports), and its
fixture checks at teardown that no child process is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc
from devcluster.client import (
    AioBalancedChannel,
    BalancedChannel,
    CallInfo,
    NoUsableInstanceError,
    served_by,
)
from devcluster.registry.file import FileRegistry
from tests._servers import Greeters, greeters_fixture, wait_for

NAMES = ("server1", "server2", "server3")


@pytest.fixture
def greeters(tmp_path: Path) -> Iterator[Greeters]:
    yield from greeters_fixture(tmp_path)


@pytest.fixture
def three(greeters: Greeters) -> Greeters:
    greeters.start_many(*NAMES)
    return greeters


def req(name: str = "world") -> helloworld_pb2.HelloRequest:
    return helloworld_pb2.HelloRequest(name=name)


def shares(channel: grpc.Channel, n: int) -> Counter[str]:
    stub = helloworld_pb2_grpc.GreeterStub(channel)
    seen: Counter[str] = Counter()
    for _ in range(n):
        _, call = stub.SayHello.with_call(req(), timeout=2)
        seen[served_by(call) or "?"] += 1
    return seen


class Caller(threading.Thread):
    """Calls the greeter service back to back in a thread, recording every call."""

    def __init__(self, timeout: float = 1.0, pause: float = 0.001) -> None:
        super().__init__(daemon=True)
        self.timeout = timeout
        # ~1k calls/s by default: plenty to see, CPU left for the servers.
        self.pause = pause
        self.calls: list[tuple[float, CallInfo]] = []
        self.stop = threading.Event()
        self.channel: BalancedChannel | None = None

    def record(self, info: CallInfo) -> None:
        self.calls.append((time.monotonic(), info))

    def run(self) -> None:
        assert self.channel is not None
        stub = helloworld_pb2_grpc.GreeterStub(self.channel)
        while not self.stop.is_set():
            with contextlib.suppress(grpc.RpcError):  # recorded by on_call
                stub.SayHello(req(), timeout=self.timeout)
            if self.pause:
                self.stop.wait(self.pause)

    def __enter__(self) -> Caller:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(5)

    def served(self, name: str, after: float = 0.0) -> int:
        return sum(1 for t, i in list(self.calls) if i.ok and i.instance == name and t > after)

    def failed(self, after: float = 0.0) -> list[CallInfo]:
        return [i for t, i in list(self.calls) if not i.ok and t > after]


def test_shares_follow_weights_and_enabled_live(three: Greeters) -> None:
    registry = three.registry
    with BalancedChannel("server", three.state_dir) as channel:
        seen = shares(channel, 600)
        for name in NAMES:
            assert abs(seen[name] / 600 - 1 / 3) <= 0.02, seen
        registry.update("server1", weight=5)
        wait_for(lambda: channel.balancer.weights().get("server1") == 5, 2, "weight 5 seen")
        seen = shares(channel, 700)
        assert abs(seen["server1"] / 700 - 5 / 7) <= 0.02, seen
        registry.update("server2", enabled=False)
        wait_for(lambda: "server2" not in channel.balancer.weights(), 2, "server2 disabled")
        seen = shares(channel, 120)
        assert seen["server2"] == 0 and seen["server1"] == 100 and seen["server3"] == 20


@pytest.mark.parametrize("registry_update", ["later", "never"])
def test_sigkill_costs_no_call_and_a_restart_gets_calls_again(
        three: Greeters, registry_update: str) -> None:
    # "never": the channel reads the registry without the liveness check, so
    # nothing but the client's own failover protects the caller.
    registry = FileRegistry(three.state_dir, check_liveness=registry_update == "later")
    caller = Caller()
    caller.channel = BalancedChannel("server", registry, on_call=caller.record)
    with caller.channel, caller:
        wait_for(lambda: caller.served("server2") >= 20, 5, "calls on server2")
        three.kill("server2")
        killed_at = time.monotonic()
        if registry_update == "later":
            time.sleep(0.2)  # the supervisor's write lands a while after the crash
            three.registry.update("server2", state="killed")
        # Everyone else keeps getting calls; server2 none: the calls that hit the
        # dead process are retried (they show in `retried`, not as failures).
        wait_for(lambda: caller.served("server1", killed_at + 0.3) >= 50, 5, "calls go on")
        assert caller.served("server2", killed_at + 0.05) == 0
        assert any(("server2", "UNAVAILABLE") in i.retried for _, i in caller.calls)
        # The one call that can fail is the one server2 was running when it died:
        # its application had the call, so it is not repeated (gRPC's rule; pass
        # retry_on to repeat such calls). Rare: the kill must land inside it.
        failed = [(t, i) for t, i in caller.calls if not i.ok]
        assert len(failed) <= 1
        for t, info in failed:
            assert (info.instance, info.code) == ("server2", "UNAVAILABLE")
            assert t - killed_at < 0.1

        three.restart("server2")  # same port, new pid, registered serving
        back_at = time.monotonic()
        wait_for(lambda: caller.served("server2", back_at) > 0, 2, "server2 back")
        first = min(t for t, i in caller.calls if i.instance == "server2" and t > back_at)
        print(f"restarted instance got a call {1000 * (first - back_at):.1f} ms after "
              "its registry write")
        assert caller.failed(back_at) == []


def test_sigkill_with_retry_on_unavailable_costs_not_a_single_call(three: Greeters) -> None:
    # As `devcluster client` runs (SayHello is idempotent): even the call that was
    # running inside the dying server is repeated elsewhere. Killed twice, under a
    # tight loop, to give the kill every chance to land inside a call.
    caller = Caller(pause=0)
    caller.channel = BalancedChannel("server", three.state_dir, on_call=caller.record,
                                     retry_on={grpc.StatusCode.UNAVAILABLE})
    with caller.channel, caller:
        for _ in range(2):
            wait_for(lambda: caller.served("server2", time.monotonic() - 0.05) > 0, 5,
                     "calls on server2")
            three.kill("server2")
            killed_at = time.monotonic()
            wait_for(lambda since=killed_at + 0.1: caller.served("server1", since) >= 30, 5,
                     "calls go on")
            assert caller.served("server2", killed_at + 0.05) == 0
            three.restart("server2")
        assert caller.failed() == []


def test_sigstop_costs_at_most_two_calls_then_ejected_until_sigcont(three: Greeters) -> None:
    caller = Caller(timeout=1.0)
    caller.channel = BalancedChannel("server", three.state_dir, on_call=caller.record)
    with caller.channel, caller:
        wait_for(lambda: caller.served("server3") >= 10, 5, "calls on server3")
        three.freeze("server3")
        frozen_at = time.monotonic()
        server3 = next(i for i in caller.channel.instances() if i.name == "server3")
        wait_for(lambda: server3.ejected, 5, "server3 ejected")
        ejected_at = time.monotonic()
        # The ejection happens just before the failed call is reported: wait for it.
        wait_for(lambda: len(caller.failed()) >= 2, 1, "the second failure reported")
        assert [i.code for i in caller.failed()] == ["DEADLINE_EXCEEDED"] * 2
        assert {i.instance for i in caller.failed()} == {"server3"}
        wait_for(lambda: caller.served("server1", ejected_at) >= 100, 5, "calls go on")
        assert caller.served("server3", frozen_at) == 0

        three.thaw("server3")
        thawed_at = time.monotonic()
        wait_for(lambda: caller.served("server3", thawed_at) > 0, 8, "server3 back")
        back_at = time.monotonic()
        print(f"hung instance ejected {ejected_at - frozen_at:.2f} s after SIGSTOP, "
              f"back {back_at - thawed_at:.2f} s after SIGCONT")
        wait_for(lambda: caller.served("server1", back_at) >= 150, 5, "calls after")
        after = Counter(i.instance for t, i in caller.calls if t > back_at + 0.01)
        total = sum(after.values())
        assert abs(after["server3"] / total - 1 / 3) <= 0.05, after
        assert len(caller.failed()) == 2


def test_no_usable_instance_is_a_clear_unavailable(three: Greeters) -> None:
    three.registry.update_many({"server1": {"state": "killed"}, "server2": {"enabled": False},
                                "server3": {"weight": 0}})
    with BalancedChannel("server", three.state_dir) as channel:
        with pytest.raises(grpc.RpcError) as err:
            helloworld_pb2_grpc.GreeterStub(channel).SayHello(req(), timeout=0.3)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert err.value.details() == ("no usable instance of service 'server': "
                                       "server1 killed, server2 disabled, server3 weight 0")
        assert isinstance(err.value, NoUsableInstanceError)
        # Turning one on again unblocks calls, live.
        three.registry.update("server3", weight=1)
        reply = helloworld_pb2_grpc.GreeterStub(channel).SayHello(req(), timeout=2)
        assert reply.message == "Hello world from server3"


def test_the_instance_is_named_by_the_server_header(greeters: Greeters) -> None:
    # Registered as "alias" but the process calls itself server1: the header wins.
    proc = greeters.spawn("server1")
    greeters.registry.register(greeters.record(proc, name="alias"))
    infos: list[CallInfo] = []
    with BalancedChannel(None, greeters.state_dir, on_call=infos.append) as channel:
        reply, call = helloworld_pb2_grpc.GreeterStub(channel).SayHello.with_call(
            req(), timeout=2)
    assert served_by(call) == "server1" and call.instance == "alias"
    assert infos[0].instance == "server1" and infos[0].address == proc.address
    assert reply.message == "Hello world from server1"


def test_aio_channel_balances_and_fails_over(three: Greeters) -> None:
    infos: list[CallInfo] = []

    async def main() -> tuple[Counter[str], list[str]]:
        async with AioBalancedChannel("server", three.state_dir,
                                      on_call=infos.append) as channel:
            stub = helloworld_pb2_grpc.GreeterStub(channel)
            first = Counter()
            for _ in range(30):
                call = stub.SayHello(req(), timeout=2)
                await call
                first[header := (await call.initial_metadata())["devcluster-instance"]] += 1
                assert call.instance == header
            three.kill("server2")
            failed = []

            async def one(i: int) -> None:
                try:
                    await stub.SayHello(req(f"c{i}"), timeout=2)
                except grpc.RpcError as e:
                    failed.append(e.code().name)

            # 16 in flight at a time, 300 calls, the dead instance among the targets.
            for batch in range(0, 300, 16):
                await asyncio.gather(*(one(i) for i in range(batch, batch + 16)))
            return first, failed

    first, failed = asyncio.run(main())
    assert first == {"server1": 10, "server2": 10, "server3": 10}
    assert failed == []
    late = [i for i in infos[30:]]
    assert any(("server2", "UNAVAILABLE") in i.retried for i in late)
    assert Counter(i.instance for i in late[-100:])["server2"] == 0
