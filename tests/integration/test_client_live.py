"""The balancing client against real greeter processes and the real file registry.

The other half of the parametrized suite (tests/test_client_channel.py has the
in-process one): every test runs on BalancedChannel and on AioBalancedChannel.
Each test starts its own greeters (in parallel, on kernel-chosen ports), and its
fixture checks at teardown that no child process is left.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from devcluster.client import NoUsableInstanceError
from devcluster.registry.file import FileRegistry
from tests._clients import BOTH, Client, open_client
from tests._servers import Greeters, greeters_fixture, wait_for

pytestmark = BOTH

NAMES = ("server1", "server2", "server3")
RETRY = {grpc.StatusCode.UNAVAILABLE}


@pytest.fixture
def greeters(tmp_path: Path) -> Iterator[Greeters]:
    yield from greeters_fixture(tmp_path)


@pytest.fixture
def three(greeters: Greeters) -> Greeters:
    greeters.start_many(*NAMES)
    return greeters


def calls_go_on(client: Client, since: float, n: int = 50, name: str = "server1") -> None:
    wait_for(lambda: client.served(name, since) >= n, 5, f"calls on {name} go on")


@pytest.mark.parametrize("registry_update", ["later", "never"])
def test_sigkill_costs_no_call_and_a_restart_gets_calls_again(
        driver: str, three: Greeters, registry_update: str) -> None:
    # "never": the channel reads the registry without the liveness check, so
    # nothing but the client's own failover protects the caller.
    registry = FileRegistry(three.state_dir, check_liveness=registry_update == "later")
    with open_client(driver, "server", registry) as client, client.load():
        wait_for(lambda: client.served("server2") >= 20, 5, "calls on server2")
        three.kill("server2")
        killed_at = time.monotonic()
        if registry_update == "later":
            time.sleep(0.2)  # the supervisor's write lands a while after the crash
            three.registry.update("server2", state="killed")
        # Everyone else keeps getting calls; server2 none: the calls that hit the
        # dead process are retried (they show in `retried`, not as failures).
        calls_go_on(client, killed_at + 0.3)
        assert client.served("server2", killed_at + 0.05) == 0
        assert any(("server2", "UNAVAILABLE") in i.retried for i in client.infos)
        # The one call that can fail is the one server2 was running when it died:
        # its application had the call, so it is not repeated (gRPC's rule; pass
        # retry_on to repeat such calls). Rare: the kill must land inside it.
        failed = [(t, i) for t, i in client.calls if not i.ok]
        assert len(failed) <= 1
        for t, info in failed:
            assert (info.instance, info.code) == ("server2", "UNAVAILABLE")
            # It was already running when the kill landed (its start is its end less its
            # latency; 5 ms for the clocks' granularity), not a call sent afterwards.
            assert t - info.latency_ms / 1000 <= killed_at + 0.005

        three.restart("server2")  # same port, new pid, registered serving
        back_at = time.monotonic()
        wait_for(lambda: client.served("server2", back_at) > 0, 2, "server2 back")
        assert client.failed(back_at) == []


def test_sigkill_with_retry_on_unavailable_costs_not_a_single_call(
        driver: str, three: Greeters) -> None:
    # As `devcluster client` runs (SayHello is idempotent): even the call that was
    # running inside the dying server is repeated elsewhere. Killed twice, under a
    # tight loop, to give the kill every chance to land inside a call.
    with open_client(driver, "server", three.state_dir, retry_on=RETRY) as client, \
            client.load(pause=0):
        for _ in range(2):
            wait_for(lambda: client.served("server2", time.monotonic() - 0.05) > 0, 5,
                     "calls on server2")
            three.kill("server2")
            killed_at = time.monotonic()
            calls_go_on(client, killed_at + 0.1, 30)
            assert client.served("server2", killed_at + 0.05) == 0
            three.restart("server2")
        assert client.failed() == []


def test_a_graceful_stop_costs_no_call(driver: str, three: Greeters) -> None:
    # As `devcluster stop` does it: draining in the registry first, SIGTERM 100 ms later.
    with open_client(driver, "server", three.state_dir) as client, client.load():
        wait_for(lambda: client.served("server2") >= 20, 5, "calls on server2")
        three.registry.update("server2", state="draining")
        time.sleep(0.1)  # the supervisor's own pause between the write and the signal
        proc = three.procs["server2"].proc
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(5)
        stopped_at = time.monotonic()
        three.registry.update("server2", state="stopped")
        calls_go_on(client, stopped_at)
        assert client.served("server2", stopped_at) == 0
        three.restart("server2")
        back_at = time.monotonic()
        wait_for(lambda: client.served("server2", back_at) > 0, 2, "server2 back")
    assert client.failed() == []


def test_sigstop_costs_at_most_two_calls_then_ejected_until_sigcont(
        driver: str, three: Greeters) -> None:
    with open_client(driver, "server", three.state_dir) as client, client.load(timeout=1.0):
        wait_for(lambda: client.served("server3") >= 10, 5, "calls on server3")
        three.freeze("server3")
        frozen_at = time.monotonic()
        server3 = client.instance("server3")
        wait_for(lambda: server3.ejected, 5, "server3 ejected")
        ejected_at = time.monotonic()
        # The ejection happens just before the failed call is reported: wait for it.
        wait_for(lambda: len(client.failed()) >= 2, 1, "the second failure reported")
        assert [i.code for i in client.failed()] == ["DEADLINE_EXCEEDED"] * 2
        assert {i.instance for i in client.failed()} == {"server3"}
        calls_go_on(client, ejected_at, 100)
        assert client.sent_and_served("server3", frozen_at) == 0

        three.thaw("server3")  # the health probe finds it answering again
        thawed_at = time.monotonic()
        wait_for(lambda: client.served("server3", thawed_at) > 0, 8, "server3 back")
        back_at = time.monotonic()
        calls_go_on(client, back_at, 150)
        after = Counter(i.instance for t, i in client.calls if t > back_at + 0.01)
        assert abs(after["server3"] / sum(after.values()) - 1 / 3) <= 0.05, after
        assert len(client.failed()) == 2


def test_hedging_a_paused_instance_costs_no_call_with_8_in_flight(
        driver: str, three: Greeters) -> None:
    # Without hedging, each of the 8 calls in flight on the frozen instance when it
    # freezes would hit its deadline; hedged after 100 ms, each goes elsewhere too.
    with open_client(driver, "server", three.state_dir, retry_on=RETRY,
                     hedge_after=0.1) as client, client.load(concurrency=8, timeout=1.0):
        wait_for(lambda: client.served("server3") >= 20, 5, "calls on server3")
        three.freeze("server3")
        server3 = client.instance("server3")
        wait_for(lambda: server3.ejected, 5, "server3 ejected")
        ejected_at = time.monotonic()
        calls_go_on(client, ejected_at, 100)
        three.thaw("server3")
        thawed_at = time.monotonic()
        wait_for(lambda: client.served("server3", thawed_at) > 0, 8, "server3 back")
    assert client.failed() == []
    assert any(("server3", "DEADLINE_EXCEEDED") in i.retried for i in client.infos)


def test_no_usable_instance_is_a_clear_unavailable(driver: str, three: Greeters) -> None:
    three.registry.update_many({"server1": {"state": "killed"}, "server2": {"enabled": False},
                                "server3": {"weight": 0}})
    with open_client(driver, "server", three.state_dir) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.say(timeout=0.3)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert err.value.details() == ("no usable instance of service 'server': "
                                       "server1 killed, server2 disabled, server3 weight 0")
        assert isinstance(err.value, NoUsableInstanceError)
        # Turning one on again unblocks calls, live.
        three.registry.update("server3", weight=1)
        assert client.say() == ("Hello world from server3", "server3")


def test_the_instance_is_named_by_the_server_header(driver: str, greeters: Greeters) -> None:
    # Registered as "alias" but the process calls itself server1: the header wins.
    proc = greeters.spawn("server1")
    greeters.registry.register(greeters.record(proc, name="alias"))
    with open_client(driver, None, greeters.state_dir) as client:
        assert client.say() == ("Hello world from server1", "server1")
    (info,) = client.infos
    assert info.instance == "server1" and info.address == proc.address
