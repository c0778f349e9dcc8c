"""Rolling reload beside the anchors' ways of restarting (issue 19, scenario 11).

``python -m bench.reload [--runs 10] [--json]`` (also ``python -m bench --only reload``)

A cluster of three greeters (``greeter: python -m devcluster.greeter --port $PORT``,
ports picked by the servers). A ``BalancedChannel("greeter")`` client keeps 8 calls in
flight at full speed (8 threads, each sequential, deadline 5 s, default options) while
the cluster is restarted three ways, on each of ``--runs`` runs:

* ``reload``: ``Cluster.reload(all=True)``, rolling, one instance at a time;
* ``restart``: ``Cluster.restart("greeter")`` (``devcluster restart greeter``: every
  instance stopped, then started again, all at once: overmind's way);
* ``honcho``: ``down`` then ``up`` again (honcho has no reload: stop everything, start).

``failed`` counts calls that ended in an error from the action until 0.3 s after it.

*Fixed port*: one greeter, a plain ``grpc.insecure_channel`` to its port (pick_first)
with 1 and with 8 calls in flight, through ``reload greeter`` (same port, SO_REUSEPORT;
the greeter hands the port over with ``devcluster.handoff``).

*Reload time per instance*: the reload's own step figures: spawn of the replacement to
the old process gone (``total_ms``) beside spawn to readiness (``ready_ms``); goal:
total <= ready + 200 ms.

*Watch latency*: ``devcluster up --watch`` in the foreground, one file saved; time from
the save (after ``write``+``close``) to the line ``starting a replacement`` on its
stdout (read as it comes). Goal: <= 150 ms.

Not a test: figures depend on the machine (2 shared cores here).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc
from devcluster.api import Cluster
from devcluster.client import BalancedChannel

GREETER = "python -m devcluster.greeter --port $PORT"
IN_FLIGHT = 8
AFTER_S = 0.3


@contextmanager
def load(call: Callable[[], Any], concurrency: int) -> Iterator[dict[str, Any]]:
    """``concurrency`` threads calling ``call`` in a loop: ``ok`` calls, ``failed``
    (time, code name) and ``done`` times (also the reload tests' load)."""
    counts: dict[str, Any] = {"ok": 0, "failed": [], "done": []}
    stop, lock = threading.Event(), threading.Lock()

    def caller() -> None:
        while not stop.is_set():
            try:
                call()
                with lock:
                    counts["ok"] += 1
                    counts["done"].append(time.monotonic())
            except grpc.RpcError as e:
                with lock:
                    counts["failed"].append((time.monotonic(), e.code().name))

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    try:
        yield counts
    finally:
        stop.set()
        for t in threads:
            t.join(10)


def _failed_since(counts: dict[str, Any], t0: float) -> int:
    return sum(1 for at, _ in counts["failed"] if at >= t0)


def _stall_ms(counts: dict[str, Any], t0: float, t1: float) -> float:
    """The longest time with no call completing between ``t0`` and ``t1``: a client that
    waits for an instance (no failed call) still stalls when capacity drops to 0."""
    times = [t0, *sorted(t for t in counts["done"] if t0 <= t <= t1), t1]
    return round(1000 * max(b - a for a, b in itertools.pairwise(times)), 1)


def _cluster(directory: Path, scale: int) -> Cluster:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Procfile").write_text(f"greeter: {GREETER}\n")
    return Cluster(directory / "Procfile", scale={"greeter": scale}, port=0, grace=2.0)


def one_run(directory: Path) -> dict[str, Any]:
    """Failed calls for reload, restart and honcho's way, on one fresh cluster."""
    cluster = _cluster(directory, 3)
    cluster.up()
    out: dict[str, Any] = {}
    request = helloworld_pb2.HelloRequest(name="bench")
    try:
        with BalancedChannel("greeter", cluster.state_dir) as channel:
            stub = helloworld_pb2_grpc.GreeterStub(channel)
            with load(lambda: stub.SayHello(request, timeout=5), IN_FLIGHT) as counts:
                time.sleep(0.3)
                for mode in ("reload", "restart", "honcho"):
                    t0 = time.monotonic()
                    if mode == "reload":
                        out["steps"] = cluster.reload(all=True)["reloaded"]
                    elif mode == "restart":
                        cluster.restart("greeter")
                    else:
                        cluster.down()
                        cluster = _cluster(directory, 3)
                        cluster.up()
                    seconds = time.monotonic() - t0
                    time.sleep(AFTER_S)
                    out[mode] = {"failed": _failed_since(counts, t0), "seconds": seconds,
                                 "stall_ms": _stall_ms(counts, t0, time.monotonic())}
                    time.sleep(0.3)
            out["calls"] = counts["ok"] + len(counts["failed"])
    finally:
        cluster.down()
    return out


def fixed_port_run(directory: Path) -> dict[str, Any]:
    """A plain grpc client on one port through a same-port reload, 1 and 8 in flight."""
    cluster = _cluster(directory, 1)
    cluster.up()
    out: dict[str, Any] = {}
    request = helloworld_pb2.HelloRequest(name="bench")
    try:
        address = cluster.instance("greeter.1").address
        for concurrency in (1, IN_FLIGHT):
            with grpc.insecure_channel(address) as channel:
                stub = helloworld_pb2_grpc.GreeterStub(channel)
                with load(lambda s=stub: s.SayHello(request, timeout=5), concurrency) as counts:
                    time.sleep(0.3)
                    t0 = time.monotonic()
                    step = cluster.reload("greeter")["reloaded"][0]
                    time.sleep(AFTER_S + 0.2)
            out[str(concurrency)] = {"failed": _failed_since(counts, t0),
                                     "codes": sorted({c for _, c in counts["failed"]}),
                                     "same_port": step["same_port"]}
    finally:
        cluster.down()
    return out


def watch_latency(directory: Path, saves: int) -> list[float]:
    """ms from a file save to the first reload step, under ``up --watch``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Procfile").write_text(f"greeter: {GREETER}\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "devcluster", "up", "--watch", "-p", "0",
                             "--grace", "2"], cwd=directory, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True, text=True, bufsize=1)
    assert proc.stdout is not None
    lines: list[tuple[float, str]] = []
    seen = threading.Condition()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with seen:
                lines.append((time.monotonic(), line))
                seen.notify_all()

    def wait_for(fragment: str, after: int, timeout: float = 30.0) -> tuple[float, int]:
        deadline = time.monotonic() + timeout
        with seen:
            while True:
                for i in range(after, len(lines)):
                    if fragment in lines[i][1]:
                        return lines[i][0], i + 1
                if not seen.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(f"{fragment!r} not printed by `up --watch`")

    threading.Thread(target=reader, daemon=True).start()
    out: list[float] = []
    try:
        _, pos = wait_for("ready: 1/1 serving", 0)
        for i in range(saves):
            time.sleep(0.3)
            with open(directory / "app.py", "w") as f:
                f.write(f"x = {i}\n")
            saved = time.monotonic()
            at, pos = wait_for("starting a replacement", pos)
            out.append(round(1000 * (at - saved), 1))
            _, pos = wait_for("reload done", pos)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    return out


def measure(runs: int, progress: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Every figure of scenario 11 (raw and summary), JSON-ready."""
    per_run, fixed, watch = [], [], []
    with tempfile.TemporaryDirectory(prefix="devcluster-bench-reload-") as tmp:
        for i in range(runs):
            per_run.append(one_run(Path(tmp) / f"run{i}"))
            fixed.append(fixed_port_run(Path(tmp) / f"fixed{i}"))
            progress(f"reload run {i + 1}/{runs}: " + ", ".join(
                f"{m} {per_run[-1][m]['failed']} failed" for m in ("reload", "restart", "honcho"))
                + f"; fixed port {fixed[-1]['1']['failed']}/{fixed[-1]['8']['failed']} failed")
        watch = watch_latency(Path(tmp) / "watch", max(3, runs))
    return {"runs": per_run, "fixed": fixed, "watch_ms": watch, "summary": summarize(per_run, fixed, watch)}


def summarize(per_run: list[dict[str, Any]], fixed: list[dict[str, Any]],
              watch: list[float]) -> dict[str, Any]:
    steps = [s for r in per_run for s in r.get("steps", [])]
    over = [s["total_ms"] - s["ready_ms"] for s in steps]

    def med(xs: list[float]) -> float | None:
        return round(statistics.median(xs), 1) if xs else None

    return {
        "runs": len(per_run),
        "failed": {m: [r[m]["failed"] for r in per_run] for m in ("reload", "restart", "honcho")},
        "seconds": {m: med([r[m]["seconds"] for r in per_run]) for m in ("reload", "restart", "honcho")},
        "stall_ms_max": {m: max(r[m]["stall_ms"] for r in per_run) for m in ("reload", "restart", "honcho")},
        "fixed_failed": {c: [f[c]["failed"] for f in fixed] for c in ("1", str(IN_FLIGHT))},
        "fixed_codes": sorted({c for f in fixed for k in ("1", str(IN_FLIGHT)) for c in f[k]["codes"]}),
        "ready_ms_median": med([s["ready_ms"] for s in steps]),
        "total_ms_median": med([s["total_ms"] for s in steps]),
        "over_ms_median": med(over), "over_ms_max": max(over) if over else None,
        "watch_ms_median": med(watch), "watch_ms_max": max(watch) if watch else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reload", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print every raw figure")
    args = parser.parse_args(argv)
    result = measure(args.runs, lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(result if args.json else result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
