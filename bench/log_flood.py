"""Scenario 12: the supervisor's CPU while an instance floods its output, beside honcho's.

One process type writes ``megabytes`` MB of 100-byte lines as fast as the pipe takes
them, then sleeps. Each tool runs it in the foreground with its own output to
``/dev/null`` (honcho's only sink; devcluster also writes its log files). The figures
are the CPU seconds (user + system, from psutil) of the tool's processes other than the
flooder between the flood's first and last byte, and the wall time the flood took: a
supervisor that reads slowly holds the writer back.

``python -m bench.log_flood [--megabytes N] [--runs N]``

Not a test: figures depend on the machine. The flood is bounded in bytes; each run's
files are in a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.supervisor import BIN, PY, _env, _gone, _tree

#: Waits for ./go, writes MEGABYTES MB of lines, touches ./done, then sleeps.
FLOODER = (
    "import os, sys, time\n"
    "while not os.path.exists('go'): time.sleep(0.01)\n"
    "line = b'x' * 99 + b'\\n'; block = line * 100; out = sys.stdout.buffer\n"
    "for _ in range({blocks}): out.write(block)\n"
    "out.flush(); open('done', 'w').close(); time.sleep(600)\n"
)


def _wait_for(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists():  # polled: the flooder's marker file has no event to block on
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _cpu(root: int) -> float:
    """CPU seconds of the tool's whole tree but the flooder: honcho reads each child's
    output in a process of its own (multiprocessing), devcluster in the supervisor."""
    total = 0.0
    for proc in _tree(root):
        with contextlib.suppress(psutil.Error):
            if "flood.py" not in " ".join(proc.cmdline()):
                times = proc.cpu_times()
                total += times.user + times.system
    return total


def run_one(tool: str, megabytes: int) -> dict[str, float]:
    """One flood of ``megabytes`` MB under ``tool``: supervisor CPU and wall seconds."""
    blocks = megabytes * 1_000_000 // 10_000
    with tempfile.TemporaryDirectory(prefix="devcluster-bench-flood-") as tmp:
        d = Path(tmp)
        (d / "flood.py").write_text(FLOODER.format(blocks=blocks))
        (d / "Procfile").write_text("flood: python flood.py\n")
        if tool == "devcluster":
            argv = [PY, "-m", "devcluster", "up", "-p", "0", "--state-dir", str(d / "state")]
        else:
            argv = [str(BIN / "honcho"), "start"]
        proc = subprocess.Popen(argv, cwd=d, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        procs: list[psutil.Process] = []
        try:
            # The flooder is up once it is a child; then the supervisor is idle.
            deadline = time.monotonic() + 30
            while not any("flood.py" in " ".join(p.cmdline()) for p in _tree(proc.pid)
                          if p.is_running()):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{tool}: the flooder did not start")
                time.sleep(0.02)  # polled: a process appearing has no event here
            time.sleep(0.3)  # let the supervisor's own start-up CPU settle before counting
            cpu0, t0 = _cpu(proc.pid), time.monotonic()
            (d / "go").touch()
            if not _wait_for(d / "done", 300):
                raise RuntimeError(f"{tool}: the flood did not finish in 300 s")
            wall = time.monotonic() - t0
            time.sleep(0.2)  # the last pipe buffer (64 KiB) is read
            cpu = _cpu(proc.pid) - cpu0
            procs = _tree(proc.pid)
            proc.send_signal(2)
            _gone(procs, 30)
            return {"cpu_s": cpu, "wall_s": wall, "megabytes": float(megabytes)}
        finally:
            for p in {*procs, *_tree(proc.pid)}:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            proc.wait()


def measure(megabytes: int = 50, runs: int = 3) -> dict[str, Any]:
    """Median CPU and wall seconds per tool over ``runs`` floods of ``megabytes`` MB."""
    out: dict[str, Any] = {"megabytes": megabytes, "runs": runs, "tools": {}}
    for tool in ("devcluster", "honcho"):
        figs = [run_one(tool, megabytes) for _ in range(runs)]
        out["tools"][tool] = {k: statistics.median(f[k] for f in figs)
                              for k in ("cpu_s", "wall_s")}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.log_flood",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.megabytes, args.runs), indent=2))


if __name__ == "__main__":
    main()
