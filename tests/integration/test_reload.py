"""Rolling reload with real processes: a client at full speed loses no call (issue 19).

Every test counts the failed calls of a client running through the reload: a
balancing client with 8 calls in flight, or a plain grpc channel dialling one port.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from bench.reload import load
from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc
from devcluster.api import Cluster, ReloadError
from tests._clients import SyncClient

GREETER = "python -m devcluster.greeter --port $PORT"
BROKEN = "python -c \"import sys; print('boom: cannot start'); sys.exit(3)\""
IN_FLIGHT = 8

pytestmark = pytest.mark.timeout(120)


def pids(cluster: Cluster) -> dict[str, int | None]:
    return {i.name: i.pid for i in cluster.instances}


@contextmanager
def plain_load(address: str, concurrency: int = IN_FLIGHT) -> Iterator[dict[str, Any]]:
    """``concurrency`` threads calling ``address`` on one plain grpc channel."""
    request = helloworld_pb2.HelloRequest(name="x")
    with grpc.insecure_channel(address) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        with load(lambda: stub.SayHello(request, timeout=5), concurrency) as counts:
            yield counts


def test_reload_all_under_full_load_fails_no_call(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(scale={"greeter": 3})
    before = {i.name: i for i in cluster.instances}
    client = SyncClient("greeter", cluster.registry)
    try:
        with client.load(concurrency=IN_FLIGHT, timeout=5, pause=0):
            time.sleep(0.3)  # the load is on before the reload starts
            result = cluster.reload(all=True)
            time.sleep(0.3)
        calls = client.infos
    finally:
        client.close()
    failed = [i for i in calls if not i.ok]
    assert not failed, f"{len(failed)} of {len(calls)} calls failed: {failed[:3]}"
    assert len(calls) > 100, f"the client made only {len(calls)} calls"
    steps = {s["name"]: s for s in result["reloaded"]}
    assert sorted(steps) == ["greeter.1", "greeter.2", "greeter.3"]
    after = {i.name: i for i in cluster.instances}
    for name, old in before.items():
        assert after[name].pid != old.pid and after[name].state == "serving"
        assert after[name].address == old.address, "the greeter allows SO_REUSEPORT: same port"
        assert steps[name]["same_port"] and steps[name]["old_pid"] == old.pid
        assert after[name].restarts == old.restarts + 1


def test_a_client_dialling_one_port_loses_no_call(make_cluster: Callable[..., Cluster]) -> None:
    """The replacement binds the same port (SO_REUSEPORT) and takes every new
    connection; the old server waits for its clients to move (connection age) before
    it stops: a plain grpc channel of that one address, 8 calls in flight, fails none."""
    cluster = make_cluster()
    old = cluster.instance("greeter")
    assert old.address
    with plain_load(old.address) as counts:
        time.sleep(0.3)
        result = cluster.reload("greeter")
        new = cluster.instance("greeter")
        ok_at_switch = counts["ok"]
        deadline = time.monotonic() + 10  # served again, by the replacement
        while counts["ok"] < ok_at_switch + 50 and time.monotonic() < deadline:
            time.sleep(0.05)  # polls a counter the callers bump: no event to wait on
    assert not counts["failed"], f"{len(counts['failed'])} failed: {counts['failed'][:3]}"
    assert counts["ok"] >= ok_at_switch + 50
    assert new.pid != old.pid and new.address == old.address
    assert result["reloaded"][0]["same_port"] is True
    assert new.state == "serving" and not psutil.pid_exists(old.pid or 0), \
        "the calls after the reload can only have been served by the replacement"


def test_without_reuseport_the_replacement_gets_a_spare_port(
        make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DEVCLUSTER_REUSEPORT=0\n")  # the greeter refuses sharing
    cluster = make_cluster(scale={"greeter": 2})
    before = {i.name: i for i in cluster.instances}
    client = SyncClient("greeter", cluster.registry)
    try:
        with client.load(concurrency=IN_FLIGHT, timeout=5, pause=0):
            time.sleep(0.3)
            result = cluster.reload("greeter")
            time.sleep(0.3)
        calls = client.infos
    finally:
        client.close()
    failed = [i for i in calls if not i.ok]
    assert not failed, f"{len(failed)} of {len(calls)} calls failed: {failed[:3]}"
    for step in result["reloaded"]:
        assert step["same_port"] is False and step["new_address"] != step["old_address"]
    after = {i.name: i for i in cluster.instances}
    for name, old in before.items():  # ps shows the new port
        assert after[name].address != old.address and after[name].state == "serving"


def test_a_broken_replacement_leaves_the_old_instance_serving(
        make_cluster: Callable[..., Cluster], write_procfile: Callable[..., Path],
        run_cli: Callable[..., Any], say_hello: Callable[..., Any]) -> None:
    cluster = make_cluster([f"good: {GREETER}", f"web: {GREETER}"])
    before = pids(cluster)
    address = cluster.instance("web").address
    write_procfile(f"good: {GREETER} --name changed", f"web: {BROKEN}")
    with plain_load(address, 2) as counts:
        done = run_cli("reload", "--all")
        time.sleep(0.2)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "reload stopped at web" in done.stderr and "web keeps serving" in done.stderr
    assert "boom: cannot start" in done.stdout, "the replacement's last lines are shown"
    assert not counts["failed"], counts["failed"][:3]
    web = cluster.instance("web")
    assert web.pid == before["web"] and web.state == "serving"
    assert say_hello(address)[1] == "web"
    assert cluster.instance("good").pid != before["good"], "good came first and was reloaded"
    with pytest.raises(ReloadError) as caught:
        cluster.reload("web")
    assert caught.value.instance == "web" and caught.value.exit_code == 1
    assert any("boom" in line for line in caught.value.log)


def test_a_procfile_edit_applies_as_a_diff_under_load(
        make_cluster: Callable[..., Cluster], write_procfile: Callable[..., Path],
        run_cli: Callable[..., Any]) -> None:
    cluster = make_cluster([f"keep: {GREETER}", f"change: {GREETER}", f"remove: {GREETER}"])
    before = pids(cluster)
    client = SyncClient(None, cluster.registry, retry_on=())
    write_procfile(f"keep: {GREETER}", f"change: {GREETER} --name changed", f"add: {GREETER}")
    try:
        with client.load(concurrency=IN_FLIGHT, timeout=5, pause=0):
            time.sleep(0.3)
            done = run_cli("reload", "--json")
            time.sleep(0.3)
        calls = client.infos
    finally:
        client.close()
    assert done.returncode == 0, done.stderr
    import json

    result = json.loads(done.stdout)
    assert [s["name"] for s in result["reloaded"]] == ["change"]
    assert result["started"] == ["add"] and result["stopped"] == ["remove"]
    assert result["unchanged"] == ["keep"]
    after = pids(cluster)
    assert sorted(after) == ["add", "change", "keep"]
    assert after["keep"] == before["keep"] and after["change"] != before["change"]
    failed = [i for i in calls if not i.ok]
    assert not failed, f"{len(failed)} of {len(calls)} calls failed: {failed[:3]}"
