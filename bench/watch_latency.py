"""How fast does a registry watcher in another process see a write, and what does an
idle watcher cost?

    python -m bench.watch_latency [--changes 200] [--idle 10] [--steps 1,2,5]

For each setting (inotify, the Linux default; watchfiles, the fallback elsewhere, with
its own defaults and devcluster's chosen debounce/step, and any extra ``--steps``), a
watcher process follows a fresh registry and prints ``revision seen_at`` for every
snapshot. This process writes ``--changes`` times, each after
the previous one was seen plus a random pause (so writes land at random phases of
watchfiles' polling step), and reports write-to-seen latency: from ``os.replace``
having returned to the watcher holding the snapshot, both read from ``time.time()``
(under inotify the watcher often holds it before the writer's call has returned:
negative figures). Then the watcher idles ``--idle`` seconds and its CPU use is read
with psutil.
"""

from __future__ import annotations

import argparse
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from devcluster.registry import inotify
from devcluster.registry.file import DEFAULT_DEBOUNCE_MS, DEFAULT_STEP_MS, FileRegistry
from devcluster.registry.record import Record

WATCHFILES_DEFAULT_DEBOUNCE_MS = 1600
WATCHFILES_DEFAULT_STEP_MS = 50
SEEN_DEADLINE_S = 5.0
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Setting:
    """One watcher configuration to measure."""

    label: str
    debounce_ms: int
    step_ms: int
    backend: str = "watchfiles"  # or "inotify"


@dataclass(frozen=True)
class Result:
    """What one setting measured."""

    setting: Setting
    latencies_ms: list[float]
    idle_cpu_percent: float

    def line(self) -> str:
        lat = sorted(self.latencies_ms)
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
        return (
            f"{self.setting.label:<34} p50 {statistics.median(lat):7.2f} ms  "
            f"p99 {p99:7.2f} ms  max {lat[-1]:7.2f} ms  idle CPU {self.idle_cpu_percent:5.2f} %"
        )


def run_watcher(state_dir: str, debounce_ms: int, step_ms: int, backend: str) -> None:
    """Watcher process body: print ``revision seen_at`` per snapshot until killed."""
    if backend == "watchfiles":  # what platforms without inotify get
        inotify.available = lambda: False
    reg = FileRegistry(state_dir, debounce_ms=debounce_ms, step_ms=step_ms)
    for snap in reg.watch():
        print(snap.revision, time.time(), flush=True)


def measure(setting: Setting, changes: int, idle_s: float) -> Result:
    """Start a watcher with ``setting``, write ``changes`` times, then let it idle."""
    with tempfile.TemporaryDirectory(prefix="devcluster-bench-") as tmp:
        state_dir = Path(tmp) / "state"
        reg = FileRegistry(state_dir, check_liveness=False)
        reg.reset([Record("bench", "bench", "127.0.0.1:1")])
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.watch_latency", "--watcher", str(state_dir),
             str(setting.debounce_ms), str(setting.step_ms), setting.backend],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,  # `bench` importable from anywhere
        )
        seen: queue.Queue[tuple[int, float]] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                rev, at = line.split()
                seen.put((int(rev), float(at)))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            wait_seen(seen, 1)
            # The watcher arms its watch only after its first yield: write until a
            # write is seen, so no measured write races the arming.
            deadline = time.monotonic() + SEEN_DEADLINE_S
            while True:
                rev = reg.update_many({"bench": {"restarts": 0}}).revision
                try:
                    wait_seen(seen, rev, timeout=0.2)
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise
            latencies = []
            for i in range(changes):
                time.sleep(random.uniform(0.005, 0.025))
                rev = reg.update_many({"bench": {"restarts": i + 1}}).revision
                written = time.time()
                latencies.append((wait_seen(seen, rev) - written) * 1000)
            cpu = idle_cpu_percent(proc.pid, idle_s)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            reader.join(timeout=5)
    return Result(setting, latencies, cpu)


def wait_seen(
    seen: queue.Queue[tuple[int, float]], revision: int, timeout: float = SEEN_DEADLINE_S
) -> float:
    """When the watcher first held ``revision`` (or a later one)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"watcher did not see revision {revision} within {timeout} s")
        try:
            rev, at = seen.get(timeout=left)
        except queue.Empty:
            continue
        if rev >= revision:
            return at


def idle_cpu_percent(pid: int, seconds: float) -> float:
    """CPU use of process ``pid`` (user + system, all threads) over ``seconds``, in %."""
    proc = psutil.Process(pid)
    before, t0 = proc.cpu_times(), time.monotonic()
    time.sleep(seconds)
    after, t1 = proc.cpu_times(), time.monotonic()
    used = (after.user - before.user) + (after.system - before.system)
    return 100 * used / (t1 - t0)


def main(argv: list[str] | None = None) -> None:
    """Command line entry: measure each setting and print one line per setting."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=200, help="writes per setting")
    parser.add_argument("--idle", type=float, default=10.0, help="idle CPU window, seconds")
    parser.add_argument("--steps", default="", help="extra step_ms values, e.g. 1,2,5")
    parser.add_argument("--watcher", nargs=4, metavar=("DIR", "DEBOUNCE", "STEP", "BACKEND"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.watcher:
        state_dir, debounce, step, backend = args.watcher
        run_watcher(state_dir, int(debounce), int(step), backend)
        return
    settings = []
    if inotify.available():
        settings.append(Setting(f"inotify (step {DEFAULT_STEP_MS} between burst reads)",
                                DEFAULT_DEBOUNCE_MS, DEFAULT_STEP_MS, "inotify"))
    settings += [
        Setting(
            f"watchfiles defaults ({WATCHFILES_DEFAULT_DEBOUNCE_MS}/{WATCHFILES_DEFAULT_STEP_MS})",
            WATCHFILES_DEFAULT_DEBOUNCE_MS, WATCHFILES_DEFAULT_STEP_MS,
        ),
        Setting(f"watchfiles chosen ({DEFAULT_DEBOUNCE_MS}/{DEFAULT_STEP_MS})",
                DEFAULT_DEBOUNCE_MS, DEFAULT_STEP_MS),
    ]
    for step in filter(None, args.steps.split(",")):
        settings.append(Setting(f"watchfiles step {step} ({DEFAULT_DEBOUNCE_MS}/{step})",
                                DEFAULT_DEBOUNCE_MS, int(step)))
    print(f"{args.changes} writes per setting; idle CPU over {args.idle:g} s; "
          f"{psutil.cpu_count()} CPUs")
    for setting in settings:
        print(measure(setting, args.changes, args.idle).line(), flush=True)


if __name__ == "__main__":
    main()
