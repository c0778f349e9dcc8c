"""``up --watch``: a file edit becomes a rolling reload, and a client loses no call."""

from __future__ import annotations

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
