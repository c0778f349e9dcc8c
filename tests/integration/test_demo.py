"""``devcluster demo`` is a smoke test of the whole product: it must exit 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_runs_every_step(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "devcluster", "demo", "--speed", "4"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    out = result.stdout
    for step in ("Start three greeters", "weight server1 5", "kill server2", "start server2",
                 "pause server3", "resume server3", "fault server2 --delay 300ms",
                 "fault server2 --abort UNAVAILABLE:50", "disable server3", "Graceful shutdown"):
        assert step in out
    assert "✗" not in out
    assert "Hello world-1 from server" in out
