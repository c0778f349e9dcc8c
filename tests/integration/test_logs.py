"""Issue 26 item 8 in a real cluster: logs are capped and rotated, each line is on disk
once, a deleted log is written again, and the merged view is built from the files.

The instances are small Python scripts (no port: ready on a log line); the state dir
is the test's tmp_path.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from devcluster.api import Cluster
from devcluster.statedir import layout
from tests.conftest import cli_env, devcluster_argv

Cli = Callable[..., subprocess.CompletedProcess[str]]
MakeCluster = Callable[..., Cluster]

#: Prints "begin"; for each new ./go-N file, N numbered lines of 100 bytes (in writes
#: of 100 lines, PAUSE seconds apart), then "flood TOTAL done"; sleeps in between.
FLOODER = """\
import os, sys, time
print("begin", flush=True)
seen, done, pause = set(), 0, float(os.environ.get("PAUSE", "0"))
while True:
    for name in sorted(f for f in os.listdir(".") if f.startswith("go-") and f not in seen):
        seen.add(name)
        n = int(name[3:])
        for start in range(0, n, 100):
            sys.stdout.write("".join(f"line {done + i:07d} {'x' * 86}\\n"
                                     for i in range(start, min(n, start + 100))))
            sys.stdout.flush()
            time.sleep(pause)
        done += n
        print(f"flood {done} done", flush=True)
    time.sleep(0.02)  # polls: a test's go-file has no event a script can block on
"""

#: A tick every 20 ms, numbered.
TICKER = ("import itertools, time\n"
          "for i in itertools.count():\n"
          "    print(f'tick {i}', flush=True)\n"
          "    time.sleep(0.02)\n")

CAP = 65536
STAMPED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6} ")


def flood_cluster(make_cluster: MakeCluster, tmp_path: Path, keep: int = 2,
                  pause: float = 0.0) -> Cluster:
    (tmp_path / "flood.py").write_text(FLOODER)
    (tmp_path / "devcluster.toml").write_text(
        f'[process.flood]\nlog_max = "64KiB"\nlog_keep = {keep}\nready = {{ log = "^begin" }}\n'
        f'env = {{ PAUSE = "{pause}" }}\n')
    return make_cluster([f"flood: {sys.executable} flood.py"])


def numbers(lines: list[str]) -> list[int]:
    return [int(m.group(1)) for ln in lines if (m := re.search(r"line (\d{7}) ", ln))]


def file_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines()


def test_a_flood_is_capped_and_rotated_and_each_line_is_written_once(
        make_cluster: MakeCluster, tmp_path: Path, wait_until: Callable[..., Any]) -> None:
    cluster = flood_cluster(make_cluster, tmp_path)
    logs = cluster.state_dir / "logs"
    (tmp_path / "go-20000").touch()  # 20,000 lines: about 2.4 MB written
    wait_until(lambda: any("flood 20000 done" in ln for ln in cluster.logs("flood", 1)),
               60, "the end of the flood")
    files = [logs / "flood.log.2", logs / "flood.log.1", logs / "flood.log"]
    assert not (logs / "flood.log.3").exists()
    assert all(0 < p.stat().st_size <= CAP for p in files), [p.stat().st_size for p in files]
    kept = [ln for p in files for ln in file_lines(p)]
    assert all(STAMPED.match(ln) for ln in kept)
    got = numbers(kept)  # the newest lines, each once, in order, none missing
    assert got == list(range(20000 - len(got), 20000)) and len(got) > 1000
    own = file_lines(logs / "devcluster.log")  # the supervisor's lines only
    assert any("flood started" in ln for ln in own) and not numbers(own)


def test_a_deleted_log_is_written_again_and_no_deleted_file_stays_open(
        make_cluster: MakeCluster, tmp_path: Path, wait_until: Callable[..., Any]) -> None:
    (tmp_path / "tick.py").write_text(TICKER)
    (tmp_path / "devcluster.toml").write_text('[process.tick]\nready = { log = "tick 2" }\n')
    cluster = make_cluster([f"tick: {sys.executable} tick.py"])
    logs = cluster.state_dir / "logs"
    for path in logs.glob("*.log"):
        path.unlink()  # `rm .devcluster/logs/*.log`

    def ticks() -> list[int]:
        path = logs / "tick.log"
        return [int(ln.rsplit(" ", 1)[1]) for ln in file_lines(path)] if path.exists() else []

    wait_until(lambda: len(ticks()) >= 3, 10, "new lines in a new tick.log")
    assert ticks() == list(range(ticks()[0], ticks()[0] + len(ticks())))
    said = file_lines(logs / "devcluster.log")
    assert any("log file(s) deleted" in ln and "tick.log" in ln for ln in said), said
    supervisor = psutil.Process(int(layout(cluster.state_dir).lock.read_text()))
    held = [f.path for f in supervisor.open_files() if "/logs/" in f.path]
    assert held and not [p for p in held if not Path(p).exists()], held


def test_the_merged_view_interleaves_the_supervisor_and_the_instances_in_order(
        make_cluster: MakeCluster, tmp_path: Path, run_cli: Cli) -> None:
    (tmp_path / "tick.py").write_text(TICKER)
    (tmp_path / "devcluster.toml").write_text('[process.tick]\nready = { log = "tick 3" }\n')
    cluster = make_cluster([f"tick: {sys.executable} tick.py"])
    cluster.restart("tick")
    shown = run_cli("logs", "-n", "100000")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d (devcluster|tick      ) \| .*", ln)
               for ln in lines), lines[:5]

    def at(fragment: str, after: int = -1) -> int:
        return next(i for i, ln in enumerate(lines) if i > after and fragment in ln)

    started = at("devcluster | tick started (pid")
    first_tick = at("tick       | tick 0", started)
    serving = at("devcluster | tick serving on no port (log line 'tick 3'", at("| tick 3"))
    stopping = at("devcluster | tick stopped", serving)
    again = at("devcluster | tick started (pid", stopping)
    assert started < first_tick < serving < stopping < again < at("| tick 0", again)
    assert cluster.logs(None, 100000)[:len(lines)] == lines  # the API: the same view
    as_json = run_cli("logs", "-n", "1", "--json")
    assert re.fullmatch(r'\{"time": "\d\d:\d\d:\d\d", "instance": "(tick|devcluster)", '
                        r'"line": ".*"\}\n', as_json.stdout)


def test_logs_name_f_follows_across_rotations(
        make_cluster: MakeCluster, tmp_path: Path, wait_until: Callable[..., Any]) -> None:
    cluster = flood_cluster(make_cluster, tmp_path, keep=8, pause=0.01)
    out = tmp_path / "follow.out"
    with open(out, "wb") as sink:
        follower = subprocess.Popen(devcluster_argv("logs", "flood", "-f", "-n", "1"),
                                    cwd=tmp_path, env=cli_env(), stdout=sink,
                                    stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # -n 1 prints "begin" once the follower holds the file: nothing later is missed
        wait_until(lambda: "begin" in out.read_text(), 20, "`logs -f` to start")
        (tmp_path / "go-3000").touch()  # 3,000 lines: ~360 KB, five rotations
        wait_until(lambda: "flood 3000 done" in out.read_text(errors="replace"), 60,
                   "the follower to reach the end of the flood")
        assert (cluster.state_dir / "logs" / "flood.log.3").exists()
        seen = out.read_text().splitlines()
        assert seen[0].endswith(" begin") and numbers(seen) == list(range(3000)), seen[:3]
        assert all(re.fullmatch(r"\d\d:\d\d:\d\d .*", ln) for ln in seen)
    finally:
        follower.send_signal(signal.SIGINT)
        assert follower.wait(15) in (0, 130)


@pytest.mark.parametrize("name", ["flood"])
def test_a_planted_symlink_is_replaced_not_written_through(
        name: str, make_cluster: MakeCluster, tmp_path: Path,
        wait_until: Callable[..., Any]) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    logs = tmp_path / ".devcluster" / "logs"
    # Planted before `up`, a link is refused in one line (tests/reliability/
    # test_state_links.py); planted while the cluster runs, it is replaced.
    cluster = flood_cluster(make_cluster, tmp_path)
    (logs / f"{name}.log").unlink(missing_ok=True)
    (logs / f"{name}.log").symlink_to(victim)
    wait_until(lambda: not (logs / f"{name}.log").is_symlink(), 10,
               "the supervisor's keeper to replace the link")
    (tmp_path / "go-10").touch()
    wait_until(lambda: any("flood 10 done" in ln for ln in cluster.logs(name, 1)), 20,
               "the flood's lines")
    assert victim.read_text() == "precious\n"
    assert not (logs / f"{name}.log").is_symlink()
    assert any("was a symlink; replaced it" in ln for ln in cluster.logs(None, 100))


def test_cluster_logs_shows_what_an_instance_wrote_before_the_call(
        make_cluster: MakeCluster) -> None:
    """The supervisor copies output to the files; Cluster.logs() waits until it has read
    what the instances wrote (here: while it is stopped for 0.3 s, the line waits in the
    pipe, and logs() returns it once the supervisor runs again)."""
    from devcluster._proto.helloworld_pb2 import HelloRequest
    from devcluster._proto.helloworld_pb2_grpc import GreeterStub

    cluster = make_cluster()
    supervisor = psutil.Process(int(layout(cluster.state_dir).lock.read_text()))
    name = cluster.instances[0].name
    supervisor.suspend()
    try:
        GreeterStub(cluster.channel("greeter")).SayHello(HelloRequest(name="seen-now"), timeout=5)
    finally:
        import threading

        threading.Timer(0.3, supervisor.resume).start()
    assert any("Received: seen-now" in line for line in cluster.logs(name, 5))
