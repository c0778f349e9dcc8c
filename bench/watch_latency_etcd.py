"""Watch latency of the etcd registry beside the file registry, measured in one run.

    python -m bench.watch_latency_etcd [--changes 200] [--idle 10] [--etcd etcd://HOST:PORT]

Without ``--etcd`` a throw-away etcd is started on free loopback ports (the tests'
helper, tests/_etcd.py; needs the ``etcd`` binary and the ``[etcd]`` extra). Method as
in bench/watch_latency.py: a watcher process follows a fresh registry and prints
``revision seen_at`` per snapshot; this process writes ``--changes`` times, each after
the previous write was seen plus a random 5-25 ms pause, and reports write-to-seen
latency (from the write call having returned to the watcher holding the snapshot,
both by ``time.time()``), then the idle watcher's CPU use. The file backend is measured
with its chosen watchfiles setting by bench.watch_latency's own code, right after.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil

from bench.watch_latency import (
    SEEN_DEADLINE_S,
    Result,
    Setting,
    idle_cpu_percent,
    measure,
    wait_seen,
)
from devcluster.registry import inotify
from devcluster.registry.file import DEFAULT_DEBOUNCE_MS, DEFAULT_STEP_MS
from devcluster.registry.record import Record

ROOT = Path(__file__).resolve().parent.parent


def run_watcher(url: str) -> None:
    """Watcher process body: print ``revision seen_at`` per snapshot until killed."""
    from devcluster.registry.etcd import EtcdRegistry

    for snap in EtcdRegistry(url).watch():
        print(snap.revision, time.time(), flush=True)


def measure_etcd(url: str, changes: int, idle_s: float) -> Result:
    """Follow a fresh prefix on ``url`` from another process, write ``changes`` times."""
    from devcluster.registry.etcd import EtcdRegistry

    reg = EtcdRegistry(url)
    reg.reset([Record("bench", "bench", "127.0.0.1:1")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.watch_latency_etcd", "--watcher", url],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
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
        # The watch stream opens just after the first yield: write until a write is
        # seen, so no measured write races its opening.
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
        reg.close()
    return Result(Setting("etcd watch (push)", 0, 0), latencies, cpu)


@contextlib.contextmanager
def etcd_url(given: str | None) -> Iterator[str]:
    """``given``, or a throw-away etcd's URL for as long as the context lasts."""
    prefix = f"/bench-{uuid.uuid4().hex[:8]}"
    if given:
        yield given.rstrip("/") + prefix
        return
    sys.path.insert(0, str(ROOT / "tests"))
    helper = importlib.import_module("_etcd")
    with tempfile.TemporaryDirectory(prefix="devcluster-bench-etcd-") as tmp, \
            helper.running_etcd(Path(tmp)) as server:
        yield server.url(prefix)


def main(argv: list[str] | None = None) -> None:
    """Command line entry: one line for etcd, one for the file backend."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=200, help="writes per backend")
    parser.add_argument("--idle", type=float, default=10.0, help="idle CPU window, seconds")
    parser.add_argument("--etcd", help="an etcd to use (default: start a throw-away one)")
    parser.add_argument("--watcher", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.watcher:
        run_watcher(args.watcher)
        return
    print(f"{args.changes} writes per backend; idle CPU over {args.idle:g} s; "
          f"{psutil.cpu_count()} CPUs")
    with etcd_url(args.etcd) as url:
        print(measure_etcd(url, args.changes, args.idle).line(), flush=True)
    chosen = Setting(f"file, default watch ({DEFAULT_DEBOUNCE_MS}/{DEFAULT_STEP_MS})",
                     DEFAULT_DEBOUNCE_MS, DEFAULT_STEP_MS,
                     "inotify" if inotify.available() else "watchfiles")
    print(measure(chosen, args.changes, args.idle).line(), flush=True)


if __name__ == "__main__":
    main()
