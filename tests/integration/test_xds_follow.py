"""Unmodified xDS clients follow every verb of a real cluster (issue 27, "Done when").

A real supervisor (the Cluster API, port 0) serves xDS; a grpcio client
(tests/xds/_xds_client.py) and a grpc-js-xds client (examples/node-xds-client) dial
``xds:///greeter`` with the cluster's bootstrap and nothing of devcluster in them. Each
test shares one cluster of three greeters across its steps; every step starts from
three serving instances of weight 1 and leaves them so.

Shares are drawn at random per call by grpc (weighted_target, weighted clusters), so
the bounds are about 3.5 standard deviations of a binomial share: 5 pp at 1000 calls
of weight 5/7, 8 pp at 450 calls of an abort on 1/3 (measured: within 2 pp and 4 pp).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devcluster.api import Cluster
from tests._servers import wait_for
from tests._xds import NodeClient, XdsClient, lost, node_modules

GREETER = "python -m devcluster.greeter --port $PORT"
NAMES = ("greeter.1", "greeter.2", "greeter.3")

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster], tmp_path: Path) -> Cluster:
    """Three greeters whose checks find a hung one fast (0.2 s x 2 misses)."""
    (tmp_path / "devcluster.toml").write_text(
        "[process.greeter]\nhealth_period = 0.2\nhealth_failures = 2\n")
    made: Cluster = make_cluster([f"greeter: {GREETER}"], scale={"greeter": 3})
    return made


@contextlib.contextmanager
def grpcio_client(cluster: Cluster, tmp_path: Path) -> Iterator[XdsClient]:
    client = XdsClient(cluster.xds().bootstrap, tmp_path / "xds-client.log")
    try:
        assert client.ask(op="count", n=30)["errors"] == {}
        yield client
    finally:
        client.close()


def shares(out: dict[str, object]) -> dict[str, float]:
    counts, calls = out["counts"], out["calls"]
    assert isinstance(counts, dict) and isinstance(calls, int)
    return {name: counts.get(name, 0) / calls for name in NAMES}


def all_back(cluster: Cluster, client: XdsClient, name: str) -> None:
    """``name`` serves again and the client's calls reach it."""
    wait_for(lambda: cluster.registry.get(name).state == "serving", 10, f"{name} serving")
    client.ask(op="start")
    client.wait(present=name, since=time.time())
    client.ask(op="stop")


# -- the steps, each on a client that already called all three ---------------------

def assert_5_1_1(out: dict[str, object], who: str) -> None:
    """No failed call, and shares within 5 pp of 5/7, 1/7, 1/7 (grpc picks at random)."""
    got = shares(out)
    print(f"{who}, weights 5:1:1 over {out['calls']} calls: {got}")
    assert out["errors"] == {}
    for name, want in zip(NAMES, (5 / 7, 1 / 7, 1 / 7), strict=True):
        assert abs(got[name] - want) < 0.05, (name, got)


def weights_5_1_1(cluster: Cluster, client: XdsClient) -> None:
    cluster.weight("greeter.1", 5)
    client.ask(op="start")
    client.wait(present="greeter.1", since=time.time())  # a later call sees the weight
    client.ask(op="stop")
    assert_5_1_1(client.ask(op="count", n=1000), "grpcio")
    cluster.weight("greeter.1", 1)


def stop_loses_no_call(cluster: Cluster, client: XdsClient) -> None:
    client.ask(op="start", threads=4)
    since = time.time()
    cluster.stop("greeter.2")  # drains, then SIGINT: DRAINING, then UNHEALTHY
    out_ms = client.wait(absent="greeter.2", since=since, k=50)
    out = client.ask(op="stop")
    print(f"stop: out of rotation {out_ms:.0f} ms after; {out['calls']} calls, "
          f"errors {out['errors']}")
    assert out["errors"] == {}, out["details"]
    cluster.start("greeter.2")
    all_back(cluster, client, "greeter.2")


def sigkill_loses_no_call(cluster: Cluster, client: XdsClient) -> None:
    client.ask(op="start", threads=8)
    client.wait(present="greeter.3", since=time.time())
    since = time.time()
    cluster.kill("greeter.3")  # SIGKILL: the route's retry policy covers the lost calls
    out_ms = client.wait(absent="greeter.3", since=since, k=100)
    out = client.ask(op="stop")
    print(f"SIGKILL: out of rotation {out_ms:.0f} ms after; {out['calls']} calls, "
          f"errors {out['errors']}")
    # A call whose response headers had arrived was committed: never retried (gRFC A6).
    assert lost(out["errors"]) == {}, out["details"]
    assert sum(out["errors"].values()) <= 3, out["details"]
    cluster.start("greeter.3")  # a new process: a new locality, no reconnect backoff
    all_back(cluster, client, "greeter.3")


def pause_is_routed_around(cluster: Cluster, client: XdsClient) -> None:
    # One call at a time with a 1 s deadline: each call to the paused one costs 1 s.
    client.ask(op="start", timeout=1.0)
    client.wait(present="greeter.2", since=time.time())
    since = time.time()
    cluster.pause("greeter.2")  # not announced: the health checks find it (0.2 s x 2)
    out_ms = client.wait(absent="DEADLINE_EXCEEDED", since=since, k=100)
    out = client.ask(op="stop")
    print(f"pause: last failed call ended {out_ms:.0f} ms after; {out['calls']} calls, "
          f"errors {out['errors']}")
    assert out_ms < 2500, "the paused instance kept getting calls"
    assert set(out["errors"]) <= {"DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED_AFTER_HEADERS"}
    assert sum(out["errors"].values()) <= 3, out["details"]
    assert cluster.registry.get("greeter.2").state == "unhealthy"
    cluster.resume("greeter.2")
    all_back(cluster, client, "greeter.2")


def reload_all_loses_no_call(cluster: Cluster, client: XdsClient) -> None:
    pids = {i.name: i.pid for i in cluster.ps()}
    client.ask(op="start", threads=4)
    cluster.reload(all=True)
    client.wait(present="greeter.3", since=time.time())  # the last replaced serves calls
    out = client.ask(op="stop")
    print(f"reload --all: {out['calls']} calls, errors {out['errors']}, served {out['counts']}")
    assert out["errors"] == {}, out["details"]
    assert all(i.pid != pids[i.name] for i in cluster.ps()), "every instance replaced"


def fault_on_one_instance(cluster: Cluster, client: XdsClient) -> None:
    with cluster.fault("greeter.2", abort="PERMISSION_DENIED:100"):
        client.ask(op="start")
        client.wait(present="PERMISSION_DENIED", since=time.time())
        client.ask(op="stop")
        out = client.ask(op="count", n=600)
    denied = out["errors"].get("PERMISSION_DENIED", 0) / out["calls"]
    print(f"abort 100% on greeter.2 of 3: {denied:.3f} denied; served {out['counts']}")
    assert set(out["errors"]) == {"PERMISSION_DENIED"} and abs(denied - 1 / 3) < 0.08
    assert "greeter.2" not in out["counts"], "an aborted call reached the instance"
    # Cleared on leaving the block: every call succeeds again, greeter.2 serves its share.
    wait_for(lambda: client.ask(op="count", n=20)["errors"] == {}, 10, "the fault cleared")
    out = client.ask(op="count", n=90)
    assert out["errors"] == {} and set(out["counts"]) == set(NAMES), out


def test_a_grpcio_client_follows_weight_stop_kill_pause_reload_and_fault(
        cluster: Cluster, tmp_path: Path) -> None:
    with grpcio_client(cluster, tmp_path) as client:
        for step in (weights_5_1_1, stop_loses_no_call, sigkill_loses_no_call,
                     pause_is_routed_around, reload_all_loses_no_call, fault_on_one_instance):
            step(cluster, client)


# -- grpc-js (Node) --------------------------------------------------------------------

def received(cluster: Cluster, name: str) -> int:
    log = cluster.state_dir / "logs" / f"{name}.log"
    return log.read_text().count("Received:") if log.exists() else 0


def test_a_node_client_follows_weights_a_fault_and_a_stop(cluster: Cluster) -> None:
    node_modules()
    bootstrap = cluster.xds().bootstrap

    cluster.weight("greeter.1", 5)
    assert_5_1_1(NodeClient(bootstrap, 1000).result(), "node")
    cluster.weight("greeter.1", 1)

    before = received(cluster, "greeter.2")
    with cluster.fault("greeter.2", abort="PERMISSION_DENIED:100"):
        out = NodeClient(bootstrap, 450).result()
    denied = out["errors"].get("PERMISSION_DENIED", 0) / out["calls"]
    print(f"node, abort 100% on greeter.2 of 3: {denied:.3f} denied; served {out['counts']}")
    assert set(out["errors"]) == {"PERMISSION_DENIED"} and abs(denied - 1 / 3) < 0.08
    assert "greeter.2" not in out["counts"]
    assert received(cluster, "greeter.2") == before, "an aborted call reached greeter.2"

    node = NodeClient(bootstrap, 600)
    try:
        start = received(cluster, "greeter.3")
        wait_for(lambda: received(cluster, "greeter.3") >= start + 20
                 or node.proc.poll() is not None, 30, "the node client's calls")
        assert node.proc.poll() is None, "the node client finished before the stop"
        cluster.stop("greeter.3")
    finally:
        out = node.result()
    print(f"node, stop mid-run: {out}")
    assert out["errors"] == {}
    assert 0 < out["counts"].get("greeter.3", 0) < 200  # a third of 600 would be 200
