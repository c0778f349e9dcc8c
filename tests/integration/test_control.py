"""Issue 4, done when: kill, stop, start, restart, pause, resume, scale, weight on a
running cluster of real processes, and the restart policy with its backoff.

Clusters come from ``devcluster.api.Cluster`` (fast, and its supervisor is our child);
the CLI runs as a subprocess where its output or exit status is the contract. The
error rows (unknown names, no cluster, bad weights and scales) are in
test_cli_errors.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from devcluster.api import Cluster, NotReadyError
from devcluster.errors import UsageError
from devcluster.statedir import layout

GREETER = "python -m devcluster.greeter --port $PORT"
CRASH = 'crash: python -c "import sys; sys.exit(1)"'

Cli = Callable[..., subprocess.CompletedProcess[str]]
MakeCluster = Callable[..., Cluster]


def registry_record(cluster: Cluster, name: str) -> dict[str, Any]:
    """The record as written on disk (no liveness correction)."""
    data = json.loads((cluster.state_dir / "registry.json").read_text())
    return data["instances"][name]


def merged_log(cluster: Cluster) -> str:
    return "\n".join(cluster.logs(n=1000))


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    err = result.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def gone(pid: int | None) -> bool:
    assert pid is not None
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- kill / start ----------------------------------------------------------------------

def test_kill_then_start_brings_back_the_same_name_and_port(
        make_cluster: MakeCluster, say_hello: Callable[..., Any]) -> None:
    cluster = make_cluster(scale={"greeter": 2})
    before = cluster.instance("greeter.1")

    [row] = cluster.kill("greeter.1")
    assert row.state == "killed"
    assert row.last_exit == "signal SIGKILL"
    assert gone(before.pid)
    assert cluster.instance("greeter.1").state == "killed"
    assert registry_record(cluster, "greeter.1")["state"] == "killed"
    assert cluster.instance("greeter.2").state == "serving"
    log = merged_log(cluster)
    assert re.search(r"kill \(SIGKILL\) greeter\.1 \(asked by pid \d+\)", log), log
    assert "greeter.1 restarting" not in log  # a user's kill is never auto-restarted

    [row] = cluster.start("greeter.1")  # returns once serving
    assert row.state == "serving"
    after = cluster.instance("greeter.1")
    assert after.address == before.address
    assert after.pid != before.pid
    assert after.restarts == before.restarts + 1
    assert say_hello(after.address) == ("Hello test from greeter.1", "greeter.1")
    assert registry_record(cluster, "greeter.1")["state"] == "serving"
    assert registry_record(cluster, "greeter.1")["pid"] == after.pid


def test_cli_answers_with_the_resulting_state(make_cluster: MakeCluster, run_cli: Cli) -> None:
    cluster = make_cluster()
    pid = cluster.instance("greeter").pid
    # The greeter exits 0 on SIGTERM: still `killed`, as the user asked for it.
    assert ok(run_cli("kill", "greeter", "--signal", "SIGTERM")).strip() == \
        "greeter: killed (exit 0)"
    assert gone(pid)
    assert cluster.instance("greeter").state == "killed"
    # Already in the wanted state: say so, exit 0.
    assert ok(run_cli("kill", "greeter")).strip() == "greeter is already killed; nothing to do"
    out = ok(run_cli("start", "greeter")).strip()
    address = cluster.instance("greeter").address
    assert out == f"greeter: serving on {address}"
    assert ok(run_cli("start", "greeter")).strip() == \
        f"greeter is already serving on {address}; nothing to do"
    assert ok(run_cli("resume", "greeter")).strip() == \
        f"greeter is already serving on {address}; nothing to do"


# -- stop ------------------------------------------------------------------------------

def test_stop_drains_first_then_stops(make_cluster: MakeCluster, say_hello: Callable[..., Any],
                                      wait_until: Callable[..., Any]) -> None:
    cluster = make_cluster(grace=5)
    info = cluster.instance("greeter")
    log = cluster.state_dir / "logs" / "greeter.log"

    # An in-flight slow call keeps the greeter in its graceful stop long enough to see
    # `draining` in the registry.
    result: dict[str, Any] = {}
    caller = threading.Thread(target=lambda: result.update(
        reply=say_hello(info.address, "slow", delay_ms=1500)))
    caller.start()
    wait_until(lambda: "Received: slow" in log.read_text(), 10.0, "the slow call to arrive")
    stopped: dict[str, Any] = {}
    stopper = threading.Thread(target=lambda: stopped.update(rows=cluster.stop("greeter")))
    stopper.start()
    wait_until(lambda: registry_record(cluster, "greeter")["state"] == "draining", 5.0,
               "greeter to be draining in the registry")
    stopper.join(15)
    caller.join(15)
    assert [r.state for r in stopped["rows"]] == ["stopped"]
    assert result["reply"] == ("Hello slow from greeter", "greeter")
    assert gone(info.pid)
    assert cluster.instance("greeter").state == "stopped"
    assert registry_record(cluster, "greeter")["state"] == "stopped"
    assert "sending SIGKILL" not in merged_log(cluster)

    with cluster.control() as control:
        again = control.act("stop", ["greeter"])
    assert list(again.unchanged) == ["greeter"]


# -- restart ---------------------------------------------------------------------------

def test_restart_grows_the_counter_with_a_new_pid(make_cluster: MakeCluster, run_cli: Cli,
                                                  say_hello: Callable[..., Any],
                                                  wait_until: Callable[..., Any]) -> None:
    cluster = make_cluster()
    before = cluster.instance("greeter")
    [row] = cluster.restart("greeter")
    assert row.state == "serving"
    assert row.restarts == before.restarts + 1
    assert row.pid != before.pid
    assert row.address == before.address
    assert gone(before.pid)
    assert registry_record(cluster, "greeter")["restarts"] == before.restarts + 1

    out = ok(run_cli("restart", "greeter"))
    assert out.startswith("greeter: serving on 127.0.0.1:")
    assert cluster.instance("greeter").restarts == before.restarts + 2
    assert say_hello(before.address)[1] == "greeter"

    # --no-wait answers before the new process serves.
    assert ok(run_cli("restart", "greeter", "--no-wait")).startswith("greeter: starting")
    wait_until(lambda: cluster.instance("greeter").state == "serving", 10.0, "greeter serving")
    assert cluster.instance("greeter").restarts == before.restarts + 3


def test_action_lines_do_not_show_a_previous_runs_exit(make_cluster: MakeCluster,
                                                       run_cli: Cli) -> None:
    cluster = make_cluster()
    cluster.restart("greeter")  # last_exit is now "exit 0"
    assert ok(run_cli("pause", "greeter")).strip() == "greeter: paused"


# -- pause / resume --------------------------------------------------------------------

def test_pause_freezes_but_stays_registered_then_resume(
        make_cluster: MakeCluster, say_hello: Callable[..., Any],
        wait_until: Callable[..., Any]) -> None:
    cluster = make_cluster(scale={"greeter": 2})
    info = cluster.instance("greeter.1")
    proc = psutil.Process(info.pid)

    [row] = cluster.pause("greeter.1")
    assert row.state == "paused"
    assert cluster.instance("greeter.1").state == "paused"
    # SIGSTOP really applied (signal delivery is asynchronous: wait for it).
    wait_until(lambda: proc.status() == psutil.STATUS_STOPPED, 5.0, "greeter.1 to be stopped")
    # A hung server stays advertised: the clients must find out by themselves.
    assert registry_record(cluster, "greeter.1")["state"] == "serving"
    assert cluster.registry.snapshot().records["greeter.1"].usable
    import grpc

    with pytest.raises(grpc.RpcError) as e:
        say_hello(info.address, timeout=0.5)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    with cluster.control() as control:
        assert list(control.act("pause", ["greeter.1"]).unchanged) == ["greeter.1"]

    [row] = cluster.resume("greeter.1")
    assert row.state == "serving"
    wait_until(lambda: proc.status() != psutil.STATUS_STOPPED, 5.0, "greeter.1 to run again")
    assert say_hello(info.address)[1] == "greeter.1"
    assert cluster.instance("greeter.1").pid == info.pid
    with cluster.control() as control:
        assert list(control.act("resume", ["greeter.1"]).unchanged) == ["greeter.1"]


def test_resume_after_a_long_pause_while_starting_becomes_serving(
        make_cluster: MakeCluster, wait_until: Callable[..., Any]) -> None:
    # `sleep` first: the instance is surely still starting when the pause lands.
    cluster = make_cluster([f"greeter: sleep 0.3; exec {GREETER}"], ready_timeout=2)
    cluster.restart("greeter", wait=False)
    [row] = cluster.pause("greeter")
    assert row.state == "paused"
    assert registry_record(cluster, "greeter")["state"] == "starting"
    # Outlast the readiness deadline of this start (a clock, not an event, is the point).
    deadline = row.started_at + 2 + 1.0
    wait_until(lambda: time.time() > deadline, 5.0, "the ready timeout to pass")
    cluster.resume("greeter")
    wait_until(lambda: cluster.instance("greeter").state == "serving", 3.0,
               "the resumed instance to serve")


def test_down_resumes_paused_instances_to_stop_them_gracefully(
        make_cluster: MakeCluster, all_gone: Callable[..., bool]) -> None:
    cluster = make_cluster(grace=3)
    pid = cluster.instance("greeter").pid
    cluster.pause("greeter")
    began = time.monotonic()
    cluster.down()
    assert time.monotonic() - began < 2.5  # not the 3 s grace and a SIGKILL
    assert all_gone([pid])
    log = merged_log(cluster)
    assert "sending SIGKILL" not in log
    assert "greeter stopped (exit 0)" in log


# -- several at once -------------------------------------------------------------------

def test_process_type_names_and_all(make_cluster: MakeCluster, run_cli: Cli) -> None:
    cluster = make_cluster([f"web: {GREETER}", f"greeter: {GREETER}"], scale={"greeter": 2})

    rows = cluster.stop("greeter")  # a process type: all its instances
    assert sorted((r.name, r.state) for r in rows) == [("greeter.1", "stopped"),
                                                            ("greeter.2", "stopped")]
    assert cluster.instance("web").state == "serving"

    out = ok(run_cli("start", "--all"))
    assert "web is already serving" in out
    assert re.search(r"^greeter\.1: serving on 127\.0\.0\.1:\d+$", out, re.M), out
    assert re.search(r"^greeter\.2: serving on 127\.0\.0\.1:\d+$", out, re.M), out

    pids = [i.pid for i in cluster.instances]
    out = ok(run_cli("kill", "--all", "--json"))
    assert sorted((r["name"], r["state"]) for r in json.loads(out)) == [
        ("greeter.1", "killed"), ("greeter.2", "killed"), ("web", "killed")]
    assert all(gone(pid) for pid in pids)

    rows = cluster.start(["web", "greeter.2"])
    assert sorted((r.name, r.state) for r in rows) == [("greeter.2", "serving"),
                                                            ("web", "serving")]
    assert cluster.instance("greeter.1").state == "killed"

    # An unknown name is an error listing the known instances, and nothing happens.
    result = run_cli("stop", "greeter.2", "greeter.3")
    assert result.returncode == 1
    err = one_line_error(result)
    assert "unknown instance 'greeter.3'; known instances: greeter.1, greeter.2, web" in err
    assert cluster.instance("greeter.2").state == "serving"




# -- restart policy --------------------------------------------------------------------

def test_crash_loop_backs_off_then_fails_without_spinning(make_cluster: MakeCluster) -> None:
    cluster = make_cluster([f"greeter: {GREETER}", CRASH], start=False)
    log = cluster.state_dir / "logs" / "devcluster.log"
    sample: dict[str, Any] = {}

    def watch() -> None:
        # Sample the supervisor's CPU once the loop is under way (first backoff logged).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "restarting in 0.5s" not in (
                log.read_text() if log.exists() else ""):
            time.sleep(0.02)
        sup = psutil.Process(int(layout(cluster.state_dir).lock.read_text()))
        sample.update(proc=sup, cpu=sum(sup.cpu_times()[:2]), at=time.monotonic())

    watcher = threading.Thread(target=watch)
    watcher.start()
    # up() returns once every instance serves or gave up: here after the 5th failure.
    with pytest.raises(NotReadyError, match="crash failed"):
        cluster.up()
    ended = time.monotonic()
    watcher.join(20)
    cpu = sum(sample["proc"].cpu_times()[:2]) - sample["cpu"]
    wall = ended - sample["at"]

    text = log.read_text()
    delays = re.findall(r"crash restarting in (\S+)s \(failure (\d) of 5\)", text)
    assert delays == [("0.5", "1"), ("1", "2"), ("2", "3"), ("4", "4")]
    assert "crash failed 5 times in a row" in text
    assert wall >= 1 + 2 + 4 - 0.3  # the delays were really waited
    # A spinning loop would burn ~1 s of CPU per second; measured ~0.06 s in 7.5 s.
    assert cpu < 0.1 * wall, f"supervisor used {cpu:.2f}s CPU in {wall:.2f}s"

    info = cluster.instance("crash")  # the cluster keeps running
    assert (info.state, info.restarts, info.last_exit) == ("failed", 4, "exit 1")
    assert registry_record(cluster, "crash")["state"] == "failed"
    assert cluster.instance("greeter").state == "serving"


def test_an_instance_that_crashes_once_comes_back(make_cluster: MakeCluster,
                                                  say_hello: Callable[..., Any]) -> None:
    line = (f"flaky: if [ -e crashed-once ]; then exec {GREETER}; "
            "else touch crashed-once; exit 1; fi")
    cluster = make_cluster([line])  # up() returns once it serves after one restart
    info = cluster.instance("flaky")
    assert (info.state, info.restarts) == ("serving", 1)
    assert say_hello(info.address)[1] == "flaky"
    log = merged_log(cluster)
    assert "flaky exited by itself (exit 1)" in log
    assert "flaky restarting in 0.5s (failure 1 of 5)" in log


def test_restart_policy_no_stays_exited(make_cluster: MakeCluster) -> None:
    cluster = make_cluster([CRASH], start=False, restart={"crash": "no"})
    with pytest.raises(NotReadyError, match=r"crash exited \(exit 1\)"):
        cluster.up()
    info = cluster.instance("crash")
    assert (info.state, info.restarts) == ("exited", 0)
    assert "crash restarting" not in merged_log(cluster)


def test_restart_policy_always_restarts_a_clean_exit(make_cluster: MakeCluster) -> None:
    line = (f"once: if [ -e exited-once ]; then exec {GREETER}; "
            "else touch exited-once; exit 0; fi")
    cluster = make_cluster([line], restart={"once": "always"})
    assert (cluster.instance("once").state, cluster.instance("once").restarts) == ("serving", 1)


def test_clean_exit_is_not_restarted_by_default(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(["done: true"], start=False)
    with pytest.raises(NotReadyError, match=r"done exited \(exit 0\)"):
        cluster.up()
    assert cluster.instance("done").restarts == 0


def test_start_after_failed_resets_the_policy(make_cluster: MakeCluster,
                                              wait_until: Callable[..., Any]) -> None:
    cluster = make_cluster([CRASH], start=False, restart={"crash": "no"})
    with pytest.raises(NotReadyError):
        cluster.up()
    with pytest.raises(NotReadyError) as caught:  # started, and crashed again
        cluster.start("crash")
    row = caught.value.states["crash"]
    assert row["state"] == "exited"
    assert row["restarts"] == 1


# -- scale -----------------------------------------------------------------------------

def test_scale_up_then_down_leaves_exactly_the_wanted_processes(
        make_cluster: MakeCluster, run_cli: Cli, say_hello: Callable[..., Any],
        processes_under: Callable[[Path], list[psutil.Process]], tmp_path: Path) -> None:
    cluster = make_cluster(scale={"greeter": 2})
    out = ok(run_cli("scale", "greeter=5"))
    for n in range(1, 6):
        assert re.search(rf"^greeter\.{n}\s+serving\b", out, re.M), out
    five = {i.name: i for i in cluster.instances}
    assert sorted(five) == [f"greeter.{n}" for n in range(1, 6)]
    assert len({i.address for i in five.values()}) == 5
    for name, info in five.items():
        assert say_hello(info.address)[1] == name

    rows = cluster.scale(greeter=2)
    assert sorted((r.name, r.state) for r in rows) == [("greeter.1", "serving"),
                                                            ("greeter.2", "serving")]
    assert sorted(i.name for i in cluster.instances) == ["greeter.1", "greeter.2"]
    assert all(gone(five[f"greeter.{n}"].pid) for n in (3, 4, 5))
    assert sorted(cluster.registry.snapshot().records) == ["greeter.1", "greeter.2"]
    greeters = [p for p in processes_under(tmp_path)
                if "devcluster.greeter" in " ".join(p.cmdline())]
    assert sorted(p.pid for p in greeters) == sorted(five[f"greeter.{n}"].pid for n in (1, 2))

    # Growing again reuses the next free names.
    cluster.scale(greeter=3)
    assert sorted(i.name for i in cluster.instances) == ["greeter.1", "greeter.2", "greeter.3"]


def test_concurrent_scale_requests_do_not_fail(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(scale={"greeter": 3})
    results: dict[int, Any] = {}

    def shrink(key: int) -> None:
        try:
            results[key] = sorted(r.name for r in cluster.scale(greeter=1))
        except Exception as e:  # reported below
            results[key] = e

    threads = [threading.Thread(target=shrink, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {0: ["greeter.1"], 1: ["greeter.1"]}
    assert [i.name for i in cluster.instances] == ["greeter.1"]


# -- weight / enable / disable ---------------------------------------------------------

def test_weight_enable_disable_write_the_registry(make_cluster: MakeCluster,
                                                  run_cli: Cli) -> None:
    cluster = make_cluster(scale={"greeter": 2})

    def record(name: str) -> dict[str, Any]:
        return registry_record(cluster, name)

    assert ok(run_cli("weight", "greeter.1", "5")).strip() == "greeter.1: weight 5"
    assert (record("greeter.1")["weight"], record("greeter.2")["weight"]) == (5, 1)
    assert ok(run_cli("weight", "greeter", "0")).splitlines() == [
        "greeter.1: weight 0", "greeter.2: weight 0"]
    assert ok(run_cli("disable", "greeter.2")).strip() == "greeter.2: disabled"
    assert record("greeter.2")["enabled"] is False
    assert {r.name: r.enabled for r in cluster.ps()} == {"greeter.1": True,
                                                               "greeter.2": False}
    assert ok(run_cli("enable", "greeter")).splitlines() == [
        "greeter.1: enabled", "greeter.2: enabled"]
    assert record("greeter.2")["enabled"] is True

    cluster.weight("greeter.2", 7)
    assert record("greeter.2")["weight"] == 7

    # It works with no supervisor running: the registry is a file.
    cluster.down()
    assert ok(run_cli("weight", "greeter.1", "3")).strip() == "greeter.1: weight 3"
    assert record("greeter.1")["weight"] == 3


def test_bad_weights_are_refused_and_change_nothing(tmp_path: Path) -> None:
    """The API half; the CLI's exit 2 and message are rows of test_cli_errors.py."""
    from devcluster.registry import FileRegistry, Record

    (tmp_path / "Procfile").write_text(f"greeter: {GREETER}\n")
    registry = FileRegistry(tmp_path / ".devcluster")
    registry.register(Record("greeter", "greeter", "127.0.0.1:1"))
    before = registry.path.read_bytes()
    cluster = Cluster(tmp_path / "Procfile")
    for value in (-1, "-1", "abc", "1e9", 1001, "1001", "2.5", "", True):
        with pytest.raises(UsageError, match=r"weight must be an integer 0\.\.1000"):
            cluster.weight("greeter", value)  # type: ignore[arg-type]
        assert registry.path.read_bytes() == before, value
    cluster.weight("greeter", 1000)
    assert registry.snapshot().records["greeter"].weight == 1000


def test_supervisor_registry_writes_keep_user_weights(make_cluster: MakeCluster) -> None:
    cluster = make_cluster()
    cluster.weight("greeter", 9)
    cluster.disable("greeter")
    cluster.restart("greeter")
    rec = registry_record(cluster, "greeter")
    assert (rec["weight"], rec["enabled"], rec["state"]) == (9, False, "serving")
