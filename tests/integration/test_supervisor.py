"""Issue 2, done when: real clusters of real greeters started, stopped and crashed.

Every cluster runs in the test's tmp_path with ``-p 0`` (servers pick free ports);
the autouse leak check in conftest fails any test that leaves a process behind.
The CLI runs as a subprocess where its contract (output, exit status) is the point;
elsewhere the cluster comes from ``devcluster.api.Cluster``, whose supervisor is our
own child (a detached one is reparented to pid 1, which may reap it late).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from devcluster.api import Cluster, NotReadyError
from devcluster.statedir import layout

GREETER = "python -m devcluster.greeter --port $PORT"
UP = ("-p", "0", "--grace", "1")

CONTRACT_FIELDS = {"name": str, "service": str, "state": str, "pid": int, "address": str,
                   "weight": int, "enabled": bool, "restarts": int, "uptime_s": float,
                   "cpu_percent": (int, float), "rss_bytes": int}

Cli = Callable[..., subprocess.CompletedProcess[str]]
MakeCluster = Callable[..., Cluster]
Procs = Callable[[Path], list[psutil.Process]]

#: A gRPC server (health service only) that ignores SIGINT and SIGTERM, with a forked
#: child in its process group that must die with it.
STUBBORN = """\
import os, signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    time.sleep(300)
    os._exit(0)
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(2))
servicer = health.HealthServicer()
health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
port = server.add_insecure_port("127.0.0.1:" + os.environ["PORT"])
server.start()
servicer.set("", health_pb2.HealthCheckResponse.SERVING)
print("stubborn listening on", port, flush=True)
time.sleep(300)
"""


def write_stubborn(directory: Path) -> str:
    """Write stubborn.py; return its Procfile line."""
    (directory / "stubborn.py").write_text(STUBBORN)
    return "stubborn: python stubborn.py"


def ps_json(run_cli: Cli, *args: str, cwd: Path | None = None) -> dict[str, dict[str, Any]]:
    result = run_cli("ps", "--json", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def registry_rows(state_dir: Path) -> dict[str, dict[str, Any]]:
    """The records as written on disk (cheaper than a `ps` subprocess)."""
    return json.loads((state_dir / "registry.json").read_text())["instances"]


def supervisor_pid(state_dir: Path) -> int:
    return int(layout(state_dir).lock.read_text().strip())


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    err = result.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def gone_or_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- up -d / ps / SayHello / down ------------------------------------------------------

def test_up_detached_serves_three_greeters_then_down_leaves_nothing(
        run_cli: Cli, write_procfile: Callable[..., Path], say_hello: Callable[..., Any],
        all_gone: Callable[..., bool], processes_under: Procs, tmp_path: Path) -> None:
    write_procfile(f"server1: {GREETER}", f"server2: {GREETER}", f"server3: {GREETER}")
    up = run_cli("up", "-d", *UP)
    assert up.returncode == 0, up.stderr
    for name in ("server1", "server2", "server3"):
        assert any(line.split()[:2] == [name, "serving"] for line in up.stdout.splitlines()), \
            up.stdout
    assert "NAME" in up.stdout
    assert "ready in" in up.stdout

    rows = ps_json(run_cli)
    assert sorted(rows) == ["server1", "server2", "server3"]
    addresses = set()
    for name, row in rows.items():
        for field, kind in CONTRACT_FIELDS.items():
            assert isinstance(row[field], kind), (name, field, row[field])
        assert row["state"] == "serving"
        assert row["service"] == "server"
        assert row["weight"] == 1 and row["enabled"] is True and row["restarts"] == 0
        assert row["uptime_s"] > 0 and row["rss_bytes"] > 0
        assert row["address"].startswith("127.0.0.1:")
        assert psutil.pid_exists(row["pid"])
        addresses.add(row["address"])
        message, header = say_hello(row["address"], "world")
        assert header == name
        assert message == f"Hello world from {name}"
    assert len(addresses) == 3

    pids = [row["pid"] for row in rows.values()] + [supervisor_pid(tmp_path / ".devcluster")]
    down = run_cli("down")
    assert down.returncode == 0, down.stderr
    assert "stopped 3 instances" in down.stdout
    # `down` returns when everything is gone: no waiting here.
    assert all_gone(pids)
    assert processes_under(tmp_path) == []
    assert not layout(tmp_path / ".devcluster").socket.exists()


# -- foreground up and signals ---------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_foreground_up_stops_cleanly_on_signal(
        sig: signal.Signals, foreground: Callable[..., Any], run_cli: Cli,
        write_procfile: Callable[..., Path], all_gone: Callable[..., bool],
        processes_under: Procs, tmp_path: Path) -> None:
    grace = 1.0
    write_procfile(f"greeter: {GREETER}")
    fg = foreground("-p", "0", "--grace", str(grace), "-c", "greeter=2")
    out = fg.wait_for("ready:")
    assert "ready: 2/2 serving" in out
    pids = [row["pid"] for row in registry_rows(tmp_path / ".devcluster").values()]
    assert len(pids) == 2

    began = time.monotonic()
    fg.proc.send_signal(sig)
    code = fg.proc.wait(timeout=grace + 10)
    took = time.monotonic() - began
    assert code == 0, fg.text()
    assert took <= grace + 1.0, f"took {took:.2f}s"
    assert all_gone(pids)
    assert processes_under(tmp_path) == []
    text = fg.text()
    assert "shutting down" in text and sig.name in text
    assert "greeter.1 stopped" in text and "greeter.2 stopped" in text


def test_second_signal_forces_shutdown(
        foreground: Callable[..., Any], write_procfile: Callable[..., Path], tmp_path: Path,
        processes_under: Procs) -> None:
    # A server that ignores SIGINT: the first Ctrl-C waits out the grace, the second forces.
    write_procfile(write_stubborn(tmp_path))
    fg = foreground("-p", "0", "--grace", "30")
    fg.wait_for("ready:")
    fg.proc.send_signal(signal.SIGINT)
    fg.wait_for("shutting down")
    fg.proc.send_signal(signal.SIGINT)
    assert fg.proc.wait(timeout=10) == 0
    assert "forced shutdown" in fg.text()
    assert processes_under(tmp_path) == []


def test_grace_expiry_sigkills_the_whole_group(
        make_cluster: MakeCluster, all_gone: Callable[..., bool],
        wait_until: Callable[..., Any], tmp_path: Path) -> None:
    cluster = make_cluster([write_stubborn(tmp_path)], grace=0.5)
    pid = cluster.instance("stubborn").pid
    assert pid is not None
    group = [p.pid for p in psutil.Process(pid).children(recursive=True)] + [pid]
    assert len(group) == 2
    began = time.monotonic()
    cluster.down()
    assert time.monotonic() - began < 5
    # The forked child is nobody's to reap: SIGKILL reached it, it may take a moment.
    wait_until(lambda: all_gone(group), 2.0, "the stubborn group to die")
    assert any("did not stop within 0.5s; sending SIGKILL" in line
               for line in cluster.logs(n=50))


def test_down_with_zero_grace_kills_at_once(make_cluster: MakeCluster, tmp_path: Path) -> None:
    # Regression: 0 read as "not given" (proto3 has no unset double) -> the default grace.
    cluster = make_cluster([write_stubborn(tmp_path)], grace=60)
    began = time.monotonic()
    cluster.down(grace=0)
    took = time.monotonic() - began
    assert took < 30, f"down(grace=0) took {took:.1f}s: it waited for the default grace"


# -- crashes ---------------------------------------------------------------------------

def test_supervisor_sigkill_takes_its_children_and_next_up_cleans_stale_state(
        make_cluster: MakeCluster, run_cli: Cli, foreground: Callable[..., Any],
        wait_until: Callable[..., Any], all_gone: Callable[..., bool],
        say_hello: Callable[..., Any], tmp_path: Path) -> None:
    cluster = make_cluster(scale={"greeter": 3})
    sup = supervisor_pid(cluster.state_dir)
    # Every descendant: the instances and whatever helpers the supervisor runs.
    children = [p.pid for p in psutil.Process(sup).children(recursive=True)]
    assert {i.pid for i in cluster.instances} <= set(children)

    os.kill(sup, signal.SIGKILL)
    began = time.monotonic()
    wait_until(lambda: all_gone([sup, *children]), 2.0, "every child of the SIGKILLed supervisor")
    assert time.monotonic() - began <= 2.0

    fg = foreground("-p", "0", "--grace", "1", "-c", "greeter=3")
    out = fg.wait_for("ready:")
    assert "stale" in out
    assert "ready: 3/3 serving" in out
    rows = registry_rows(tmp_path / ".devcluster")
    assert {row["state"] for row in rows.values()} == {"serving"}
    assert say_hello(rows["greeter.2"]["address"])[1] == "greeter.2"
    fg.proc.send_signal(signal.SIGINT)
    assert fg.proc.wait(timeout=10) == 0


def test_detached_up_reports_cleaned_stale_state(
        make_cluster: MakeCluster, run_cli: Cli, wait_until: Callable[..., Any],
        all_gone: Callable[..., bool]) -> None:
    # Regression: the 'cleaned stale state' line went to logs/devcluster.log only.
    cluster = make_cluster()
    children = [i.pid for i in cluster.instances]
    sup = supervisor_pid(cluster.state_dir)
    os.kill(sup, signal.SIGKILL)
    wait_until(lambda: all_gone([sup, *children]), 2.0, "the crashed cluster to be gone")
    up = run_cli("up", "-d", *UP)
    try:
        assert up.returncode == 0, up.stderr
        assert "stale" in up.stdout + up.stderr
    finally:
        cluster.down()  # reaches the new supervisor through the same state dir


def test_supervisor_sigkill_takes_what_the_instances_forked(
        make_cluster: MakeCluster, wait_until: Callable[..., Any], all_gone: Callable[..., bool],
        tmp_path: Path) -> None:
    # PR_SET_PDEATHSIG reaches only the process devcluster started; with shell syntax
    # sh -c runs the greeter as its child, and that grandchild must die too.
    cluster = make_cluster([f"greeter: {GREETER}; echo greeter ended",
                            write_stubborn(tmp_path)])
    leaders = [i.pid for i in cluster.instances]
    grandchildren = [c.pid for pid in leaders for c in psutil.Process(pid).children()]
    assert len(grandchildren) == 2  # the greeter under sh, stubborn's forked child
    os.kill(supervisor_pid(cluster.state_dir), signal.SIGKILL)
    wait_until(lambda: all_gone([*leaders, *grandchildren]), 2.0,
               "every process of every instance group to die with the supervisor")


def test_externally_killed_instance_is_restarted_and_others_keep_serving(
        make_cluster: MakeCluster, say_hello: Callable[..., Any],
        wait_until: Callable[..., Any]) -> None:
    cluster = make_cluster(scale={"greeter": 3})
    before = {i.name: i for i in cluster.instances}
    victim = before["greeter.2"]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)  # not through devcluster: a real crash

    def back() -> Any:
        info = cluster.instance("greeter.2")
        return info if info.state == "serving" and info.pid != victim.pid else None

    # Others answer while it is down and while it comes back.
    for name in ("greeter.1", "greeter.3"):
        assert say_hello(before[name].address)[1] == name
    info = wait_until(back, 10.0, "greeter.2 to be restarted by the on-failure policy")
    assert info.restarts == 1
    assert info.address == victim.address  # same port on restart
    assert say_hello(info.address)[1] == "greeter.2"
    for name in ("greeter.1", "greeter.3"):
        now = cluster.instance(name)
        assert (now.pid, now.state, now.restarts) == (before[name].pid, "serving", 0)
        assert say_hello(now.address)[1] == name
    merged = "\n".join(cluster.logs(n=200))
    assert "greeter.2 exited by itself (signal SIGKILL)" in merged
    assert "greeter.2 restarting in 0.5s" in merged


# -- graceful shutdown lets in-flight calls finish -------------------------------------

@pytest.mark.parametrize("how", ["SIGINT", "down"])
def test_slow_call_started_before_shutdown_completes(
        how: str, foreground: Callable[..., Any], run_cli: Cli,
        write_procfile: Callable[..., Path], say_hello: Callable[..., Any],
        wait_until: Callable[..., Any], tmp_path: Path) -> None:
    write_procfile(f"greeter: {GREETER}")
    fg = foreground("-p", "0", "--grace", "5")
    fg.wait_for("ready:")
    address = registry_rows(tmp_path / ".devcluster")["greeter"]["address"]
    log = tmp_path / ".devcluster" / "logs" / "greeter.log"

    result: dict[str, Any] = {}

    def call() -> None:
        try:
            result["reply"] = say_hello(address, "slow", delay_ms=1500)
        except Exception as e:  # reported below
            result["error"] = e

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(lambda: "Received: slow" in log.read_text(), 10.0, "the slow call to arrive")
    began = time.monotonic()
    down: dict[str, subprocess.CompletedProcess[str]] = {}
    downer = threading.Thread(target=lambda: down.update(result=run_cli("down")))
    if how == "SIGINT":
        fg.proc.send_signal(signal.SIGINT)
    else:
        downer.start()  # `down` returns once `up` is gone: reap `up` meanwhile
    caller.join(15)
    assert not caller.is_alive()
    assert "error" not in result, result.get("error")
    assert result["reply"] == ("Hello slow from greeter", "greeter")
    assert fg.proc.wait(timeout=10) == 0
    if how == "down":
        downer.join(15)
        assert down["result"].returncode == 0, down["result"].stderr
        assert "stopped 1 instances" in down["result"].stdout
    # The call kept the server up; it was not cut short by a SIGKILL.
    assert time.monotonic() - began < 5
    assert "sending SIGKILL" not in fg.text()


def test_down_returns_promptly_when_up_is_not_yet_reaped(
        foreground: Callable[..., Any], run_cli: Cli,
        write_procfile: Callable[..., Path]) -> None:
    # Regression: `down` waited on the supervisor with psutil's wait, which counts an
    # unreaped (zombie) process as running: 30 s until the parent of `up` reaped it.
    write_procfile(f"greeter: {GREETER}")
    fg = foreground(*UP)
    fg.wait_for("ready:")
    try:
        # Like a script: reap `up` only after `down` returned.
        # 10 s: far under the bug's 30 s, and safe on a loaded 2-core machine.
        assert run_cli("down", timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        pytest.fail("`down` did not return within 10 s of a clean shutdown")
    finally:
        assert fg.proc.wait(timeout=5) == 0


# -- refusals and failures -------------------------------------------------------------

def test_second_up_in_the_same_dir_is_refused_naming_the_pid(
        make_cluster: MakeCluster, run_cli: Cli, tmp_path: Path) -> None:
    cluster = make_cluster()
    pid = supervisor_pid(cluster.state_dir)
    registry_before = (cluster.state_dir / "registry.json").read_bytes()
    for args in (("up", "-d", *UP), ("up", *UP)):
        again = run_cli(*args)
        assert again.returncode == 1
        err = one_line_error(again)
        assert "already running" in err
        assert f"pid {pid}" in err
    assert cluster.instance("greeter").state == "serving"
    assert (cluster.state_dir / "registry.json").read_bytes() == registry_before


def test_two_clusters_side_by_side_with_state_dirs(
        make_cluster: MakeCluster, run_cli: Cli, tmp_path: Path) -> None:
    a = make_cluster(state_dir=tmp_path / "a")
    b = make_cluster(state_dir=tmp_path / "b")
    row_a = ps_json(run_cli, "--state-dir", str(a.state_dir))["greeter"]
    row_b = ps_json(run_cli, "--state-dir", str(b.state_dir))["greeter"]
    assert row_a["pid"] != row_b["pid"]
    assert row_a["address"] != row_b["address"]
    # DEVCLUSTER_HOME picks the state dir too.
    home = run_cli("ps", "--json", env={**os.environ, "DEVCLUSTER_HOME": str(b.state_dir)})
    assert home.returncode == 0, home.stderr
    assert json.loads(home.stdout)[0]["pid"] == row_b["pid"]


def test_up_detached_with_an_instance_that_cannot_start(
        run_cli: Cli, write_procfile: Callable[..., Path], say_hello: Callable[..., Any]) -> None:
    procfile = write_procfile(f"greeter: {GREETER}",
                              "bad: python -c \"import sys; print('boom'); sys.exit(3)\"")
    up = run_cli("up", "-d", *UP, "-c", "greeter=2", "--restart", "bad=no", "--json")
    try:
        assert up.returncode == 1
        err = one_line_error(up)
        assert "bad exited (exit 3)" in err
        assert "boom" in err  # its last log lines
        assert "keeps running" in err
        rows = {row["name"]: row for row in json.loads(up.stdout)}
        assert sorted(rows) == ["bad", "greeter.1", "greeter.2"]
        assert (rows["bad"]["state"], rows["bad"]["last_exit"]) == ("exited", "exit 3")
        rows = ps_json(run_cli)  # the cluster keeps running
        for name in ("greeter.1", "greeter.2"):
            assert rows[name]["state"] == "serving"
            assert say_hello(rows[name]["address"])[1] == name
        assert rows["bad"]["state"] == "exited"
    finally:
        Cluster(procfile).down()  # a detached `down` would also wait for pid 1 to reap


def test_up_with_a_missing_command(make_cluster: MakeCluster) -> None:
    cluster = make_cluster([f"greeter: {GREETER}", "ghost: no-such-command-xyz --port $PORT"],
                           start=False)
    with pytest.raises(NotReadyError) as e:
        cluster.up()
    assert "ghost failed" in str(e.value) and "no-such-command-xyz" in str(e.value)
    assert cluster.instance("ghost").state == "failed"
    assert cluster.instance("greeter").state == "serving"


def test_a_server_that_never_listens_times_out(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(["mute: python -c 'import time; time.sleep(60)'"], start=False,
                           ready_timeout=1)
    with pytest.raises(NotReadyError, match=r"mute starting \(not answering\)"):
        cluster.up()
    assert cluster.instance("mute").state == "starting"


def test_a_plain_tcp_server_becomes_serving(make_cluster: MakeCluster) -> None:
    # Regression: the health probe's wait_for_ready turned every non-gRPC answer into
    # DEADLINE_EXCEEDED, which never counted toward the TCP-connect fallback.
    cluster = make_cluster(["web: python -m http.server $PORT --bind 127.0.0.1"], start=False,
                           ready_timeout=4)
    cluster.up()
    assert cluster.instance("web").state == "serving"


# -- logs ------------------------------------------------------------------------------

def test_logs_files_and_logs_command(make_cluster: MakeCluster, run_cli: Cli,
                                     say_hello: Callable[..., Any],
                                     wait_until: Callable[..., Any], tmp_path: Path) -> None:
    cluster = make_cluster(scale={"greeter": 2})
    address = cluster.instance("greeter.1").address
    for n in range(3):
        say_hello(address, f"call{n}")
    log = tmp_path / ".devcluster" / "logs" / "greeter.1.log"
    wait_until(lambda: "Received: call2" in log.read_text(), 5.0, "the log lines")
    lines = log.read_text().splitlines()
    assert sum("Received: call" in line for line in lines) == 3
    assert (tmp_path / ".devcluster" / "logs" / "greeter.2.log").is_file()

    tail = run_cli("logs", "greeter.1", "-n", "2")
    assert tail.returncode == 0, tail.stderr
    assert len(tail.stdout.splitlines()) == 2
    assert tail.stdout.splitlines()[-1].endswith("Received: call2")

    merged = run_cli("logs", "-n", "100")
    assert merged.returncode == 0
    assert "greeter.1" in merged.stdout and "Received: call0" in merged.stdout

    unknown = run_cli("logs", "nope")
    assert unknown.returncode == 1  # a well-formed name the cluster lacks (issue 16)
    assert "greeter.1" in one_line_error(unknown)


# -- the state dir ---------------------------------------------------------------------

def test_socket_and_state_dir_are_private(make_cluster: MakeCluster) -> None:
    cluster = make_cluster()
    sock = layout(cluster.state_dir).socket
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(cluster.state_dir).st_mode) == 0o700


def test_long_state_dir_path(make_cluster: MakeCluster, run_cli: Cli,
                             say_hello: Callable[..., Any], write_procfile: Callable[..., Path],
                             tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    write_procfile(f"greeter: {GREETER}", directory=deep)
    sock = layout(deep / ".devcluster").socket
    assert len(str(sock)) > 108
    cluster = Cluster(deep / "Procfile", port=0, grace=1)
    with cluster:
        rows = ps_json(run_cli, cwd=deep)  # the CLI finds it too
        assert rows["greeter"]["state"] == "serving"
        assert say_hello(rows["greeter"]["address"])[1] == "greeter"
        real = Path(os.path.realpath(sock))
        assert len(str(real)) < 108
        assert stat.S_ISSOCK(os.stat(real).st_mode)
        assert stat.S_IMODE(os.stat(real).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(real.parent).st_mode) == 0o700
    assert not sock.is_symlink() and not sock.exists()
    assert not real.exists()


def test_long_path_socket_dir_is_private_even_if_precreated(
        make_cluster: MakeCluster, write_procfile: Callable[..., Path],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Regression: an existing $TMPDIR/devcluster-<uid> was used whatever its owner/mode.
    hostile = tmp_path / "tmp"
    squatted = hostile / f"devcluster-{os.getuid()}"
    squatted.mkdir(parents=True)
    squatted.chmod(0o777)
    monkeypatch.setenv("TMPDIR", str(hostile))
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    write_procfile(f"greeter: {GREETER}", directory=deep)
    with Cluster(deep / "Procfile", port=0, grace=1) as cluster:
        real = Path(os.path.realpath(layout(cluster.state_dir).socket))
        parent = real.parent.stat()
        assert parent.st_uid == os.getuid()
        assert stat.S_IMODE(parent.st_mode) & 0o077 == 0, oct(parent.st_mode)


# -- the Python API cleans up after failures -------------------------------------------

def test_cluster_context_manager_cleans_up_when_the_body_raises(
        write_procfile: Callable[..., Path], all_gone: Callable[..., bool]) -> None:
    procfile = write_procfile(f"greeter: {GREETER}")
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="test failed"), \
            Cluster(procfile, port=0, grace=1, scale={"greeter": 2}) as cluster:
        pids = [i.pid for i in cluster.instances if i.pid]
        raise RuntimeError("test failed")
    assert len(pids) == 2
    assert all_gone(pids)


def test_cluster_context_manager_cleans_up_when_up_fails(
        write_procfile: Callable[..., Path], processes_under: Procs, tmp_path: Path) -> None:
    procfile = write_procfile(f"greeter: {GREETER}", 'bad: python -c "import sys; sys.exit(3)"')
    with pytest.raises(NotReadyError, match=r"bad exited \(exit 3\)"), \
            Cluster(procfile, port=0, grace=1, restart={"bad": "no"}):
        pass
    assert processes_under(tmp_path) == []


def test_cluster_started_from_a_thread_outlives_the_thread(
        make_cluster: MakeCluster, wait_until: Callable[..., Any]) -> None:
    # Regression: PR_SET_PDEATHSIG fires when the forking *thread* ends.
    cluster = make_cluster(start=False)
    starter = threading.Thread(target=cluster.up)
    starter.start()
    starter.join(30)
    sup = supervisor_pid(cluster.state_dir)
    # Give a PDEATHSIG the time it takes to land: the supervisor must still be there.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and not gone_or_zombie(sup):
        time.sleep(0.05)
    assert not gone_or_zombie(sup)
    assert cluster.instance("greeter").state == "serving"


def test_cluster_dies_with_the_python_process_that_started_it(
        write_procfile: Callable[..., Path], wait_until: Callable[..., Any],
        processes_under: Procs, tmp_path: Path) -> None:
    import sys

    procfile = write_procfile(f"greeter: {GREETER}")
    script = ("import time\n"
              "from devcluster.api import Cluster\n"
              f"c = Cluster({str(procfile)!r}, port=0, grace=1, scale={{'greeter': 2}})\n"
              "c.up()\n"
              "print('up', flush=True)\n"
              "time.sleep(120)\n")
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             text=True, cwd=tmp_path)
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "up"
        assert len(processes_under(tmp_path)) >= 4  # owner, supervisor, 2 greeters
    finally:
        owner.kill()  # a test runner killed mid-test
        owner.wait()
        owner.stdout.close()  # type: ignore[union-attr]
    wait_until(lambda: not processes_under(tmp_path), 3.0,
               "the cluster of a SIGKILLed owner to die")


# -- one instance schema (issue 15) ------------------------------------------------------

def test_every_path_gives_the_same_instance_keys_and_no_placeholders(
        run_cli: Cli, write_procfile: Callable[..., Path], tmp_path: Path) -> None:
    from dataclasses import fields

    from devcluster.api import Cluster
    from devcluster.registry import FileRegistry
    from devcluster.schema import InstanceInfo

    keys = [f.name for f in fields(InstanceInfo)]
    write_procfile(f"greeter: {GREETER}", "idle: sleep 300")
    up = run_cli("up", "-d", *UP, "-c", "greeter=2", "--ready-timeout", "2", "--json")
    try:
        assert up.returncode == 1, up.stderr  # `idle` never listens: not serving
        from_up = {r["name"]: r for r in json.loads(up.stdout)}
        assert run_cli("weight", "greeter.2", "7").returncode == 0
        from_ps = ps_json(run_cli)
        from_api = {i.name: i.to_dict() for i in Cluster(tmp_path / "Procfile").instances}
        snap = FileRegistry(tmp_path / ".devcluster").snapshot()
        from_registry = {n: InstanceInfo.from_record(r).to_dict() for n, r in snap.records.items()}
        for rows in (from_up, from_ps, from_api, from_registry):
            assert sorted(rows) == ["greeter.1", "greeter.2", "idle"]
            assert all(list(row) == keys for row in rows.values())
        # The truth, never a placeholder: the weight the registry holds, measured memory.
        assert from_ps["greeter.2"]["weight"] == from_api["greeter.2"]["weight"] == 7
        assert from_up["greeter.1"]["weight"] == 1 and from_up["greeter.1"]["rss_bytes"] > 0
        assert from_ps["idle"]["state"] == "starting" and from_ps["idle"]["address"] is None
        # What a registry record cannot know is null, not 0.
        assert from_registry["greeter.1"]["cpu_percent"] is None
        assert from_registry["greeter.1"]["rss_bytes"] is None
    finally:
        assert run_cli("down").returncode == 0


def test_a_start_up_error_reaches_the_api_as_data(make_cluster: MakeCluster) -> None:
    # The daemon finds the port taken; the API raises the same error class, with the
    # instance it is about, from the data the daemon sent (no stderr line parsed back).
    import socket

    from devcluster.errors import DevclusterError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cluster = make_cluster([f"greeter: {GREETER}"], start=False, port=port)
        with pytest.raises(DevclusterError) as caught:
            cluster.up()
    assert type(caught.value) is DevclusterError
    assert caught.value.instance == "greeter"
    assert f"port {port} for greeter is already in use" in str(caught.value)
