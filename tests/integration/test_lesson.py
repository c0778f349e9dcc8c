"""``devcluster demo --lesson`` runs the article's progression and exits 0.

It is the real command in a subprocess, with its temporary cluster under this
test's ``tmp_path`` (``TMPDIR``), so the leak check sees every process it started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

STEPS = ("0. Three instances of one service", "1. One address", "2. The comma-separated list",
         "3. A static resolver, default policy", "4. round_robin",
         "5. A registry-backed resolver", "6. Weighted round robin",
         "7. An instance crashes", "8. An instance hangs", "9. It recovers",
         "10. Any client, no code: xDS", "11. Shut down")


def test_lesson_runs_every_step_and_exits_0(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DEVCLUSTER_HOME"}
    env.update(NO_COLOR="1", PYTHONUNBUFFERED="1", COLUMNS="200", TMPDIR=str(tmp_path))
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "devcluster", "demo", "--lesson"],
                            cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - began
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert result.stderr == ""
    for title in STEPS:
        assert title in out
    assert out.count("✓") == len(STEPS) * 2  # each conclusion, and each row of the table
    assert "✗" not in out
    # The comma list failed with grpc's own words, quoted in the conclusion.
    assert "grpc's own error: UNAVAILABLE: " in out or "DEADLINE_EXCEEDED" in out
    assert "server1 got 71%" in out
    assert elapsed < 60, f"the lesson took {elapsed:.1f} s"
    # Its temporary cluster dir is gone (the control plane's short socket dir,
    # devcluster-UID, is shared by design and may stay).
    assert not list(tmp_path.glob("devcluster-lesson-*"))
