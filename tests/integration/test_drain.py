"""A stop waits for the registry's watchers, not a fixed time (issue 28), with real processes.

A balanced client making calls says at once which registry revision it applied: stops
and restarts lose no call and nobody is waited for in vain. A watcher that says
nothing (a live client file without ``revision``) is waited for the bound, and the
supervisor's log says so.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.reload import load
from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc
from devcluster.api import Cluster, default_state_dir
from devcluster.client import BalancedChannel
from devcluster.statedir import layout

pytestmark = pytest.mark.timeout(120)

NOT_APPLIED = "had not applied revision"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    procfile = tmp_path / "Procfile"
    procfile.write_text("greeter: python -m devcluster.greeter --port $PORT\n")
    c = Cluster(procfile, scale={"greeter": 2}, port=0, grace=2.0)
    c.up()
    try:
        yield c
    finally:
        c.down()


def _system_log(cluster: Cluster) -> str:
    path = layout(default_state_dir(cluster.procfile)).logs / "devcluster.log"
    return path.read_text() if path.exists() else ""


def test_stops_with_a_balanced_client_watching_lose_no_call(cluster: Cluster) -> None:
    state_dir = default_state_dir(cluster.procfile)
    request = helloworld_pb2.HelloRequest(name="x")
    with BalancedChannel("greeter", state_dir) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        with load(lambda: stub.SayHello(request, timeout=5), 8) as counts:
            time.sleep(0.3)
            for name in ("greeter.1", "greeter.2", "greeter.1"):
                cluster.restart(name)
            time.sleep(0.3)
    assert counts["ok"] > 0 and counts["failed"] == []
    assert NOT_APPLIED not in _system_log(cluster)


def test_a_watcher_that_says_nothing_is_waited_for_the_bound_and_named(cluster: Cluster) -> None:
    clients = layout(default_state_dir(cluster.procfile)).clients
    clients.mkdir(exist_ok=True)
    silent = clients / f"{os.getpid()}-999.json"  # an older client: no `revision` field
    silent.write_text(json.dumps({"version": 1, "pid": os.getpid(), "updated_at": time.time(),
                                  "instances": {}}))
    try:
        cluster.stop("greeter.2")
    finally:
        silent.unlink()
    deadline = time.monotonic() + 5
    while NOT_APPLIED not in _system_log(cluster) and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(ln for ln in _system_log(cluster).splitlines() if NOT_APPLIED in ln)
    assert "greeter.2: 1 of 1 registry watcher(s)" in line and "stopping it anyway" in line
