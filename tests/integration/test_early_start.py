"""Instances started between the supervisor's fork and exec (``up -d``), then adopted.

- ``up -d`` starts every instance before the supervisor's interpreter runs; the
  supervisor adopts them (its children, its mark), says so in its log, and they serve.
- A restart starts a process with the same supervisor mark (the orphan watchdog's).
- Killing the supervisor with SIGKILL takes the early instances with it (PDEATHSIG
  survives the exec: the parent is the same process).
- An early process the supervisor would not start the same way is stopped, and a
  process with more than one thread starts nothing early (code after fork is unsafe).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from devcluster.statedir import layout, running_pid

GREETER = "python -m devcluster.greeter --port $PORT"
#: A TCP server that leaves every signal as it found it (the greeter handles SIGINT).
LISTENER = ("python -c 'import os, socket, time; s = socket.socket(); "
            "s.bind((\"127.0.0.1\", int(os.environ[\"PORT\"]))); s.listen(); time.sleep(60)'")


def _mark(pid: int) -> str:
    return psutil.Process(pid).environ().get("DEVCLUSTER_SUPERVISOR", "")


def _rows(run_cli: Callable[..., Any], tmp_path: Path) -> dict[str, dict[str, Any]]:
    ps = run_cli("ps", "--json", "--state-dir", str(tmp_path / "st"))
    assert ps.returncode == 0, ps.stderr
    return {r["name"]: r for r in json.loads(ps.stdout)}


def _up_greeters(run_cli: Callable[..., Any], tmp_path: Path, n: int) -> str:
    """``up -d`` of ``n`` greeters in ``tmp_path``; its state dir."""
    (tmp_path / "Procfile").write_text(f"greeter: {GREETER}\n")
    st = str(tmp_path / "st")
    up = run_cli("up", "-d", "-p", "0", "-c", f"greeter={n}", "--state-dir", st)
    assert up.returncode == 0, up.stderr
    return st


def test_up_d_starts_the_instances_before_the_supervisor_and_adopts_them(
        tmp_path: Path, run_cli: Callable[..., Any], wait_until: Callable[..., Any]) -> None:
    st = _up_greeters(run_cli, tmp_path, 3)
    try:
        log = layout(Path(st)).logs.joinpath("devcluster.log").read_text()
        assert log.count(", started early): ") == 3, log
        supervisor = running_pid(Path(st))
        assert supervisor
        rows = _rows(run_cli, tmp_path)
        assert {r["state"] for r in rows.values()} == {"serving"}
        pids = [r["pid"] for r in rows.values()]
        assert all(psutil.Process(p).ppid() == supervisor for p in pids)
        marks = {_mark(p) for p in pids}
        assert len(marks) == 1 and marks != {""}, marks
        # A restart is the supervisor's own start: the same mark for its watchdog.
        restart = run_cli("restart", "greeter.2", "--state-dir", st)
        assert restart.returncode == 0, restart.stderr
        new = wait_until(lambda: (r := _rows(run_cli, tmp_path)["greeter.2"])["state"]
                         == "serving" and r["pid"] not in pids and r["pid"], 20,
                         "greeter.2 serving again under a new pid")
        assert _mark(new) in marks
    finally:
        run_cli("down", "--state-dir", st)


def test_sigkill_of_the_supervisor_takes_the_early_instances_with_it(
        tmp_path: Path, run_cli: Callable[..., Any], wait_until: Callable[..., Any]) -> None:
    st = _up_greeters(run_cli, tmp_path, 2)
    pids = [r["pid"] for r in _rows(run_cli, tmp_path).values()]
    supervisor = running_pid(Path(st))
    assert supervisor and "started early" in layout(Path(st)).logs.joinpath(
        "devcluster.log").read_text()
    os.kill(supervisor, signal.SIGKILL)

    def gone() -> bool:
        return not any(psutil.pid_exists(p) and psutil.Process(p).status()
                       != psutil.STATUS_ZOMBIE for p in pids)

    wait_until(gone, 5, "the early instances to die with their supervisor")


#: Runs in the process a Plan spawned into: takes one instance as planned, refuses
#: the other (another command line), and says what it found.
_ADOPTER = textwrap.dedent("""
    import json, os, sys
    from devcluster.supervisor import early
    early.receive()
    same, other = json.loads(sys.argv[1])
    kept = early.take("same", *same)
    refused = early.take("other", *other)
    print(json.dumps({"kept": kept, "refused": refused, "mark": early.mark()}), flush=True)
    os.killpg(kept[0], 9)
    os.waitpid(kept[0], 0)
""")

#: A one-thread process (the pytest worker may have more): plans, runs the adopter.
_LAUNCHER = textwrap.dedent("""
    import json, os, subprocess, sys
    from devcluster.supervisor import early
    cwd, adopter = sys.argv[1], sys.argv[2]
    env = dict(os.environ)
    sleep = ("sleep", "4321")
    plan = early.Plan([early.Start("same", sleep, env, cwd), early.Start("other", sleep, env, cwd)])
    asked = json.dumps([[list(sleep), env, cwd], [["sleep", "4322"], env, cwd]])
    try:
        done = subprocess.Popen([sys.executable, "-c", adopter, asked], env=plan.environment(env),
                                pass_fds=plan.fds(), preexec_fn=plan.spawn)
    finally:
        plan.close()  # as the launcher does: the hand-over ends when our copy is closed
    sys.exit(done.wait(30))
""")


def test_an_early_process_started_otherwise_is_stopped(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, str(tmp_path), _ADOPTER],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout)
    assert said["kept"] and said["refused"] is None and said["mark"]
    # The refused one was SIGKILLed (its zombie went with the adopter, its parent).
    assert not [p for p in psutil.process_iter(["cmdline"])
                if p.info["cmdline"] == ["sleep", "4321"]]


_THREADED = textwrap.dedent("""
    import json, sys, threading
    from devcluster.supervisor import early
    from devcluster.supervisor.request import boot_view
    view = boot_view(sys.argv[1])
    alone = early.plan(view, {}, 1.0)
    print([s.name for s in alone.starts] if alone else None)
    stop = threading.Event()
    helper = threading.Thread(target=stop.wait)
    helper.start()
    print(early.plan(view, {}, 1.0))
    stop.set()
""")


def test_a_threaded_process_starts_nothing_early(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text("sleeper: sleep 60\n")
    view = json.dumps({"procfile": str(tmp_path / "Procfile"),
                       "state_dir": str(tmp_path / "st"), "base_port": 0})
    done = subprocess.run([sys.executable, "-c", _THREADED, view], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["['sleeper']", "None"]


_IGNORING = textwrap.dedent("""
    import json, signal, sys
    from devcluster.api import Cluster
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a script's background job
    cluster = Cluster(sys.argv[1], port=0, grace=1.0, state_dir=sys.argv[2])
    cluster.up()
    try:
        masks = {}
        for info in cluster.instances:
            with open(f"/proc/{info.pid}/status") as f:
                line = next(x for x in f if x.startswith("SigIgn:"))
            masks[info.name] = int(line.split()[1], 16)
        print(json.dumps(masks))
    finally:
        cluster.down()
""")


def test_instances_started_early_by_a_process_that_ignores_sigint_still_heed_it(
        tmp_path: Path) -> None:
    procfile = tmp_path / "Procfile"
    procfile.write_text(f"listener: {LISTENER}\n")
    (tmp_path / "devcluster.toml").write_text("[process.listener]\nready = {tcp = true}\n")
    done = subprocess.run([sys.executable, "-c", _IGNORING, str(procfile), str(tmp_path / "st")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    log = layout(tmp_path / "st").logs.joinpath("devcluster.log").read_text()
    assert "started early" in log
    masks = json.loads(done.stdout)
    assert masks and not any(mask & (1 << (signal.SIGINT - 1)) for mask in masks.values()), masks


def test_an_early_instance_that_exits_at_once_keeps_its_exit_status(
        tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    # The first one exits while the next ones are being started: its status must stay
    # for the supervisor to collect (a dropped Popen is reaped by the next Popen).
    (tmp_path / "Procfile").write_text("quick: sh -c 'exit 3'\n"
                                       + "".join(f"sleeper{i}: sleep 60\n" for i in range(8)))
    up = run_cli("up", "-d", "-p", "0", "--restart", "quick=no", "--ready-timeout", "0.5",
                 "--state-dir", str(tmp_path / "st"))
    try:
        assert ", started early): " in layout(tmp_path / "st").logs.joinpath(
            "devcluster.log").read_text()
        assert "quick exited (exit 3)" in up.stderr, up.stderr
    finally:
        run_cli("down", "--state-dir", str(tmp_path / "st"))


def test_the_cli_forks_itself_into_the_supervisor_and_names_it(
        tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    from devcluster.pytest_plugin.leaks import _short

    (tmp_path / "Procfile").write_text(f"greeter: {GREETER}\n")
    st = tmp_path / "st"
    up = run_cli("up", "-d", "-p", "0", "--state-dir", str(st))  # output captured: no fd kept
    assert up.returncode == 0, up.stderr
    try:
        supervisor = running_pid(st)
        assert supervisor
        said = layout(st).daemon_out.read_text()
        assert f"supervisor pid {supervisor}: forked from `devcluster up -d`" in said
        argv = psutil.Process(supervisor).cmdline()
        assert "devcluster.daemon" in argv and "--state-dir" in argv, argv
        # The pytest plugin's leak guard names it as it names an exec'd supervisor.
        assert _short(argv, psutil.Process(supervisor)) == f"devcluster supervisor, state dir {st}"
        assert _rows(run_cli, tmp_path)["greeter"]["state"] == "serving"
    finally:
        assert run_cli("down", "--state-dir", str(st)).returncode == 0


def test_a_foreground_up_starts_its_instances_before_it_imports_the_supervisor(
        tmp_path: Path, foreground: Callable[..., Any], run_cli: Callable[..., Any]) -> None:
    (tmp_path / "Procfile").write_text(f"greeter: {GREETER}\n")
    up = foreground("-p", "0", "-c", "greeter=2")
    text = up.wait_for("ready: 2/2 serving")
    assert text.count(", started early): ") == 2, text
    # Its state dir was locked before anything started: a second `up` starts nothing.
    again = run_cli("up", "-p", "0", "-c", "greeter=2")
    assert again.returncode == 1 and "already running" in again.stderr
    assert len([p for p in psutil.process_iter(["cmdline"])
                if p.info["cmdline"] and "devcluster.greeter" in " ".join(p.info["cmdline"])
                and psutil.Process(p.pid).ppid() == up.proc.pid]) == 2
