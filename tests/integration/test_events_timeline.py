"""The supervisor's timeline (issue 20), read through the API and the CLI: a kill names
who asked, the state change and the exit signal; a crash shows the restart policy at
work; a weight written to the registry by anyone shows up too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devcluster.events import Event, EventKind
from tests.conftest import cli_env, devcluster_argv

GREETER = "python -m devcluster.greeter --port $PORT"
TWO = (f"server1: {GREETER}", f"server2: {GREETER}")


def _find(events: list[Event], kind: str, name: str | None, **fields: Any) -> Event:
    for e in events:
        if e.kind == kind and e.instance == name and all(
                getattr(e, k) == v for k, v in fields.items()):
            return e
    raise AssertionError(f"no {kind} {name} {fields} in:\n" +
                         "\n".join(e.describe() for e in events))


def test_api_timeline_of_a_kill_a_crash_and_a_weight(
        make_cluster: Callable[..., Any], wait_until: Callable[..., Any]) -> None:
    cluster = make_cluster(TWO)
    began = time.time()
    me = f"pid {os.getpid()}"
    cluster.kill("server2")
    crashed = cluster.instance("server1").pid
    os.kill(crashed, signal.SIGKILL)  # from outside: the restart policy's business
    wait_until(lambda: cluster.instance("server1").state == "serving"
               and cluster.instance("server1").restarts == 1, 20, "server1 restarted")
    cluster.weight("server1", 3)
    wait_until(lambda: any(e.kind == EventKind.WEIGHT for e in cluster.events()), 10,
               "the weight change in the timeline")

    events = cluster.events(since=began)
    assert all(e.time >= began for e in events)
    asked = _find(events, "asked", "server2", who=me, detail="kill SIGKILL")
    killed = _find(events, "state", "server2", old="serving", new="killed", who=me)
    exited = _find(events, "exited", "server2", signal="SIGKILL", code=None, who=me)
    assert asked.time <= exited.time <= killed.time

    _find(events, "exited", "server1", signal="SIGKILL", who=None)
    _find(events, "state", "server1", old="serving", new="backoff")
    restarted = _find(events, "restarted", "server1", new=1, who="restart policy")
    started = _find(events, "started", "server1", new=cluster.instance("server1").pid)
    # The policy's restart and the new process's start are one step: adjacent in
    # server1's timeline, with nothing (an exit, another start) between them.
    mine = [e for e in events if e.instance == "server1"]
    assert abs(mine.index(started) - mine.index(restarted)) == 1, \
        [e.describe() for e in mine]
    _find(events, "weight", "server1", old=1, new=3, source="registry")
    assert killed.describe() == f"server2 serving -> killed (asked by {me})"


def test_a_fresh_timeline_per_up_the_last_one_kept(make_cluster: Callable[..., Any]) -> None:
    cluster = make_cluster(TWO[:1])
    first = [e.new for e in cluster.events() if e.kind == EventKind.STARTED]
    cluster.down()
    _find(cluster.events(), "asked", None, detail="down")  # still readable after down
    cluster.up()
    again = [e.new for e in cluster.events() if e.kind == EventKind.STARTED]
    assert len(first) == len(again) == 1 and first != again
    previous = cluster.state_dir / "events.1.jsonl"
    assert str(first[0]) in previous.read_text()
    assert oct(os.stat(cluster.state_dir / "events.jsonl").st_mode & 0o777) == "0o600"


def _follow(tmp_path: Path) -> tuple[subprocess.Popen[str], list[dict[str, Any]], threading.Thread]:
    """``devcluster events -f --json`` in the background; its lines collected as they come."""
    proc = subprocess.Popen(devcluster_argv("events", "-f", "--json"), cwd=tmp_path,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL, start_new_session=True)
    seen: list[dict[str, Any]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return proc, seen, reader


def test_cli_events_kill_weight_and_follow(
        tmp_path: Path, write_procfile: Callable[..., Path], run_cli: Callable[..., Any],
        wait_until: Callable[..., Any]) -> None:
    write_procfile(*TWO)
    none = run_cli("events")
    assert none.returncode == 1 and "no cluster has run" in none.stderr
    assert "Traceback" not in none.stderr and len(none.stderr.splitlines()) == 1
    assert run_cli("up", "-d", "-p", "0", "--grace", "1").returncode == 0
    follower, followed, reader = _follow(tmp_path)
    try:
        assert run_cli("kill", "server2").returncode == 0
        assert run_cli("weight", "server1", "5").returncode == 0
        wait_until(lambda: any(d["kind"] == "weight" for d in followed), 15,
                   "`events -f` printing the weight change")
        assert {"time", "kind", "instance", "old", "new", "code", "signal", "who", "source",
                "detail"} == set(followed[0])
        exits = [d for d in followed if d["kind"] == "exited" and d["instance"] == "server2"]
        assert exits and exits[0]["signal"] == "SIGKILL" and exits[0]["who"].startswith("pid ")
    finally:
        follower.send_signal(signal.SIGINT)  # Ctrl-C ends a follow
        try:
            assert follower.wait(10) == 0
        finally:
            follower.kill()
            reader.join(5)
    text = run_cli("events").stdout
    assert "server2 kill SIGKILL (asked by pid" in text
    assert "server2 serving -> killed (asked by pid" in text
    assert "server2 exited (signal SIGKILL)" in text
    assert "server1 weight 1 -> 5" in text
    recent = run_cli("events", "--since", "600", "--json").stdout.splitlines()
    assert [json.loads(x)["kind"] for x in recent][:1] == ["added"]
    assert run_cli("events", "--since", "-1").returncode == 2
    assert run_cli("down").returncode == 0
