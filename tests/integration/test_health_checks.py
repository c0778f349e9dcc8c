"""Continuous health checks (issue 27): a hung instance becomes `unhealthy` in the registry
and in ps within health_period x health_failures plus a probe timeout, clients stop routing
to it, one passed check brings it back; a `pause` is found the same way; liveness restarts
an instance that stays unhealthy."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from devcluster.api import Cluster
from devcluster.events import read_events
from tests._servers import wait_for

GREETER = "python -m devcluster.greeter --port $PORT"


def project(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "devcluster.toml"
    path.write_text(f"[process.greeter]\nhealth_period = 0.2\nhealth_failures = 2\n{extra}")
    return path


def test_a_hung_instance_is_unhealthy_then_serving_again(
        make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    project(tmp_path)
    cluster = make_cluster(scale={"greeter": 2})
    pid = cluster.instance("greeter.2").pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # hung behind the supervisor's back: only checks find it
    began = time.monotonic()
    try:
        wait_for(lambda: cluster.registry.get("greeter.2").state == "unhealthy", 5,
                 "greeter.2 unhealthy in the registry")
        took = time.monotonic() - began
        assert cluster.instance("greeter.2").state == "unhealthy"  # ps says so too
        print(f"unhealthy after {took:.2f} s (period 0.2 s x 2 + probe timeout 0.2 s)")
        assert took < 0.2 * 2 + 0.2 + 1.5  # the bound, plus a loaded machine's margin
        assert cluster.registry.get("greeter.1").state == "serving"
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: cluster.instance("greeter.2").state == "serving", 5, "serving again")
    states = [(e.old, e.new, e.who) for e in read_events(cluster.state_dir)
              if e.kind == "state" and e.instance == "greeter.2"]
    assert ("serving", "unhealthy", "health check") in states
    assert ("unhealthy", "serving", "health check") in states


def test_pause_is_found_by_the_checks_and_ps_still_says_paused(
        make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    project(tmp_path)
    cluster = make_cluster(scale={"greeter": 2})
    cluster.pause("greeter.1")
    wait_for(lambda: cluster.registry.get("greeter.1").state == "unhealthy", 5,
             "a paused instance unhealthy in the registry")
    assert cluster.instance("greeter.1").state == "paused"
    cluster.resume("greeter.1")
    wait_for(lambda: cluster.registry.get("greeter.1").state == "serving", 5, "serving again")


def test_liveness_restarts_an_instance_that_stays_unhealthy(
        make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    project(tmp_path, "liveness = true\n")
    cluster = make_cluster(scale={"greeter": 1})
    pid = cluster.instance("greeter.1").pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: (i := cluster.instance("greeter.1")).pid != pid and i.state == "serving",
             15, "greeter.1 restarted by liveness and serving")
    assert cluster.instance("greeter.1").restarts == 1
