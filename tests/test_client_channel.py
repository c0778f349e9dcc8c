"""The balancing client's behaviour, on both drivers, against in-process grpc servers.

Half of the parametrized suite (the other half, with killed, stopped and frozen
processes, is tests/integration/test_client_live.py): every test runs once on
BalancedChannel and once on AioBalancedChannel through tests/_clients.py. Real
grpc on both sides (no mocks); the registry is the in-memory one, so these are fast.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from devcluster.client import NoUsableInstanceError
from devcluster.errors import DevclusterError
from devcluster.registry.record import Record, State
from tests._clients import BOTH, open_client
from tests._servers import (
    ABORT_HEADER,
    LocalServer,
    MemoryRegistry,
    dead_address,
    local_servers,
    wait_for,
)

pytestmark = BOTH


@pytest.fixture
def servers() -> Iterator[dict[str, LocalServer]]:
    with local_servers("server1", "server2", "server3") as found:
        yield found


@pytest.fixture
def registry(servers: dict[str, LocalServer]) -> MemoryRegistry:
    return MemoryRegistry(s.record() for s in servers.values())


def ghost() -> Record:
    """A serving record of a process that is gone: nothing listens at its address."""
    return Record("ghost", "server", dead_address(), state=State.SERVING, pid=1, started_at=1.0)


def test_generated_stubs_work_unchanged(driver: str, registry: MemoryRegistry) -> None:
    with open_client(driver, "server", registry) as client:
        assert client.say() == ("Hello world from server1", "server1")


def test_weights_give_exact_shares_in_smooth_order(driver: str, registry: MemoryRegistry) -> None:
    with open_client(driver, "server", registry) as client:
        assert client.shares(30) == {"server1": 10, "server2": 10, "server3": 10}
        registry.update("server1", weight=5)
        wait_for(lambda: client.channel.balancer.weights()["server1"] == 5, 2, "weight 5")
        order = "".join(name[-1] for name in client.order(70))
        # nginx's smooth WRR: 5:1:1 never gives more than 4 of one in a row.
        assert {n: order.count(n) for n in "123"} == {"1": 50, "2": 10, "3": 10}
        assert "11111" not in order


def test_shares_follow_reweight_disable_and_weight_0_live(
        driver: str, registry: MemoryRegistry) -> None:
    registry.update("server1", weight=5)
    with open_client(driver, "server", registry) as client:
        assert client.shares(70) == {"server1": 50, "server2": 10, "server3": 10}
        registry.update("server2", enabled=False)
        registry.update("server3", weight=0)
        wait_for(lambda: client.channel.balancer.weights() == {"server1": 5}, 2, "the new view")
        assert client.shares(10) == {"server1": 10}
        registry.update("server2", enabled=True)
        wait_for(lambda: "server2" in client.channel.balancer.weights(), 2, "server2 back")
        assert client.shares(12) == {"server1": 10, "server2": 2}


@pytest.mark.parametrize(("policy", "expected"), [
    ("round_robin", {"server1": 4, "server2": 4, "server3": 4}),
    ("pick_first", {"server1": 12}),
])
def test_policies(driver: str, registry: MemoryRegistry, policy: str,
                  expected: dict[str, int]) -> None:
    registry.update("server1", weight=5)
    with open_client(driver, "server", registry, policy=policy) as client:
        assert client.shares(12) == expected


def test_service_filter_and_every_service(driver: str, servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([servers["server1"].record("server"),
                               servers["server2"].record("other")])
    with open_client(driver, "other", registry) as client:
        assert client.shares(4) == {"server2": 4}
    with open_client(driver, None, registry) as client:
        assert client.shares(4) == {"server1": 2, "server2": 2}


def test_on_call_for_all_four_call_shapes(driver: str, registry: MemoryRegistry) -> None:
    with open_client(driver, "server", registry) as client:
        reply, _ = client.say()
        assert client.streams() == ([b"a", b"b", b"c"], b"ab", [b"A", b"B"])
        # A stream is reported when it ends, which may be just after its last message.
        wait_for(lambda: len(client.infos) == 4, 2, "four CallInfos")
    unary, *streams = client.infos
    assert unary.ok and unary.code == "OK" and unary.retried == [] and unary.seq == 1
    assert unary.instance == "server1" and unary.address == registry.get("server1").address
    assert unary.response.message == reply and unary.latency_ms > 0
    assert unary.to_dict()["instance"] == "server1"
    assert [(i.instance, i.ok, i.code) for i in streams] == [
        ("server2", True, "OK"), ("server3", True, "OK"), ("server1", True, "OK")]
    assert sorted(i.seq for i in client.infos) == [1, 2, 3, 4]


def test_a_dead_address_costs_no_failed_call_and_is_ejected(
        driver: str, servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([servers["server1"].record(), ghost(), servers["server2"].record()])
    with open_client(driver, "server", registry) as client:
        assert set(client.shares(12)) == {"server1", "server2"}  # raises on any failed call
        # Failover goes to the next instance in name order.
        assert [(i.retried, i.instance) for i in client.infos if i.retried] == [
            ([("ghost", "UNAVAILABLE")], "server1")]
        assert client.instance("ghost").ejected == "unreachable"


def test_a_stream_to_a_dead_address_ejects_it(driver: str,
                                              servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([ghost(), servers["server1"].record()])
    with open_client(driver, "server", registry) as client:
        with pytest.raises(grpc.RpcError):
            client.streams()  # the first stream goes to the ghost: streams never fail over
        wait_for(lambda: client.instance("ghost").ejected, 2, "ghost ejected")
        # The report follows the ejection on the same worker: wait for it too, or (on a
        # busy machine) the next streams' reports can come first.
        wait_for(lambda: len(client.infos) == 1, 2, "the ghost's stream reported")
        assert client.streams() == ([b"a", b"b", b"c"], b"ab", [b"A", b"B"])
        wait_for(lambda: len(client.infos) == 4, 2, "every stream reported")
    assert [(i.instance, i.code) for i in client.infos] == [
        ("ghost", "UNAVAILABLE"), ("server1", "OK"), ("server1", "OK"), ("server1", "OK")]


def test_errors_from_the_server_are_not_retried_unless_retry_on(
        driver: str, registry: MemoryRegistry, servers: dict[str, LocalServer]) -> None:
    abort = ((ABORT_HEADER, "UNAVAILABLE"),)
    with open_client(driver, "server", registry) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.say(metadata=abort)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert sum(s.greeter.calls for s in servers.values()) == 1
        # The server answered, so it is not ejected.
        assert all(i.ejected is None for i in client.channel.instances())
    with open_client(driver, "server", registry, retry_on={grpc.StatusCode.UNAVAILABLE}) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.say(metadata=abort)
        # Tried on every instance once, then the last error stands.
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert [s.greeter.calls for s in servers.values()] == [2, 1, 1]
    (info,) = client.infos
    assert info.retried == [("server1", "UNAVAILABLE"), ("server2", "UNAVAILABLE")]
    assert (info.instance, info.message) == ("server3", "server3 aborts as asked")


def test_no_usable_instance_names_every_instance_and_why(
        driver: str, servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([
        servers["server1"].record(state=State.KILLED),
        servers["server2"].record(enabled=False),
        servers["server3"].record(weight=0),
    ])
    with open_client(driver, "server", registry) as client:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            client.say(timeout=0.3)
        waited = time.monotonic() - started
    assert 0.25 < waited < 2
    error = err.value
    assert isinstance(error, NoUsableInstanceError) and isinstance(error, DevclusterError)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert error.details() == ("no usable instance of service 'server': server1 killed, "
                               "server2 disabled, server3 weight 0")
    (info,) = client.infos
    assert (info.instance, info.code, info.message) == ("-", "UNAVAILABLE", error.details())


def test_a_call_waits_for_an_instance_to_appear(driver: str,
                                                servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([servers["server1"].record(state=State.STARTING)])
    with open_client(driver, "server", registry, default_wait=5) as client:
        timer = threading.Timer(0.2, registry.update, ("server1",), {"state": "serving"})
        timer.start()
        try:
            assert client.say(timeout=None)[0] == "Hello world from server1"  # no deadline
        finally:
            timer.join()


def test_an_empty_registry_says_so(driver: str) -> None:
    with (open_client(driver, "server", MemoryRegistry(), default_wait=0.1) as client,
          pytest.raises(NoUsableInstanceError, match="the registry lists none")):
        client.say(timeout=None)


def test_a_slow_instance_is_ejected_after_two_timeouts_and_probed_back(
        driver: str, registry: MemoryRegistry, servers: dict[str, LocalServer]) -> None:
    servers["server2"].greeter.delay = 0.5
    with open_client(driver, "server", registry) as client:
        codes = []
        for _ in range(12):
            try:
                client.say(timeout=0.1)
                codes.append("OK")
            except grpc.RpcError as e:
                codes.append(e.code().name)
        assert codes.count("DEADLINE_EXCEEDED") == 2
        server2 = client.instance("server2")
        assert server2.ejected == "hung (2 calls in a row timed out)"
        # Its health service answers, so the probe brings it back.
        servers["server2"].greeter.delay = 0
        wait_for(lambda: server2.ejected is None, 3, "server2 readmitted")
        assert client.shares(3) == {"server1": 1, "server2": 1, "server3": 1}


def test_only_timeouts_in_a_row_eject(driver: str, servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([servers["server1"].record(), servers["server2"].record()])
    slow = servers["server2"].greeter
    with open_client(driver, "server", registry) as client:
        server2 = client.instance("server2")

        def pair(delay: float) -> str:
            client.say(timeout=1)  # server1
            slow.delay = delay
            try:
                client.say(timeout=0.1)  # server2
                return "OK"
            except grpc.RpcError as e:
                return e.code().name

        assert pair(0.3) == "DEADLINE_EXCEEDED"
        assert pair(0) == "OK"  # an answer ends the streak...
        assert pair(0.3) == "DEADLINE_EXCEEDED"
        assert server2.ejected is None  # ...so this is one in a row, not two
        assert pair(0.3) == "DEADLINE_EXCEEDED"
        assert server2.ejected == "hung (2 calls in a row timed out)"


def test_the_last_usable_instance_is_never_ejected(driver: str,
                                                   servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([servers["server1"].record()])
    servers["server1"].greeter.delay = 0.3
    with open_client(driver, "server", registry) as client:
        for _ in range(3):
            with pytest.raises(grpc.RpcError):
                client.say(timeout=0.05)
        assert client.instance("server1").ejected is None
        servers["server1"].greeter.delay = 0
        assert client.say()[1] == "server1"


def test_hedge_after_sends_a_slow_call_to_a_second_instance_too(
        driver: str, registry: MemoryRegistry, servers: dict[str, LocalServer]) -> None:
    servers["server2"].greeter.delay = 1.0
    with open_client(driver, "server", registry, hedge_after=0.05) as client:
        assert client.shares(6, timeout=2) == {"server1": 2, "server3": 4}  # no call failed
        hedged = [i.retried for i in client.infos if i.retried]
        assert hedged == [[("server2", "DEADLINE_EXCEEDED")]] * 2
        assert client.instance("server2").ejected == "hung (2 calls in a row unanswered)"


def test_a_restart_gets_a_fresh_sub_channel(driver: str, registry: MemoryRegistry) -> None:
    with open_client(driver, "server", registry) as client:
        before = {i.name: i for i in client.channel.instances()}
        registry.update("server2", pid=424242, started_at=2.0)
        wait_for(lambda: client.instance("server2") is not before["server2"], 2, "a new server2")
        assert client.instance("server1") is before["server1"]
        assert before["server2"].retired
        assert client.shares(3) == {"server1": 1, "server2": 1, "server3": 1}
