"""The pytest plugin's costs (issue 20): per-cluster overhead, and xdist sharing.

``python -m bench.plugin [--runs 3] [--clusters 8] [--tests 40] [--calls 20] [--scales 1,4]``

* **Overhead**: a function-scoped ``cluster`` fixture's setup + teardown (pytest's own
  phase durations, so the test session's start-up is not counted) against a bare
  ``with Cluster(...)`` in a script, the same Procfile (2 greeters, free ports), the
  same number of clusters. Goal: at most 1.2x.
* **Sharing**: a suite of ``--tests`` tests, each making ``--calls`` calls through
  ``cluster.channel()``, under ``pytest -n 2`` with a session cluster: shared by the
  workers (the default) against one cluster per worker (``devcluster_share = false``).
  Wall time of the whole ``pytest`` command, and clusters started (distinct
  supervisor pids the tests saw). Goal: exactly one cluster, at most 0.6x the time.
  Also the same number of empty tests under ``-n 2`` (no cluster: pytest's and
  xdist's own start-up), and the ratio of the times above that floor.

Rounds alternate the two sides, so a busy machine slows both alike; medians are
reported. Not a test: figures depend on the machine. Leaves nothing running.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROCFILE = """\
server1: python -m devcluster.greeter --port $PORT
server2: python -m devcluster.greeter --port $PORT
"""

#: Records each test's setup and teardown durations (the fixture's up and down).
PHASES_CONFTEST = '''
import json

def pytest_runtest_logreport(report):
    if report.when in ("setup", "teardown"):
        with open("phases.jsonl", "a") as f:
            f.write(json.dumps({"test": report.nodeid, "when": report.when,
                                "s": report.duration}) + "\\n")
'''

EMPTY_TESTS = '''
import pytest

@pytest.mark.parametrize("i", range({n}))
def test_nothing(i):
    pass
'''

FUNCTION_TESTS = '''
import pytest

@pytest.mark.parametrize("i", range({n}))
def test_cluster(cluster, i):
    assert cluster.instances
'''

SUITE_TESTS = '''
import json, os
import pytest
from devcluster._proto.helloworld_pb2 import HelloRequest
from devcluster._proto.helloworld_pb2_grpc import GreeterStub
from devcluster.statedir import running_pid

@pytest.mark.parametrize("i", range({n}))
def test_calls(cluster, i):
    stub = GreeterStub(cluster.channel("server"))
    for k in range({calls}):
        stub.SayHello(HelloRequest(name=f"t{{i}}-{{k}}"), timeout=5)
    with open("supervisors.txt", "a") as f:
        f.write(f"{{running_pid(cluster.state_dir)}}\\n")
'''


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("DEVCLUSTER_HOME", "PYTEST_ADDOPTS")}


def _pytest(cwd: Path, *args: str) -> float:
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             f"--basetemp={cwd / 'base'}", *args], cwd=cwd, env=_env(),
                            capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - began
    if result.returncode != 0:
        raise RuntimeError(f"pytest failed in {cwd}:\n{result.stdout[-3000:]}")
    return took


def bare_clusters(root: Path, n: int) -> list[float]:
    """Seconds of each ``with Cluster(...)`` (up and down), in this process."""
    from devcluster.api import Cluster

    times = []
    for i in range(n):
        began = time.perf_counter()
        with Cluster(root / "Procfile", state_dir=root / f"bare{i}", port=0, grace=2.0):
            pass
        times.append(time.perf_counter() - began)
    return times


def plugin_clusters(root: Path, n: int) -> list[float]:
    """Seconds of each function-scoped fixture cluster (setup + teardown phases)."""
    (root / "phases.jsonl").unlink(missing_ok=True)
    (root / "test_function.py").write_text(FUNCTION_TESTS.format(n=n))
    _pytest(root, "test_function.py")
    per_test: dict[str, float] = {}
    for line in (root / "phases.jsonl").read_text().splitlines():
        d = json.loads(line)
        per_test[d["test"]] = per_test.get(d["test"], 0.0) + d["s"]
    return list(per_test.values())


def suite(root: Path, share: bool, scale: int) -> tuple[float, int]:
    """Wall seconds of the suite under ``-n 2``, and how many clusters it started."""
    (root / "supervisors.txt").unlink(missing_ok=True)
    (root / "pytest.ini").write_text("[pytest]\ndevcluster_scope = session\n"
                                     f"devcluster_scale = server1={scale} server2={scale}\n"
                                     f"devcluster_share = {'true' if share else 'false'}\n")
    took = _pytest(root, "-n", "2", "test_suite.py")
    return took, len(set((root / "supervisors.txt").read_text().split()))


def measure(runs: int, clusters: int, tests: int, calls: int,
            scales: tuple[int, ...]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="devcluster-bench-plugin-") as tmp:
        root = Path(tmp)
        (root / "Procfile").write_text(PROCFILE)
        (root / "conftest.py").write_text(PHASES_CONFTEST)
        (root / "test_suite.py").write_text(SUITE_TESTS.format(n=tests, calls=calls))
        (root / "test_empty.py").write_text(EMPTY_TESTS.format(n=tests))
        bare: list[float] = []
        plugin: list[float] = []
        for _ in range(runs):
            bare += bare_clusters(root, clusters)
            plugin += plugin_clusters(root, clusters)
        sharing = []
        for scale in scales:
            shared, per_worker, floor = [], [], []
            for _ in range(runs):
                shared.append(suite(root, True, scale))
                per_worker.append(suite(root, False, scale))
                floor.append(_pytest(root, "-n", "2", "test_empty.py"))
            sharing.append(_sharing(shared, per_worker, floor, tests, calls, scale))
    b, p = statistics.median(bare), statistics.median(plugin)
    return {"overhead": {"bare_s": round(b, 3), "plugin_s": round(p, 3),
                         "ratio": round(p / b, 2), "clusters": len(bare), "goal": "<= 1.2"},
            "sharing": sharing}


def _sharing(shared: list[tuple[float, int]], per_worker: list[tuple[float, int]],
             floor: list[float], tests: int, calls: int, scale: int) -> dict[str, Any]:
    s, w = statistics.median(t for t, _ in shared), statistics.median(t for t, _ in per_worker)
    f = statistics.median(floor)
    return {"tests": tests, "calls_per_test": calls, "instances": 2 * scale,
            "shared_s": round(s, 2), "per_worker_s": round(w, 2),
            "ratio": round(s / w, 2), "goal": "<= 0.6, exactly one cluster",
            # pytest -n 2 running as many empty tests: start-up of the controller and workers.
            "no_cluster_s": round(f, 2),
            "ratio_above_no_cluster": round((s - f) / (w - f), 2) if w > f else None,
            "clusters_shared": sorted({n for _, n in shared}),
            "clusters_per_worker": sorted({n for _, n in per_worker}),
            "shared_runs_s": [round(t, 2) for t, _ in shared],
            "per_worker_runs_s": [round(t, 2) for t, _ in per_worker],
            "no_cluster_runs_s": [round(t, 2) for t in floor]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plugin", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--clusters", type=int, default=8, help="clusters per side and round")
    parser.add_argument("--tests", type=int, default=40, help="tests in the xdist suite")
    parser.add_argument("--calls", type=int, default=20, help="calls per test")
    parser.add_argument("--scales", default="1,4",
                        help="instances per process type of the suite's cluster (default 1,4)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    scales = tuple(int(s) for s in args.scales.split(","))
    figures = measure(args.runs, args.clusters, args.tests, args.calls, scales)
    o = figures["overhead"]
    print(f"function-scoped cluster, up+down: plugin {o['plugin_s']:.3f}s vs bare Cluster "
          f"{o['bare_s']:.3f}s = {o['ratio']}x (goal {o['goal']}; {o['clusters']} each)")
    for s in figures["sharing"]:
        print(f"{s['tests']} tests x {s['calls_per_test']} calls, pytest -n 2, session cluster "
              f"of {s['instances']} instances: shared {s['shared_s']:.2f}s "
              f"({s['clusters_shared']} cluster) vs one per worker {s['per_worker_s']:.2f}s "
              f"({s['clusters_per_worker']} clusters) = {s['ratio']}x (goal {s['goal']}); "
              f"no cluster {s['no_cluster_s']:.2f}s, above that {s['ratio_above_no_cluster']}x")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
