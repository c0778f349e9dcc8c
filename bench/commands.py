"""Scenario 9: the everyday commands as a shell runs them, beside ``honcho --version`` and
``python -c pass`` in the same run.

The goal (issue 25): each command's CPU time at most twice that of ``honcho --version``
(``ratio`` in the output). The commands that talk to the supervisor pay grpc's import,
so the parser's own cost decides whether they stay under it.

Each command runs ``runs`` times against one 3-greeter cluster; the figures are the
median wall time and the median CPU time (user + system, from ``wait4``: the machine's
other load moves wall time much more than CPU time).

``python -m bench.commands [--runs N]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROCFILE = "greeter: python -m devcluster.greeter --port $PORT\n"

#: name -> argv after ``devcluster`` (run in the cluster's directory).
#: Every everyday command (the order matters: ``stop`` then ``start --no-wait``).
COMMANDS: dict[str, list[str]] = {
    "--version": ["--version"],
    "ps": ["ps"],
    "ps --json": ["ps", "--json"],
    "registry": ["registry"],
    "weight": ["weight", "greeter.1", "2"],
    "enable": ["enable", "greeter.1"],
    "events": ["events"],
    "logs": ["logs", "-n", "20"],
    "meta": ["meta", "greeter.1", "zone=a"],
    "scale": ["scale", "greeter=3"],
    "kill": ["kill", "greeter.3"],
    "stop": ["stop", "greeter.3"],
    "start --no-wait": ["start", "--no-wait", "greeter.3"],
}
#: The goal: a command's CPU time over ``honcho --version``'s.
GOAL_RATIO = 2.0


def _time(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s) of one run of ``argv``."""
    began = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def _median(argv: list[str], cwd: Path, env: dict[str, str], runs: int) -> dict[str, float]:
    samples = [_time(argv, cwd, env) for _ in range(runs)]
    return {"wall_s": statistics.median(w for w, _ in samples),
            "cpu_s": statistics.median(c for _, c in samples)}


def measure(runs: int = 10) -> dict[str, Any]:
    """Median wall and CPU time of each command and of the two anchors."""
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("DEVCLUSTER_HOME", None)
    bin_dir = Path(sys.executable).parent
    devcluster = [str(bin_dir / "devcluster")] if (bin_dir / "devcluster").exists() \
        else [sys.executable, "-m", "devcluster"]
    honcho = shutil.which("honcho", path=str(bin_dir)) or shutil.which("honcho")
    work = Path(tempfile.mkdtemp(prefix="devcluster-bench-commands-"))
    (work / "Procfile").write_text(PROCFILE)
    out: dict[str, Any] = {"runs": runs, "anchors": {}, "commands": {}}
    try:
        subprocess.run([*devcluster, "up", "-d", "-p", "0", "-c", "greeter=3"], cwd=work,
                       env=env, check=True, capture_output=True, timeout=120)
        out["anchors"]["python -c pass"] = _median([sys.executable, "-c", "pass"], work, env, runs)
        if honcho:
            out["anchors"]["honcho --version"] = _median([honcho, "--version"], work, env, runs)
        for name, args in COMMANDS.items():
            out["commands"][name] = _median([*devcluster, *args], work, env, runs)
        anchor = out["anchors"].get("honcho --version", {}).get("cpu_s")
        for figures in out["commands"].values() if anchor else ():
            figures["ratio"] = round(figures["cpu_s"] / anchor, 2)
            figures["goal_met"] = figures["ratio"] <= GOAL_RATIO
    finally:
        subprocess.run([*devcluster, "down", "--grace", "1"], cwd=work, env=env,
                       capture_output=True, timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    print(json.dumps(measure(parser.parse_args().runs), indent=2))


if __name__ == "__main__":
    main()
