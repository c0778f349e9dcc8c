"""Every script in ``examples/`` runs as a user would run it, with a time limit, and
leaves nothing running.

``failover.sh`` once hung for ever: a background job of a non-interactive shell starts
with SIGINT ignored, so its ``kill -INT "$client"`` never reached the client.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.conftest import cli_env

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.sh"))
TEST_FILES = sorted(EXAMPLES.glob("test_*.py"))


def _env(tmp_path: Path) -> dict[str, str]:
    # mktemp in the scripts lands under tmp_path, so leftovers are found by their cwd/argv;
    # the venv's bin first, as for a user who activated it.
    env = cli_env(TMPDIR=str(tmp_path))
    # An example's own pytest run is not a worker of ours: under `pytest -n`, an inherited
    # PYTEST_XDIST_WORKER made its plugin think it shared a cluster with other workers.
    env = {k: v for k, v in env.items() if not k.startswith("PYTEST_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def test_there_are_examples() -> None:
    assert SCRIPTS and TEST_FILES


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_ends_by_itself(script: Path, tmp_path: Path,
                               processes_under: Callable[[Path], list[psutil.Process]]) -> None:
    result = subprocess.run(["bash", str(script)], cwd=ROOT, env=_env(tmp_path),
                            capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert processes_under(tmp_path) == []
    if script.name == "failover.sh":  # the background client stopped and said its summary
        assert "== kill server2" in result.stdout
        assert " calls, " in result.stdout and "failures" in result.stdout


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_example_test_file_passes(test_file: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(test_file.relative_to(ROOT))], cwd=ROOT, env=_env(tmp_path),
                            capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout
