"""Unmodified grpcio clients of ``xds:///greeter`` follow the registry through our ADS server.

Real greeter processes registered in a FileRegistry, the ADS server in this process (a
thread), and each client in a subprocess with ``GRPC_XDS_BOOTSTRAP`` in its environment.
"""

from __future__ import annotations

import statistics
import time

import pytest

from tests._servers import wait_for

pytestmark = pytest.mark.timeout(90)


def test_weights_5_1_1_give_shares_of_5_7_and_1_7(greeters, make_client):
    greeters.start_many("greeter.1", "greeter.2", "greeter.3")
    greeters.registry.update("greeter.1", weight=5)
    client = make_client()
    # The client may have started before the weight reached it: wait until it has.
    client.ask(op="start")
    client.ask(op="await", present="greeter.1", since=time.time(), timeout=10)
    client.ask(op="stop")
    out = client.ask(op="count", n=1400)
    assert out["errors"] == {}
    shares = {name: n / out["calls"] for name, n in out["counts"].items()}
    print("shares", shares)
    assert abs(shares["greeter.1"] - 5 / 7) < 0.05
    assert abs(shares["greeter.2"] - 1 / 7) < 0.04
    assert abs(shares["greeter.3"] - 1 / 7) < 0.04


def lost(errors: dict[str, int]) -> dict[str, int]:
    """The failed calls that had not reached a server: a SIGKILL may fail the others (gRFC A6)."""
    return {code: n for code, n in errors.items() if not code.endswith("_AFTER_HEADERS")}


def _await(client, **cmd):
    out = client.ask(op="await", **cmd)
    assert "ms" in out, f"timed out: {out}"
    return out["ms"]


def test_weight_changes_follow_within_milliseconds(greeters, make_client):
    greeters.start_many("greeter.1", "greeter.2", "greeter.3")
    client = make_client()
    out = client.ask(op="count", n=600)
    assert out["errors"] == {} and set(out["counts"]) == {"greeter.1", "greeter.2", "greeter.3"}
    client.ask(op="start")
    gone, back = [], []
    for _ in range(10):  # registry write -> the client's picks, both ways
        since = time.time()
        greeters.registry.update("greeter.3", weight=0)
        gone.append(_await(client, absent="greeter.3", since=since, k=50))
        since = time.time()
        greeters.registry.update("greeter.3", weight=1)
        back.append(_await(client, present="greeter.3", since=since))
    out = client.ask(op="stop")
    assert out["errors"] == {}
    print(f"weight 0 -> out in {statistics.median(gone):.1f} ms (max {max(gone):.1f}); "
          f"weight 1 -> back in {statistics.median(back):.1f} ms (max {max(back):.1f}); "
          f"{out['calls']} calls, no error")
    greeters.registry.update("greeter.2", weight=5)
    client.ask(op="start")
    _await(client, present="greeter.2", since=time.time())  # any later call sees weight 5
    client.ask(op="stop")
    out = client.ask(op="count", n=1400)
    share = out["counts"]["greeter.2"] / out["calls"]
    print(f"greeter.2 at weight 5 of 7: {share:.3f}")
    assert out["errors"] == {} and abs(share - 5 / 7) < 0.05


def test_draining_and_stopped_take_an_instance_out_without_a_failed_call(greeters, make_client):
    greeters.start_many("greeter.1", "greeter.2", "greeter.3")
    client = make_client()
    client.ask(op="count", n=30)
    client.ask(op="start")
    since = time.time()
    greeters.registry.update("greeter.2", state="draining")
    drained_ms = _await(client, absent="greeter.2", since=since, k=50)
    greeters.kill("greeter.2", state="stopped")
    since = time.time()
    greeters.registry.update("greeter.3", state="stopped")  # still running: stopped is enough
    stopped_ms = _await(client, absent="greeter.3", since=since, k=50)
    greeters.kill("greeter.3")
    _await(client, present="greeter.1", since=time.time(), k=50)
    out = client.ask(op="stop")
    print(f"draining -> out in {drained_ms:.1f} ms, stopped -> out in {stopped_ms:.1f} ms; "
          f"{out['calls']} calls, errors {out['errors']}")
    assert out["errors"] == {}


def test_sigkill_loses_no_call_and_a_restart_comes_back_at_once(greeters, make_client):
    greeters.start_many("greeter.1", "greeter.2", "greeter.3")
    client = make_client()
    client.ask(op="count", n=30)
    client.ask(op="start")
    _await(client, present="greeter.2", since=time.time())
    old_pid = greeters.procs["greeter.2"].pid
    since = time.time()
    greeters.kill("greeter.2")  # a crash the registry does not know of yet: the client's
    # picks and the route's retry policy (UNAVAILABLE) keep every call whole meanwhile
    _await(client, absent="greeter.2", since=since, k=200)
    assert lost(client.ask(op="stop")["errors"]) == {}
    client.ask(op="start")
    greeters.registry.update("greeter.2", state="killed")
    old_port = greeters.procs["greeter.2"].port
    new = greeters.spawn("greeter.2", old_port)  # a restart: same port, new pid
    assert new.pid != old_pid
    since = time.time()
    greeters.registry.register(greeters.record(new))
    back_ms = _await(client, present="greeter.2", since=since)
    out = client.ask(op="stop")
    print(f"restart -> back in {back_ms:.1f} ms after it was registered; {out['calls']} calls, "
          f"errors {out['errors']}")
    assert lost(out["errors"]) == {}
    assert back_ms < 1500, "a restarted instance waited out the client's reconnect backoff"


def test_a_fault_set_on_the_running_server_reaches_the_client_and_clears(greeters, xds,
                                                                          make_client):
    from devcluster.xds.resources import Fault, Options

    greeters.start_many("greeter.1", "greeter.2")
    client = make_client()
    assert client.ask(op="count", n=20)["errors"] == {}
    # PERMISSION_DENIED (7): not a code the route retries, so every abort shows.
    xds.server.set_options(Options(faults={"greeter": Fault(abort_code=7, abort_percent=50)}))
    client.ask(op="start")
    reached_ms = _await(client, present="PERMISSION_DENIED", since=time.time())
    client.ask(op="stop")
    out = client.ask(op="count", n=400)
    denied = out["errors"].get("PERMISSION_DENIED", 0) / out["calls"]
    print(f"abort 50 % reached the client in {reached_ms:.1f} ms; aborted share {denied:.3f}")
    assert 0.40 < denied < 0.60 and set(out["errors"]) == {"PERMISSION_DENIED"}

    def seconds(n: int, strict: bool = True) -> float:
        """How long ``n`` calls took (``inf`` if one failed while the last fault lingers)."""
        start = time.monotonic()
        errors = client.ask(op="count", n=n)["errors"]
        assert not (strict and errors), errors
        return float("inf") if errors else time.monotonic() - start

    xds.server.set_options(Options(faults={"greeter": Fault(delay_s=0.2, delay_percent=100)}))
    wait_for(lambda: 0.2 <= seconds(1, strict=False) < float("inf"), 10,
             "a call delayed by the fault (the abort gone)")
    assert seconds(3) >= 0.6, "every call delayed 0.2 s"
    xds.server.set_options(Options())
    wait_for(lambda: seconds(1) < 0.1, 10, "calls without the delay")
    assert client.ask(op="count", n=50)["errors"] == {}


def test_sigkills_under_concurrent_calls_lose_no_call_thanks_to_the_retry_policy(
        greeters, make_client):
    """8 callers at once, 4 SIGKILLs the registry is not told of, then restarts.

    Measured without the route's retry policy (``Options(retry=None)``): 15-20 calls in
    ~320 failed UNAVAILABLE before any response header; with it: none. A call whose response
    headers had arrived (the greeter sends them first) is committed and not retried (gRFC
    A6), as in the balanced client: 0-2 such calls in ~300 here, so they are allowed.
    """
    names = [f"greeter.{i}" for i in range(1, 4)]
    greeters.start_many(*names)
    client = make_client()
    client.ask(op="count", n=30)
    errors: dict[str, int] = {}
    details: list[str] = []
    calls = 0
    for round_ in range(4):
        victim = names[round_ % 3]
        client.ask(op="start", threads=8)
        _await(client, present=victim, since=time.time())
        port = greeters.procs[victim].port
        greeters.kill(victim)
        _await(client, absent=victim, since=time.time(), k=40)
        out = client.ask(op="stop")
        for code, n in out["errors"].items():
            errors[code] = errors.get(code, 0) + n
        details += out["details"]
        calls += out["calls"]
        greeters.registry.register(greeters.record(greeters.spawn(victim, port)))
        client.ask(op="start")
        _await(client, present=victim, since=time.time())
        client.ask(op="stop")
    print(f"4 SIGKILLs under 8 concurrent callers: {calls} calls, errors {errors} {details}")
    assert lost(errors) == {}, details


def test_outlier_detection_ejects_a_frozen_instance_the_registry_still_advertises(
        greeters, make_client):
    """SIGSTOP: the process keeps its socket, the registry keeps it serving; its calls time
    out until outlier detection (gRFC A50: interval 1 s, 2 calls, 50 % failed) ejects it."""
    greeters.start_many("greeter.1", "greeter.2", "greeter.3")
    client = make_client()
    client.ask(op="count", n=30)
    client.ask(op="start", threads=4, timeout=0.3)
    since = time.time()
    greeters.freeze("greeter.2")
    # Ejected: a long run of calls with no deadline exceeded (and none on greeter.2).
    ejected_ms = _await(client, absent="DEADLINE_EXCEEDED", since=since, k=300, timeout=20)
    out = client.ask(op="stop")
    print(f"frozen greeter.2 ejected {ejected_ms:.0f} ms after SIGSTOP; {out['calls']} calls, "
          f"errors {out['errors']}")
    assert ejected_ms < 5000
    # Only calls to the frozen one failed (some froze after its response headers).
    assert all(code.startswith("DEADLINE_EXCEEDED") for code in out["errors"]), out["errors"]
    # (Ejected for 1 s, then 2 s...: a later call may try it again and be ejected again.)
    greeters.thaw("greeter.2")


def test_a_fault_on_one_instance_hits_only_its_calls_and_keeps_the_weights(greeters, make_client):
    """The route splits while one instance has a fault: its share of the calls (its weight
    over the routed total) is aborted, the others' calls are untouched, and clearing the
    fault brings back one cluster."""
    from devcluster.registry.faults import Fault

    greeters.start_many("greeter.1", "greeter.2", "greeter.3")
    greeters.registry.update("greeter.1", weight=2)
    client = make_client()
    assert client.ask(op="count", n=20)["errors"] == {}
    greeters.registry.update("greeter.2", fault=Fault(abort_code=7, abort_percent=100))
    client.ask(op="start")
    _await(client, present="PERMISSION_DENIED", since=time.time())
    client.ask(op="stop")
    out = client.ask(op="count", n=800)
    denied = out["errors"].get("PERMISSION_DENIED", 0) / out["calls"]
    print(f"aborted share {denied:.3f} (greeter.2's weight: 1/4); served {out['counts']}")
    assert abs(denied - 1 / 4) < 0.05 and set(out["errors"]) == {"PERMISSION_DENIED"}
    assert "greeter.2" not in out["counts"]  # its calls are the aborted ones
    assert abs(out["counts"]["greeter.1"] / out["calls"] - 2 / 4) < 0.05
    greeters.registry.update("greeter.2", fault=None)
    wait_for(lambda: client.ask(op="count", n=20)["errors"] == {}, 10, "the fault cleared")
    assert "greeter.2" in client.ask(op="count", n=40)["counts"]


def test_the_server_knows_when_every_stream_acked_a_draining(greeters, xds, make_client):
    """A stop waits on XdsServer.lagging (devcluster.supervisor.drain): a real grpcio
    client ACKs the update that drains an instance, and the server counts it caught up."""
    greeters.start_many("greeter.1", "greeter.2")
    server = xds.server
    assert server.lagging(greeters.registry.snapshot().revision) == (0, 0)  # nobody watches
    client = make_client()
    client.ask(op="count", n=20)
    client.ask(op="start")
    now = greeters.registry.snapshot().revision
    wait_for(lambda: server.lagging(now) == (1, 0), 5, "the client's stream ACKed")
    since = time.time()
    drained = greeters.registry.update_many({"greeter.2": {"state": "draining"}}).revision
    began = time.monotonic()
    wait_for(lambda: server.lagging(drained) == (1, 0), 5, "the draining ACKed")
    acked_ms = 1000 * (time.monotonic() - began)
    # The ACK means the client routes by it: no call goes to greeter.2 from here on.
    _await(client, absent="greeter.2", since=since, k=20)
    assert client.ask(op="stop")["errors"] == {}
    print(f"draining ACKed by the grpcio client in {acked_ms:.1f} ms")
    assert acked_ms < 1000
    assert server.lagging(drained + 1)[1] == 1  # a revision the server has not seen
    assert server.lagging(None) == (1, 1)
