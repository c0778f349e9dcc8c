"""``up --watch``: a file edit becomes a rolling reload, and a client loses no call."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devcluster.registry import FileRegistry
from tests._clients import SyncClient

GREETER = "python -m devcluster.greeter --port $PORT"

pytestmark = pytest.mark.timeout(120)


def serving_pids(state_dir: Path) -> dict[str, int | None]:
    records = FileRegistry(state_dir).snapshot().records
    return {n: r.pid for n, r in records.items() if r.state.value == "serving"}


def test_an_edit_under_watch_reloads_rolling_with_no_failed_call(
        tmp_path: Path, write_procfile: Callable[..., Path], foreground: Callable[..., Any],
        wait_until: Callable[..., Any]) -> None:
    project = tmp_path / "project"  # the test's own files (up's output) stay outside
    write_procfile(f"api: {GREETER}", f"web: {GREETER}", directory=project)
    (project / "api").mkdir()
    (project / "web").mkdir()
    (project / "devcluster.toml").write_text(
        '[process.api]\nwatch = ["api/**/*.py"]\n\n[process.web]\nwatch = ["web/*.py"]\n')
    up = foreground("--watch", "-p", "0", "--grace", "2", cwd=project)
    up.wait_for("ready: 2/2 serving")
    state_dir = project / ".devcluster"
    before = serving_pids(state_dir)
    client = SyncClient(None, FileRegistry(state_dir))
    try:
        with client.load(concurrency=8, timeout=5, pause=0):
            time.sleep(0.3)
            (project / "api" / "handlers.py").write_text("x = 1\n")
            text = up.wait_for("api: replaced pid")
            time.sleep(0.3)
        calls = client.infos
    finally:
        client.close()
    failed = [c for c in calls if not c.ok]
    assert not failed, f"{len(failed)} of {len(calls)} failed: {failed[:3]}"
    assert "watch: api/handlers.py changed; reloading api" in text
    after = serving_pids(state_dir)
    assert after["api"] != before["api"], "the edited type was not reloaded"
    assert after["web"] == before["web"], "a type that does not watch the file reloaded"

    # A burst of saves is one reload.
    for i in range(5):
        (project / "web" / "page.py").write_text(f"x = {i}\n")
    wait_until(lambda: "web: replaced pid" in up.text(), 20, "web to be reloaded")
    wait_until(lambda: "reload done" in up.text().split("web: replaced pid", 1)[1], 20,
               "the reload to end")

    # The Procfile's edit applies as a diff: the new type starts, the others stay.
    pids = serving_pids(state_dir)
    write_procfile(f"api: {GREETER}", f"web: {GREETER}", f"extra: {GREETER}", directory=project)
    wait_until(lambda: "extra" in serving_pids(state_dir), 20, "the new type to serve")
    # A second reload of the burst would have started within one watch step (50 ms):
    # long before the Procfile's edit, seen after it, was applied.
    assert up.text().count("web: replaced pid") == 1, "a burst of saves gave more than one reload"
    after = serving_pids(state_dir)
    assert after["api"] == pids["api"] and after["web"] == pids["web"]
    assert "Traceback" not in up.text()


def _watch_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "watch: " in line and " changed" in line]


def test_its_own_output_and_logs_in_the_watched_dir_do_not_reload(
        tmp_path: Path, write_procfile: Callable[..., Path], foreground: Callable[..., Any],
        wait_until: Callable[..., Any]) -> None:
    """`up --watch > up.out` in the watched directory: each reload's own lines would
    change up.out and reload again, forever (issue 26 item 9). A `*.log` is ignored too."""
    write_procfile(f"greeter: {GREETER}")
    up = foreground("--watch", "-p", "0", "--grace", "1")  # its output: tmp_path/up-0.out
    assert up.output.parent == tmp_path
    up.wait_for("ready: 1/1 serving")
    (tmp_path / "server.log").write_text("a log line\n")
    (tmp_path / "app.py").write_text("x = 1\n")
    up.wait_for("reload done")
    # A second edit: its reload is the last one only if nothing else reloaded meanwhile
    # (a reload's own output would be gathered with it, or before it).
    (tmp_path / "app2.py").write_text("x = 2\n")
    wait_until(lambda: up.text().count("reload done") >= 2, 20, "the second reload")
    lines = _watch_lines(up.text())
    assert lines and all("app.py" in line or "app2.py" in line for line in lines), lines
    assert not [line for line in lines if "up-0.out" in line or "server.log" in line], lines


def test_the_report_of_up_d_in_the_watched_dir_does_not_reload(
        tmp_path: Path, write_procfile: Callable[..., Path], run_cli: Callable[..., Any],
        wait_until: Callable[..., Any]) -> None:
    """`up -d --watch > up.out`: the report `up -d` writes once the cluster is ready is
    not an edit (the supervisor ignores its parent's output files too)."""
    write_procfile(f"greeter: {GREETER}")
    env = {k: v for k, v in os.environ.items() if k != "DEVCLUSTER_HOME"}
    with open(tmp_path / "up.out", "w") as out:
        up = subprocess.run([sys.executable, "-m", "devcluster", "up", "-d", "--watch", "-p", "0",
                             "--grace", "1"], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, timeout=60)
    log = tmp_path / ".devcluster" / "logs" / "devcluster.log"
    try:
        assert up.returncode == 0, (tmp_path / "up.out").read_text()
        assert (tmp_path / "up.out").read_text().strip(), "up -d wrote no report"
        (tmp_path / "app.py").write_text("x = 1\n")
        wait_until(lambda: "reload done" in log.read_text(), 20, "the reload for app.py")
        lines = _watch_lines(log.read_text())
        assert lines and not [line for line in lines if "up.out" in line], lines
    finally:
        down = run_cli("down")
    assert down.returncode == 0, down.stdout + down.stderr


def test_a_directory_deleted_and_made_again_is_watched_again(
        tmp_path: Path, write_procfile: Callable[..., Path], foreground: Callable[..., Any],
        wait_until: Callable[..., Any]) -> None:
    """`rm -rf gen; mkdir gen`: inotify forgot gen; the watcher looks again (issue 26 item 10)."""
    project = tmp_path / "project"
    write_procfile(f"greeter: {GREETER}", directory=project)
    (project / "gen").mkdir()
    up = foreground("--watch", "-p", "0", "--grace", "1", cwd=project)
    up.wait_for("ready: 1/1 serving")
    (project / "gen" / "a.py").write_text("x = 0\n")
    up.wait_for("watch: gen/a.py changed")
    up.wait_for("reload done")
    shutil.rmtree(project / "gen")
    (project / "gen").mkdir()
    edits = iter(range(1000))

    def seen() -> bool:  # saved again and again until the watcher sees one (or times out)
        (project / "gen" / "b.py").write_text(f"x = {next(edits)}\n")
        return "watch: gen/b.py changed" in up.text()

    wait_until(seen, 15, "a save in the re-created gen/ to be seen", interval=0.3)
    assert "Traceback" not in up.text() and "failed" not in up.text()


def _unreadable(project: Path) -> Path:
    """A directory this user may not read: chmod 000 (not for root), else a /proc one."""
    if os.geteuid() != 0:
        locked = project / "locked"
        locked.mkdir()
        locked.chmod(0)
        return locked
    proc = Path("/proc/1/task/1")  # fdinfo: needs ptrace rights a container's root lacks
    try:
        os.listdir(proc / "fdinfo")
    except PermissionError:
        return proc
    pytest.skip("no directory this root may not read")


def test_an_unreadable_path_is_said_once_and_the_rest_is_watched(
        tmp_path: Path, write_procfile: Callable[..., Path], foreground: Callable[..., Any],
        wait_until: Callable[..., Any]) -> None:
    """`up --watch /` met /proc/1/task/1/fdinfo and stopped every instance (issue 26 item 10)."""
    project = tmp_path / "project"
    write_procfile(f"greeter: {GREETER}", directory=project)
    (project / "src").mkdir()
    locked = _unreadable(project)
    try:
        up = foreground("--watch", str(project), str(locked), "-p", "0", "--grace", "1",
                        cwd=project)
        up.wait_for("ready: 1/1 serving")
        (project / "src" / "a.py").write_text("x = 1\n")
        up.wait_for("watch: src/a.py changed; reloading greeter")
        text = up.wait_for("reload done")
    finally:
        if locked.is_relative_to(project):
            locked.chmod(0o700)
    said = [line for line in text.splitlines() if "cannot read" in line]
    assert len(said) == 1 and "permission denied" in said[0], said
    assert "stopping every instance" not in text and "Traceback" not in text
    assert "the file watcher failed" not in text
    assert up.proc.poll() is None, "the cluster stopped"
