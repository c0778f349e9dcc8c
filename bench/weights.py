"""Weights: how fast a change lands, and how exactly shares follow (issue 7, scenarios 6, 7).

``python -m bench.weights [--changes 50] [--calls 10000] [--json]``

One devcluster cluster of four greeters; every call is a real SayHello, and the
instance that served it is read from the ``devcluster-instance`` response header.

* Scenario 6, propagation: a client (``BalancedChannel``, own registry reader, as a
  second process would have) calls in a tight sequential loop. ``greeter.1`` (X)
  flips between weight 0 and 1000 while ``greeter.2`` (Y) keeps weight 1 (the others
  0), through ``Cluster.weight``: the same ``FileRegistry`` write as ``devcluster
  weight``. Each change is made at a random phase (the loop goes on 5-30 ms between
  changes). Latency: from the write's start (and from its return) to the start of the
  first call routed by the new weights: the first call X serves after 0 -> 1000; the
  first of three calls in a row Y serves after 1000 -> 0 (under the old weights Y
  serves one call in 1001, never two in a row).
  grpc's round_robin has no weights, so there is no anchor.
* Scenario 7, accuracy: weights 5:1:1 (three instances) and 1:2:3:4 (four), then
  ``--calls`` sequential calls after 200 warm-up calls; observed share vs weight share
  (max error in percentage points) and the longest run of one instance. Anchor:
  grpc's round_robin with weights as repeated addresses (``ipv4:a,a,a,a,a,b,c``), the
  usual way to weight it without xDS.

Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from bench.failover import REQUEST, addresses, greeter_cluster, native_channel
from devcluster._proto import helloworld_pb2_grpc
from devcluster.api import Cluster
from devcluster.client import BalancedChannel
from devcluster.client.calls import header_instance

CONFIGS: dict[str, tuple[int, ...]] = {"5:1:1": (5, 1, 1), "1:2:3:4": (1, 2, 3, 4)}
DEADLINE = 2.0
SERVICE = "greeter"


def _caller(channel: grpc.Channel) -> Callable[[], str | None]:
    say = helloworld_pb2_grpc.GreeterStub(channel).SayHello.with_call

    def call() -> str | None:
        _, c = say(REQUEST, timeout=DEADLINE)
        return header_instance(c.initial_metadata())

    return call


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _wait_weights(channel: BalancedChannel, wanted: Mapping[str, int], timeout: float = 5.0) -> None:
    usable = {n: w for n, w in wanted.items() if w > 0}
    end = time.monotonic() + timeout
    while channel.balancer.weights() != usable:
        if time.monotonic() > end:
            raise TimeoutError(f"the channel did not see weights {usable}")
        time.sleep(0.002)


def propagation(cluster: Cluster, changes: int, seed: int = 7) -> dict[str, Any]:
    """Scenario 6: ``changes`` weight writes, each timed to the first call it routes."""
    names = sorted(addresses(cluster))
    start = {n: 0 for n in names}
    start[names[1]] = 1
    cluster.registry.update_many({n: {"weight": w} for n, w in start.items()})
    try:
        with BalancedChannel(SERVICE, cluster.state_dir) as channel:
            _wait_weights(channel, start)
            return time_changes(cluster, _caller(channel), names[0], names[1], changes, seed)
    finally:
        cluster.registry.update_many({n: {"weight": 1} for n in names})


def time_changes(cluster: Cluster, call: Callable[[], str | None], x: str, y: str,
                 changes: int, seed: int = 7,
                 write: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """``changes`` flips of ``x`` between weight 0 and 1000 (``y`` at 1, the others at 0,
    already seen by ``call``'s client), each timed from the write to the first call the
    new weights route (see the module doc). ``write`` makes the change (default
    ``Cluster.weight``, which also waits for the supervisor's timeline)."""
    write = cluster.weight if write is None else write
    rng = random.Random(seed)
    perf = time.perf_counter
    from_start: list[float] = []
    from_return: list[float] = []
    up: list[float] = []
    down: list[float] = []
    timeouts = 0
    for _ in range(100):
        call()
    x_weight = 0
    for _ in range(changes):
        until = perf() + rng.uniform(0.005, 0.030)
        while perf() < until:
            call()
        new = 1000 if x_weight == 0 else 0
        target, need = (x, 1) if new else (y, 3)
        t0 = perf()
        write(x, new)
        t1 = perf()
        streak, first = 0, 0.0
        while True:
            ts = perf()
            if call() == target:
                first = ts if streak == 0 else first
                streak += 1
                if streak >= need:
                    break
            else:
                streak = 0
            if ts - t0 > 5.0:
                break
        x_weight = new
        if streak < need:
            timeouts += 1
            continue
        from_start.append(1000 * (first - t0))
        from_return.append(1000 * (first - t1))
        (up if new else down).append(1000 * (first - t0))

    def stats(values: Sequence[float]) -> dict[str, float | None]:
        if not values:
            return {"p50_ms": None, "p99_ms": None, "max_ms": None}
        return {"p50_ms": statistics.median(values), "p99_ms": _pct(values, 0.99),
                "max_ms": max(values)}

    return {"changes": changes, "timeouts": timeouts, "from_write_start": stats(from_start),
            "from_write_return": stats(from_return), "to_1000": stats(up), "to_0": stats(down),
            "from_write_start_ms": from_start}


def share_stats(served: Sequence[str | None], weights: Mapping[str, int]) -> dict[str, Any]:
    """Observed vs weight share (percentage points) and the longest run of one instance."""
    counts = Counter(served)
    total = len(served)
    wsum = sum(weights.values())
    rows = {}
    for name, w in weights.items():
        share = 100 * counts.get(name, 0) / total if total else 0.0
        rows[name] = {"weight": w, "calls": counts.get(name, 0), "share_pct": share,
                      "expected_pct": 100 * w / wsum, "error_pp": share - 100 * w / wsum}
    longest: dict[str, int] = {}
    run, prev = 0, None
    for inst in served:
        run = run + 1 if inst == prev else 1
        prev = inst
        key = str(inst)
        if run > longest.get(key, 0):
            longest[key] = run
    return {"calls": total, "instances": rows,
            "max_error_pp": max(abs(r["error_pp"]) for r in rows.values()),
            "longest_run": max(longest.values()) if longest else 0,
            "longest_run_by_instance": longest,
            "unknown": counts.get(None, 0)}


def accuracy(cluster: Cluster, calls: int,
             configs: Mapping[str, Sequence[int]] = CONFIGS) -> dict[str, Any]:
    """Scenario 7: ``calls`` calls per weight config, ours and native (repeated addresses)."""
    addrs = addresses(cluster)
    names = sorted(addrs)
    out: dict[str, Any] = {}
    for label, ws in configs.items():
        weights = {n: (ws[i] if i < len(ws) else 0) for i, n in enumerate(names)}
        cluster.registry.update_many({n: {"weight": w} for n, w in weights.items()})
        used = {n: w for n, w in weights.items() if w > 0}
        with BalancedChannel(SERVICE, cluster.state_dir) as channel:
            _wait_weights(channel, weights)
            call = _caller(channel)
            for _ in range(200):
                call()
            t0 = time.perf_counter()
            ours = [call() for _ in range(calls)]
            ours_s = time.perf_counter() - t0
        native = native_channel([addrs[n] for n, w in used.items() for _ in range(w)])
        try:
            grpc.channel_ready_future(native).result(timeout=10)
            call = _caller(native)
            warm: set[str | None] = set()
            for _ in range(2000):  # until round_robin has every subchannel READY
                warm.add(call())
                if warm >= set(used):
                    break
            for _ in range(200):
                call()
            t0 = time.perf_counter()
            theirs = [call() for _ in range(calls)]
            theirs_s = time.perf_counter() - t0
        finally:
            native.close()
        out[label] = {"weights": used,
                      "balanced": {**share_stats(ours, used), "calls_per_s": calls / ours_s},
                      "native": {**share_stats(theirs, used), "calls_per_s": calls / theirs_s}}
    cluster.registry.update_many({n: {"weight": 1} for n in names})
    return out


def measure(changes: int = 50, calls: int = 10_000) -> dict[str, Any]:
    """Scenarios 6 and 7 on one four-greeter cluster."""
    with greeter_cluster(4) as cluster:
        return {"propagation": propagation(cluster, changes), "accuracy": accuracy(cluster, calls)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.weights",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=50, help="weight changes (default 50)")
    parser.add_argument("--calls", type=int, default=10_000,
                        help="calls per weight config (default 10000)")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    args = parser.parse_args(argv)
    result = measure(args.changes, args.calls)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    prop = result["propagation"]
    for key in ("from_write_start", "from_write_return", "to_1000", "to_0"):
        s = prop[key]
        print(f"weight write ({key}) -> first call routed: p50 {s['p50_ms']:.2f} ms, "
              f"p99 {s['p99_ms']:.2f} ms, max {s['max_ms']:.2f} ms")
    for label, r in result["accuracy"].items():
        for side in ("balanced", "native"):
            s = r[side]
            print(f"{label:<8} {side:<9} max share error {s['max_error_pp']:.3f} pp, "
                  f"longest run {s['longest_run']}, {s['calls_per_s']:.0f} calls/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
