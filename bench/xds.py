"""Any gRPC client on ``xds:///greeter`` (issue 27), beside the anchors, in one run.

``python -m bench.xds [--quick] [--json]``

An unmodified grpcio channel dials ``xds:///greeter`` with ``GRPC_XDS_BOOTSTRAP`` set to
the file the supervisor wrote (``Cluster.xds()``); it gets endpoints, weights, health,
retries and faults from the supervisor's ADS server and nothing else of ours. Which
instance served a call comes from the greeter's ``devcluster-instance`` response header.

On one cluster of three greeters (default health settings):

* propagation (13): ``bench.weights``' scenario 6 loop (weight 0 <-> 1000 on one
  instance, the first call routed by the new weights) through the balanced client on the
  cluster (the anchor), then through the xDS channel, each change a bare registry write
  (``Cluster.weight`` also waits for the supervisor's timeline); Nacos's push, about
  0.5 s, is a stated constant (:data:`NACOS_PUSH_MS`);
* shares (14): weights 5:1:1, 200 warm-up calls, then ``share_calls`` sequential calls;
  the anchors are ``bench.weights``' scenario 7 (balanced client, and native round_robin
  over repeated addresses) with the same number of calls;
* faults (19): ``Cluster.fault("greeter", delay="100ms:20", abort="UNAVAILABLE:10")``, then
  ``fault_calls`` calls, 8 in flight, on the xDS channel and on a balanced client: the
  share aborted (UNAVAILABLE) and the share that took >= 100 ms, net of the calls that
  are that slow anyway (the same test on the channel before the fault gives their share
  s; observed = d + (1 - d) s);
* failed calls (15) and rejoin (16): callers with a 1 s deadline run all the time, 8 in
  flight and sequential, on xDS channels and on native ``round_robin`` channels over
  ``ipv4:a,b,c`` (no control plane); each run ``stop``\\s, SIGKILLs (``start`` after
  ``observe_s``), pauses (``resume`` after ``hold_s``) one instance in turn, or does
  ``reload --all``. Failed calls are judged as in ``bench.failover``; "gets calls again"
  is from the registry's ``serving`` write after ``start`` to the first call the
  instance served (the first of the 8 callers).

Then, on clusters of their own:

* supervisor cost (17): a 3-greeter cluster's supervisor idle CPU and USS (as in
  ``bench.supervisor``) with no xDS client, then with ``clients`` xDS clients connected
  (each its own process, so its own ADS stream); ``up -d`` of this tree beside the tree
  before the supervisor served xDS (the parent of :data:`XDS_COMMIT`, from ``git
  archive``; left out when git cannot give it);
* health checks (18): the supervisor's idle CPU at each of ``health_sizes`` with the
  default ``health_period`` (1 s) and with ``health_period = 0`` (off) in devcluster.toml.

Not a test: figures depend on the machine. Every process it starts is gone when it returns.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil

from bench import weights
from bench.failover import (
    PROCFILE,
    REQUEST,
    Caller,
    addresses,
    analyse,
    greeter_cluster,
    native_channel,
    one_run,
    wait_until_all_served,
)
from bench.supervisor import PY, _env, _free_base, _idle_stats, _is_instance
from devcluster._proto import helloworld_pb2_grpc
from devcluster.api import Cluster
from devcluster.client import BalancedChannel
from devcluster.statedir import running_pid

SERVICE = "greeter"
TARGET = f"xds:///{SERVICE}"
#: Nacos's push to a subscribed client, about 0.5 s: a stated anchor, not measured here.
NACOS_PUSH_MS = 500.0
#: The commit that made the supervisor serve xDS; ``up -d``'s anchor is its parent.
XDS_COMMIT = "cce5bc9"
ROOT = Path(__file__).resolve().parent.parent
#: The fault of scenario 19 (``devcluster fault greeter --delay 50ms:20 --abort UNAVAILABLE:10``).
FAULT_DELAY, FAULT_ABORT = "100ms:20", "UNAVAILABLE:10"
DELAY_S, DELAY_PCT, ABORT_PCT = 0.1, 20.0, 10.0
#: Caller groups of scenarios 15 and 16: label -> (channel kind, calls in flight).
GROUPS: dict[str, tuple[str, int]] = {
    "xds, 8 in flight": ("xds", 8), "native rr, 8 in flight": ("native", 8),
    "xds, sequential": ("xds", 1), "native rr, sequential": ("native", 1)}
ACTIONS = ("stop", "kill", "reload", "pause")


@dataclass(frozen=True)
class XdsSizes:
    changes: int = 50  # weight flips (13)
    share_calls: int = 1400  # (14)
    fault_calls: int = 2000  # per client (19)
    runs: int = 3  # per action (15, 16)
    observe_s: float = 1.0  # stop/kill -> start
    hold_s: float = 4.0  # pause length (default health checks notice in ~2-3 s)
    back_timeout_s: float = 6.0
    clients: int = 10  # xDS clients connected (17)
    idle_s: float = 5.0  # idle CPU window (17, 18)
    up_runs: int = 5  # `up -d` per tree (17), after one untimed run of each
    health_sizes: tuple[int, ...] = (30, 100)  # (18)


QUICK = XdsSizes(changes=10, share_calls=300, fault_calls=300, runs=1, observe_s=0.5,
                 hold_s=2.0, back_timeout_s=3.0, clients=2, idle_s=1.0, up_runs=1,
                 health_sizes=(3,))


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def bootstrap_env(cluster: Cluster) -> Iterator[str]:
    """``GRPC_XDS_BOOTSTRAP`` of this process set to ``cluster``'s bootstrap file, and
    restored after: grpcio reads the bootstrap from the environment only (its channel
    argument for it is test-only), when the first ``xds:///`` channel is made."""
    path = cluster.xds().bootstrap
    before = os.environ.get("GRPC_XDS_BOOTSTRAP")
    os.environ["GRPC_XDS_BOOTSTRAP"] = path
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop("GRPC_XDS_BOOTSTRAP", None)
        else:
            os.environ["GRPC_XDS_BOOTSTRAP"] = before


def xds_channel(timeout: float = 20.0) -> grpc.Channel:
    """A plain grpcio channel on ``xds:///greeter``, connected."""
    channel = grpc.insecure_channel(TARGET)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        channel.close()
        raise TimeoutError(f"{TARGET} not ready in {timeout:g} s") from None
    return channel


def _settle(call: Callable[[], str | None], ok: Callable[[str | None], bool], k: int,
            timeout: float = 10.0) -> None:
    """Call until ``k`` calls in a row satisfy ``ok`` (the client has the new view)."""
    end, streak = time.monotonic() + timeout, 0
    while streak < k:
        if time.monotonic() > end:
            raise TimeoutError("the client did not follow the registry change")
        streak = streak + 1 if ok(call()) else 0


# -- 13: weight propagation ---------------------------------------------------------------

def propagation(cluster: Cluster, changes: int) -> dict[str, Any]:
    """The weight flips through the xDS channel, beside the balanced client's, both timed
    from the bare registry write (``Cluster.weight`` also waits for the supervisor's
    timeline, which can outlast the propagation itself)."""
    names = sorted(addresses(cluster))
    out: dict[str, Any] = {"nacos_push_ms": NACOS_PUSH_MS}
    makers: dict[str, Callable[[], grpc.Channel]] = {
        "balanced": lambda: BalancedChannel(SERVICE, cluster.state_dir, stats=False),
        "xds": xds_channel}
    for label, make in makers.items():
        channel = make()
        try:
            out[label] = _flips(cluster, channel, names, changes)
        finally:
            channel.close()
            cluster.registry.update_many({n: {"weight": 1} for n in names})
    return out


def _flips(cluster: Cluster, channel: grpc.Channel, names: Sequence[str],
           changes: int) -> dict[str, Any]:
    """Scenario 6's flips on ``channel``, connected to every instance first."""
    x, y = names[0], names[1]
    call = weights._caller(channel)
    seen: set[str | None] = set()
    _settle(call, lambda got: seen.add(got) or seen >= set(names), 1)
    cluster.registry.update_many({n: {"weight": 1 if n == y else 0} for n in names})
    _settle(call, lambda got: got == y, 50)

    def write(name: str, weight: int) -> None:
        cluster.registry.update(name, weight=weight)

    return weights.time_changes(cluster, call, x, y, changes, write=write)


# -- 14: shares ------------------------------------------------------------------------------

def shares(cluster: Cluster, calls: int) -> dict[str, Any]:
    """5:1:1 over ``calls`` xDS calls, beside scenario 7's balanced and native figures."""
    anchors = weights.accuracy(cluster, calls, {"5:1:1": (5, 1, 1)})["5:1:1"]
    names = sorted(addresses(cluster))
    wanted = dict(zip(names, (5, 1, 1), strict=True))
    cluster.registry.update_many({n: {"weight": w} for n, w in wanted.items()})
    channel = xds_channel()
    try:
        call = weights._caller(channel)
        for _ in range(200):  # a weight change lands in ms (scenario 13)
            call()
        served = [call() for _ in range(calls)]
    finally:
        channel.close()
        cluster.registry.update_many({n: {"weight": 1} for n in names})
    first = names[0]

    def top(s: Mapping[str, Any]) -> dict[str, Any]:
        row = s["instances"][first]
        return {"calls": s["calls"], "share_pct": row["share_pct"], "error_pp": row["error_pp"],
                "max_error_pp": s["max_error_pp"], "unknown": s["unknown"]}

    return {"weights": wanted, "expected_pct": 100 * 5 / 7,
            "xds": top(weights.share_stats(served, wanted)),
            "balanced": top(anchors["balanced"]), "native": top(anchors["native"])}


# -- 19: fault accuracy ----------------------------------------------------------------------

def _timed_calls(channel: grpc.Channel, calls: int, width: int = 8) -> list[tuple[float, str]]:
    """``calls`` SayHello calls, ``width`` at a time: (seconds, status code name) each."""
    say = helloworld_pb2_grpc.GreeterStub(channel).SayHello
    out: list[tuple[float, str]] = []
    left = [calls]
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            t0 = time.perf_counter()
            try:
                say(REQUEST, timeout=2.0)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            out.append((time.perf_counter() - t0, code))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(width)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _rates(calls: Sequence[tuple[float, str]]) -> dict[str, Any]:
    n = len(calls)
    codes: dict[str, int] = {}
    for _, code in calls:
        codes[code] = codes.get(code, 0) + 1
    return {"calls": n, "abort_pct": 100 * codes.get("UNAVAILABLE", 0) / n,
            "delay_pct": 100 * sum(1 for s, _ in calls if s >= DELAY_S) / n, "codes": codes}


def fault_accuracy(cluster: Cluster, calls: int) -> dict[str, Any]:
    """The fault's abort and delay rates as the xDS channel and a balanced client see them."""
    out: dict[str, Any] = {"asked": {"abort_pct": ABORT_PCT, "delay_pct": DELAY_PCT,
                                     "delay_s": DELAY_S, "fault": [FAULT_DELAY, FAULT_ABORT]}}
    makers: dict[str, Callable[[], grpc.Channel]] = {
        "xds": xds_channel,
        "balanced": lambda: BalancedChannel(SERVICE, cluster.state_dir, stats=False)}
    for label, make in makers.items():
        channel = make()
        try:
            before = _rates(_timed_calls(channel, max(200, calls // 4)))
            with cluster.fault(SERVICE, delay=FAULT_DELAY, abort=FAULT_ABORT):
                _wait_abort(channel)
                after = _rates(_timed_calls(channel, calls))
        finally:
            channel.close()
        # A call slow anyway (p = s) looks delayed: observed = d + (1 - d) s.
        s = before["delay_pct"] / 100
        net = 100 * (after["delay_pct"] / 100 - s) / (1 - s) if s < 1 else None
        out[label] = {**after, "slow_without_fault_pct": before["delay_pct"],
                      "delay_net_pct": net}
    return out


def _wait_abort(channel: grpc.Channel, timeout: float = 10.0) -> None:
    """Call until one call is aborted: the client has the fault."""
    call = weights._caller(channel)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            call()
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                return
    raise TimeoutError("the client did not get the fault")


# -- 15, 16: failed calls and rejoin -------------------------------------------------------

def failover(cluster: Cluster, runs: int, observe: float, hold: float, back_timeout: float,
             progress: Callable[[str], None] = _log) -> dict[str, Any]:
    """Every action ``runs`` times while every group of :data:`GROUPS` calls."""
    addrs = addresses(cluster)
    names = sorted(addrs)
    with ExitStack() as stack:
        groups: dict[str, list[Caller]] = {}
        for label, (kind, width) in GROUPS.items():
            channel = xds_channel() if kind == "xds" else native_channel(
                [addrs[n] for n in names])
            stack.callback(channel.close)
            groups[label] = [Caller(f"{label}/{i}", channel) for i in range(width)]
        everyone = [c for callers in groups.values() for c in callers]
        for c in everyone:
            c.start()
        stack.callback(_halt, everyone)
        warm = wait_until_all_served(everyone, names, 10.0)
        rows = []
        for action in ACTIONS:
            for i in range(runs):
                victim = names[i % len(names)]
                row = (_reload_run(cluster, everyone) if action == "reload" else
                       one_run(cluster, everyone, action, victim, observe, hold, back_timeout))
                rows.append(_by_group(row, groups))
                progress(f"xds {action} {i + 1}/{runs}: " + ", ".join(
                    f"{k} failed {v['failed']}" for k, v in rows[-1]["groups"].items()))
                time.sleep(0.2)
    return {"settings": {"runs": runs, "observe_s": observe, "hold_s": hold,
                         "back_timeout_s": back_timeout, "deadline_s": 1.0, "warm_up_ok": warm,
                         "groups": {k: list(v) for k, v in GROUPS.items()}},
            "summary": _summary(rows), "runs": rows}


def _halt(callers: Sequence[Caller]) -> None:
    for c in callers:
        c.halt.set()
    for c in callers:
        c.join(timeout=5)


def _reload_run(cluster: Cluster, callers: Sequence[Caller]) -> dict[str, Any]:
    """``reload --all`` while the callers call; their calls judged until 1 s after."""
    t_act = time.time()
    cluster.reload(all=True)
    t_restore = time.time()
    time.sleep(1.0)
    t_end = time.time()
    return {"action": "reload", "victim": "all", "action_s": t_restore - t_act,
            "callers": {c.label: {**analyse(c.calls, "", t_act, t_restore, t_end),
                                  "back_s": None} for c in callers}}


def _by_group(row: Mapping[str, Any], groups: Mapping[str, Sequence[Caller]]) -> dict[str, Any]:
    """One run's figures per group: failed calls summed, the first caller back."""
    out: dict[str, Any] = {k: v for k, v in row.items() if k != "callers"}
    out["groups"] = {}
    for label, callers in groups.items():
        rows = [row["callers"][c.label] for c in callers]
        back = [r["back_s"] for r in rows if r["back_s"] is not None]
        out["groups"][label] = {
            "failed": sum(r["failed"] for r in rows), "calls": sum(r["calls"] for r in rows),
            "codes": sorted({code for r in rows for code in r["codes"]}),
            "back_s": min(back) if back else None,
            "not_back": sum(1 for r in rows if r["back_s"] is None)}
    return out


def _summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for action in ACTIONS:
        mine = [r for r in rows if r["action"] == action]
        out[action] = {}
        for label in GROUPS:
            per = [r["groups"][label] for r in mine]
            back = [1000 * p["back_s"] for p in per if p["back_s"] is not None]
            out[action][label] = {
                "failed_per_run": [p["failed"] for p in per],
                "calls": sum(p["calls"] for p in per),
                "codes": sorted({c for p in per for c in p["codes"]}),
                "back_ms": back, "back_ms_median": statistics.median(back) if back else None,
                "back_ms_max": max(back) if back else None,
                "not_back": sum(1 for p in per if p["back_s"] is None)}
    return out


# -- 17, 18: idle CPU, to the nanosecond -----------------------------------------------------

def _cpu_ns(procs: Sequence[psutil.Process]) -> int:
    """CPU time of every thread of ``procs`` (``/proc/PID/task/*/schedstat``), ns."""
    total = 0
    for p in procs:
        for task in Path(f"/proc/{p.pid}/task").glob("*/schedstat"):
            try:
                total += int(task.read_text().split()[0])
            except (OSError, ValueError, IndexError):  # a thread that just ended
                continue
    return total


def idle_stats(pid: int, seconds: float) -> dict[str, float]:
    """``bench.supervisor``'s idle figures with the CPU from the scheduler's nanosecond
    counts: at ~1 % over a few seconds, ``cpu_times`` ticks (10 ms) are too coarse to tell
    10 % apart."""
    if not Path("/proc/self/schedstat").exists():
        return _idle_stats(pid, seconds)
    time.sleep(1.0)  # start-up work (probes, log lines) done
    sup = psutil.Process(pid)
    procs = [sup, *(p for p in sup.children(recursive=True) if not _is_instance(p))]
    began, before = time.monotonic(), _cpu_ns(procs)
    time.sleep(seconds)
    used, took = _cpu_ns(procs) - before, time.monotonic() - began
    mem = [p.memory_full_info() for p in procs]
    return {"idle_cpu_pct": 100 * used / 1e9 / took, "rss_mib": sum(m.rss for m in mem) / 2**20,
            "uss_mib": sum(m.uss for m in mem) / 2**20, "processes": float(len(procs))}


# -- 17: the supervisor's cost -------------------------------------------------------------

#: An xDS client process: one call, "ready", then idle (channel open) until stdin closes.
CLIENT = """
import sys, grpc
from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc
channel = grpc.insecure_channel(sys.argv[1])
try:
    helloworld_pb2_grpc.GreeterStub(channel).SayHello(
        helloworld_pb2.HelloRequest(name="idle"), timeout=20, wait_for_ready=True)
    print("ready", flush=True)
except grpc.RpcError as e:
    print(f"failed {e.code().name}", flush=True)
sys.stdin.read()
channel.close()
"""


@contextmanager
def xds_clients(bootstrap: str, n: int) -> Iterator[list[subprocess.Popen[str]]]:
    """``n`` idle xDS client processes, each connected (one call made); gone on exit."""
    env = {**_env(), "GRPC_XDS_BOOTSTRAP": bootstrap}
    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([PY, "-c", CLIENT, TARGET], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          text=True, env=env, cwd=ROOT))
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"an xDS client did not connect: {line or p.poll()}")
        yield procs
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def supervisor_cost(clients: int, idle: float, up_runs: int, n: int = 3) -> dict[str, Any]:
    """Idle CPU and USS without, then with, ``clients`` xDS clients; ``up -d`` timings."""
    out: dict[str, Any] = {"n": n, "clients": clients, "idle_s": idle}
    with greeter_cluster(n) as cluster:
        pid = running_pid(cluster.state_dir)
        assert pid is not None and pid > 0
        out["without"] = idle_stats(pid, idle)
        with xds_clients(cluster.xds().bootstrap, clients):
            out["with"] = idle_stats(pid, idle)
    out["up_detached"] = up_detached(n, up_runs)
    return out


def up_detached(n: int, runs: int) -> dict[str, Any]:
    """Median ``up -d`` of this tree and of the tree before xDS (None if git cannot say)."""
    out: dict[str, Any] = {"runs": runs, "before_commit": None, "now_s": None, "before_s": None}
    with tempfile.TemporaryDirectory(prefix="devcluster-bench-old-") as old:
        before = _tree_before_xds(Path(old))
        trees = {"now": ROOT} if before is None else {"now": ROOT, "before": Path(old)}
        for root in trees.values():  # untimed: bytecode compiled, files in the page cache
            _up_d(root, n)
        for _ in range(runs):  # alternating, so drift in the machine's load hits both
            for key, root in trees.items():
                out.setdefault(key, []).append(_up_d(root, n))
        out["before_commit"] = before
    out["now_s"] = statistics.median(out["now"])
    if "before" in out:
        out["before_s"] = statistics.median(out["before"])
    return out


def _tree_before_xds(into: Path) -> str | None:
    """The devcluster package of the parent of :data:`XDS_COMMIT` in ``into``; its hash."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", f"{XDS_COMMIT}^"], cwd=ROOT,
                                capture_output=True, text=True, timeout=10, check=True)
        archive = subprocess.run(["git", "archive", commit.stdout.strip(), "devcluster"],
                                 cwd=ROOT, capture_output=True, timeout=30, check=True)
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True,
                       timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip()


def _up_d(root: Path, n: int) -> float:
    """``devcluster up -d`` of ``n`` greeters with ``root``'s package first on the path."""
    env = {**_env(), "PYTHONPATH": str(root)}
    with tempfile.TemporaryDirectory(prefix="devcluster-bench-") as tmp:
        d = Path(tmp)
        (d / "Procfile").write_text("greeter: python -m devcluster.greeter --port $PORT\n")
        state = d / "state"
        base = _free_base(n)
        began = time.monotonic()
        subprocess.run([PY, "-m", "devcluster", "up", "-d", "-p", str(base), "-c",
                        f"greeter={n}", "--state-dir", str(state)], cwd=d, env=env,
                       stdout=subprocess.DEVNULL, check=True)
        took = time.monotonic() - began
        subprocess.run([PY, "-m", "devcluster", "down", "--state-dir", str(state)], cwd=d,
                       env=env, stdout=subprocess.DEVNULL, check=True)
        return took


# -- 18: the cost of the continuous health checks ------------------------------------------

def health_cost(sizes: Sequence[int], idle: float) -> list[dict[str, Any]]:
    """The supervisor's idle CPU at each size, health checks on (default) and off."""
    rows = []
    for n in sizes:
        for period in (None, 0.0):
            with tempfile.TemporaryDirectory(prefix="devcluster-bench-") as tmp:
                d = Path(tmp)
                (d / "Procfile").write_text(PROCFILE)
                if period is not None:
                    (d / "devcluster.toml").write_text(
                        f"[process.greeter]\nhealth_period = {period:g}\n")
                with Cluster(d / "Procfile", scale={"greeter": n}, state_dir=d / "state",
                             port=0, grace=5.0) as cluster:
                    pid = running_pid(cluster.state_dir)
                    assert pid is not None and pid > 0
                    stats = idle_stats(pid, idle)
            rows.append({"n": n, "health_period": "default" if period is None else period,
                         **stats})
            _log(f"xds health n={n} period={rows[-1]['health_period']}: "
                 f"{stats['idle_cpu_pct']:.2f} % CPU")
    return rows


# -- all of it -----------------------------------------------------------------------------

def measure(sz: XdsSizes = XdsSizes(), progress: Callable[[str], None] = _log) -> dict[str, Any]:
    """Scenarios 13-19, each beside its anchor."""
    out: dict[str, Any] = {"sizes": asdict(sz)}
    began = time.monotonic()
    with greeter_cluster(3) as cluster, bootstrap_env(cluster):
        out["propagation"] = propagation(cluster, sz.changes)
        progress(f"xds propagation done ({time.monotonic() - began:.0f} s)")
        out["shares"] = shares(cluster, sz.share_calls)
        out["faults"] = fault_accuracy(cluster, sz.fault_calls)
        progress(f"xds shares, faults done ({time.monotonic() - began:.0f} s)")
        out["failover"] = failover(cluster, sz.runs, sz.observe_s, sz.hold_s,
                                   sz.back_timeout_s, progress)
    out["supervisor"] = supervisor_cost(sz.clients, sz.idle_s, sz.up_runs)
    progress(f"xds supervisor cost done ({time.monotonic() - began:.0f} s)")
    out["health"] = health_cost(sz.health_sizes, sz.idle_s)
    out["seconds"] = time.monotonic() - began
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.xds",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    args = parser.parse_args(argv)
    print(json.dumps(measure(QUICK if args.quick else XdsSizes()), indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
