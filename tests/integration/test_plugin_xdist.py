"""The plugin at xdist scale: one cluster for a whole ``-n 2`` run, crashes, Ctrl-C, leaks.

Each test runs a pytest session of its own under pytest-xdist, as a user's suite,
and checks with psutil that nothing of that run is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from devcluster.statedir import layout

PROCFILE = """\
server1: python -m devcluster.greeter --port $PORT
server2: python -m devcluster.greeter --port $PORT
"""

NOTE = '''
import json, os, time
from devcluster.statedir import running_pid


def note(cluster, **extra):
    """One line per test: which worker saw which supervisor (appends are atomic)."""
    line = json.dumps({"worker": os.environ.get("PYTEST_XDIST_WORKER"), "pid": os.getpid(),
                       "supervisor": running_pid(cluster.state_dir),
                       "state_dir": str(cluster.state_dir), "t": time.time(), **extra})
    with open("notes.jsonl", "a") as f:
        f.write(line + "\\n")
'''


def _args(pytester: pytest.Pytester, *more: str) -> list[str]:
    return ["-n", "2", "-p", "no:cacheprovider", "-q", f"--basetemp={pytester.path / 'base'}",
            *more]


def _notes(root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (root / "notes.jsonl").read_text().splitlines()]


def _left(processes_under: Callable[[Path], list[psutil.Process]], root: Path,
          mention: str = "", timeout: float = 5.0) -> list[str]:
    """What still runs under ``root`` (or mentions ``mention``) after ``timeout``; killed."""
    def find() -> list[psutil.Process]:
        found = processes_under(root)
        if mention:
            for p in psutil.process_iter(["cmdline"]):
                if p.pid != os.getpid() and any(mention in a for a in p.info["cmdline"] or []):
                    found.append(p)
        return found

    deadline = time.monotonic() + timeout
    left = find()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)  # processes vanish on their own; nothing to block on from here
        left = find()
    described = []
    for p in left:
        try:
            described.append(f"{p.pid} {' '.join(p.cmdline())}")
            p.kill()
        except psutil.Error:
            pass
    return described


def test_one_supervisor_for_a_whole_xdist_run_even_when_a_worker_crashes(
        pytester: pytest.Pytester,
        processes_under: Callable[[Path], list[psutil.Process]]) -> None:
    pytester.makefile("", Procfile=PROCFILE)
    pytester.makepyfile(notes=NOTE)
    pytester.makepyfile(test_a_shared='''
import os
import pytest
from devcluster._proto.helloworld_pb2 import HelloRequest
from devcluster._proto.helloworld_pb2_grpc import GreeterStub
from notes import note

pytestmark = pytest.mark.devcluster(scale={"server2": 2}, scope="session")


def test_crash_the_worker_that_started_it(cluster):
    note(cluster, crash=True)
    os._exit(3)  # a worker dies: the cluster it started serves on for the others


@pytest.mark.parametrize("i", range(8))
def test_calls(cluster, i):
    assert sorted(i.name for i in cluster.instances) == ["server1", "server2.1", "server2.2"]
    GreeterStub(cluster.channel("server")).SayHello(HelloRequest(name="x"), timeout=5)
    note(cluster)
''')
    pytester.makepyfile(test_b_module='''
import pytest
from notes import note

pytestmark = pytest.mark.devcluster(scope="module")


@pytest.mark.parametrize("i", range(2))
def test_module_clusters_are_per_worker(cluster, i):
    note(cluster, module=True)
''')
    result = pytester.runpytest_subprocess(*_args(pytester))
    result.assert_outcomes(passed=10, failed=1)
    result.stdout.fnmatch_lines(["*worker 'gw*' crashed while running*test_crash_the_worker*"])

    notes = _notes(pytester.path)
    shared = [n for n in notes if not n.get("module")]
    crash = next(n for n in shared if n.get("crash"))
    # One supervisor, one state dir, for every worker of the run, the crashed one included.
    assert {n["supervisor"] for n in shared} == {crash["supervisor"]}
    assert {n["state_dir"] for n in shared} == {crash["state_dir"]}
    assert len({n["pid"] for n in shared}) >= 2
    # ... still serving after the worker that started it died.
    assert [n for n in shared if n["t"] > crash["t"] and n["pid"] != crash["pid"]]
    # Module scope stays per worker: its own cluster, not the shared one.
    for n in notes:
        if n.get("module"):
            assert n["state_dir"] != crash["state_dir"]
            assert {m["state_dir"] for m in notes if m.get("module") and m["pid"] == n["pid"]} \
                == {n["state_dir"]}
    assert not Path(crash["state_dir"]).exists(), "the run's shared dir was not cleaned up"
    assert not _left(processes_under, pytester.path, mention=crash["state_dir"])


def _stale_run(root: Path) -> tuple[Path, psutil.Process]:
    """The shared cluster of a run whose controller was killed outright (SIGKILL)."""
    from devcluster.api import Cluster
    from devcluster.pytest_plugin.sharing import SharedRun, runs_root

    dead = subprocess.Popen(["true"])
    dead.wait()
    run = SharedRun(runs_root() / f"stale{os.getpid()}")
    (run.root / "users").mkdir(parents=True, exist_ok=True)
    (run.root / "controller").write_text(json.dumps({"pid": dead.pid, "created": 0.0}))
    Cluster(root / "Procfile", state_dir=run.state_dir("k"), port=0, owned=False).up()
    sup = json.loads(layout(run.state_dir("k")).lock.read_text() or "0")
    return run.root, psutil.Process(sup)


def test_leak_guard_fails_the_run_naming_what_was_left_behind(
        pytester: pytest.Pytester,
        processes_under: Callable[[Path], list[psutil.Process]]) -> None:
    """... and a run sweeps the shared clusters of an earlier run killed outright."""
    pytester.makefile("", Procfile=PROCFILE)
    stale_dir, stale_supervisor = _stale_run(pytester.path)
    pytester.makepyfile(test_leaky='''
from devcluster.api import Cluster


def test_leaves_a_cluster_behind(tmp_path):
    # Not tied to this process and never stopped: a leak.
    Cluster("Procfile", state_dir=tmp_path / "forgotten", port=0, owned=False).up()


def test_a_fixture_cluster_is_not_a_leak(cluster):
    assert cluster.instances
''')
    result = pytester.runpytest_subprocess(*_args(pytester))
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*devcluster leak guard*",
        "devcluster: still running at the end of the session, killed: pid * "
        "(devcluster supervisor, state dir */forgotten), a supervisor started in this "
        "session and never stopped",
        "devcluster: still running *killed: pid * (*devcluster.greeter*",
    ])
    assert "devcluster0" not in result.stdout.str()  # the fixture's cluster was stopped
    try:
        stale_supervisor.wait(10)  # our child: psutil reaps it
    except psutil.TimeoutExpired:
        stale_supervisor.kill()
        pytest.fail("the stale run's cluster was not swept")
    assert not stale_dir.exists()
    assert not _left(processes_under, pytester.path)


def test_ctrl_c_in_the_middle_of_an_xdist_run_leaves_nothing(
        pytester: pytest.Pytester, wait_until: Callable[..., Any],
        processes_under: Callable[[Path], list[psutil.Process]]) -> None:
    pytester.makefile("", Procfile=PROCFILE)
    pytester.makeini("[pytest]\ndevcluster_scope = session\n")
    pytester.makepyfile(notes=NOTE)
    pytester.makepyfile(test_long='''
import time
import pytest
from notes import note


@pytest.mark.parametrize("i", range(4))
def test_long(cluster, i):
    note(cluster)
    time.sleep(60)  # interrupted by the Ctrl-C
''')
    out = pytester.path / "pytest.out"
    with open(out, "wb") as f:
        # Its own session: the Ctrl-C goes to its process group, as a terminal's would.
        proc = subprocess.Popen([sys.executable, "-m", "pytest", *_args(pytester)],
                                cwd=pytester.path, stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        notes_file = pytester.path / "notes.jsonl"
        wait_until(lambda: notes_file.exists() and len({n["pid"] for n in _notes(pytester.path)})
                   == 2, timeout=60, what="both workers using the serving cluster")
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = out.read_text(errors="replace")
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, text[-3000:]
    state_dir = _notes(pytester.path)[0]["state_dir"]
    assert not _left(processes_under, pytester.path, mention=state_dir), text[-3000:]
