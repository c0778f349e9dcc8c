"""Failover under load: BalancedChannel beside grpc's own round_robin (issue 7, scenario 5).

``python -m bench.failover [--runs 10] [--hold 3] [--json]``

One devcluster cluster of three greeters (``greeter: python -m devcluster.greeter --port
$PORT``, ports picked by the servers). Three callers run at full speed for the whole
scenario, each in its own thread, each sequential with a per-call deadline of 1 s:

* ``balanced``: ``BalancedChannel("greeter", state_dir)`` with default options;
* ``balanced+retry``: the same with ``retry_on={UNAVAILABLE}`` (also repeats a call
  the server had already seen when its connection broke);
* ``native rr``: ``grpc.insecure_channel("ipv4:a,b,c")`` with ``round_robin``.

Then the same runs again with the asyncio driver and hedging (a second phase, so the
first one's figures stay comparable with earlier runs), ``native rr`` again the anchor:

* ``aio balanced``: ``AioBalancedChannel`` with default options (its own event loop);
* ``balanced+hedge`` / ``aio balanced+hedge``: each driver with
  ``retry_on={UNAVAILABLE}, hedge_after=0.1`` (idempotent calls: a call unanswered for
  100 ms also goes to another instance).

For each action (``kill`` = SIGKILL, ``stop`` = graceful stop, ``pause`` = SIGSTOP), on
each run one instance (in turn) gets the action while the callers go on, then is
restored (``start``, or ``resume`` after ``--hold`` seconds). Per run and caller:

* ``failed``: calls that ended in an error, from the action until the run ended (the
  restored instance back for every caller, or ``--back-timeout``);
* ``steady_s``: from the action to the end of the last call, begun before the restore,
  that failed or touched the affected instance (served by it, or, for ours, an attempt
  on it that failed over): after it, callers see a healthy two-instance cluster;
* ``back_s``: from the moment the restored instance serves (the registry's ``serving``
  write after ``start``; the ``resume`` command for pause) to the start of the first
  call it served.

Which instance served a call comes from the ``devcluster-instance`` response header, so
both channels are judged the same way. Not a test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc

from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc
from devcluster.api import Cluster
from devcluster.client import AioBalancedChannel, BalancedChannel, CallInfo
from devcluster.client.calls import header_instance
from devcluster.registry import State

REQUEST = helloworld_pb2.HelloRequest(name="bench")
PROCFILE = "greeter: python -m devcluster.greeter --port $PORT\n"
NATIVE_OPTIONS = [("grpc.lb_policy_name", "round_robin")]
ACTIONS = ("kill", "stop", "pause")
RETRY = (grpc.StatusCode.UNAVAILABLE,)
HEDGE = 0.1

#: The callers of each phase: label -> (driver, channel options). Every phase also
#: runs ``native rr``, the anchor; the first phase is the one of earlier runs.
PHASES: tuple[dict[str, tuple[str, dict[str, Any]]], ...] = (
    {"balanced": ("sync", {}), "balanced+retry": ("sync", {"retry_on": RETRY})},
    {"aio balanced": ("aio", {}),
     "balanced+hedge": ("sync", {"retry_on": RETRY, "hedge_after": HEDGE}),
     "aio balanced+hedge": ("aio", {"retry_on": RETRY, "hedge_after": HEDGE})},
)

#: One call: (start, end) wall-clock seconds, instance that served it (None if it
#: failed), status code name, instances of earlier attempts that failed over.
Call = tuple[float, float, str | None, str, tuple[str, ...]]


@contextmanager
def greeter_cluster(n: int) -> Iterator[Cluster]:
    """A running cluster of ``n`` greeters (``greeter.1``..) in a throw-away directory."""
    with tempfile.TemporaryDirectory(prefix="devcluster-bench-") as tmp:
        procfile = Path(tmp) / "Procfile"
        procfile.write_text(PROCFILE)
        cluster = Cluster(procfile, scale={"greeter": n}, state_dir=Path(tmp) / "state", port=0,
                          grace=5.0)
        with cluster:
            yield cluster


def addresses(cluster: Cluster) -> dict[str, str]:
    """Instance name -> ``127.0.0.1:port``, from the registry."""
    return {r.name: r.address for r in cluster.registry.snapshot().records.values()}


def native_channel(addrs: Sequence[str]) -> grpc.Channel:
    """grpc's own round_robin over ``addrs`` (repeat an address to weight it)."""
    return grpc.insecure_channel("ipv4:" + ",".join(addrs), options=NATIVE_OPTIONS)


class Caller(threading.Thread):
    """Sequential SayHello calls on ``channel`` until stopped; every call recorded."""

    def __init__(self, label: str, channel: grpc.Channel | None = None,
                 deadline: float = 1.0) -> None:
        super().__init__(name=f"bench-{label}", daemon=True)
        self.label = label
        self.channel = channel
        self.deadline = deadline
        self.calls: list[Call] = []
        self.halt = threading.Event()
        self._info: CallInfo | None = None

    def on_call(self, info: CallInfo) -> None:
        """BalancedChannel's ``on_call`` hook: runs in this thread, before the call returns."""
        self._info = info

    def run(self) -> None:
        assert self.channel is not None
        say = helloworld_pb2_grpc.GreeterStub(self.channel).SayHello.with_call
        now = time.time
        deadline = self.deadline
        while not self.halt.is_set():
            self._info = None
            t0 = now()
            try:
                _, call = say(REQUEST, timeout=deadline)
                inst, code = header_instance(call.initial_metadata()), "OK"
            except grpc.RpcError as e:
                inst, code = None, e.code().name
            except ValueError:  # the channel was closed under us: the end
                return
            self._record(t0, inst, code)

    def _record(self, t0: float, inst: str | None, code: str) -> None:
        info = self._info
        retried = tuple(name for name, _ in info.retried) if info is not None else ()
        self.calls.append((t0, time.time(), inst, code, retried))

    def first_served(self, name: str, since: float, start: int = 0) -> tuple[float | None, int]:
        """Start time of the first call begun at/after ``since`` that ``name`` served.

        Also returns where to resume scanning (so waiting loops stay linear).
        """
        calls = self.calls
        end = len(calls)
        for i in range(start, end):
            c = calls[i]
            if c[2] == name and c[0] >= since:
                return c[0], i
        return None, end


class AioCaller(Caller):
    """The same sequential calls through an AioBalancedChannel on the thread's own loop."""

    def __init__(self, label: str, state_dir: Path, deadline: float = 1.0,
                 **options: Any) -> None:
        super().__init__(label, deadline=deadline)
        self.state_dir = state_dir
        self.options = options

    def run(self) -> None:
        asyncio.run(self._calls())

    async def _calls(self) -> None:
        async with AioBalancedChannel("greeter", self.state_dir, on_call=self.on_call,
                                      **self.options) as channel:
            say = helloworld_pb2_grpc.GreeterStub(channel).SayHello
            while not self.halt.is_set():
                self._info = None
                t0 = time.time()
                call = say(REQUEST, timeout=self.deadline)
                try:
                    await call
                    inst, code = header_instance(await call.initial_metadata()), "OK"
                except grpc.RpcError as e:
                    inst, code = None, e.code().name
                self._record(t0, inst, code)


def wait_served(callers: Sequence[Caller], name: str, since: float,
                timeout: float) -> dict[str, float | None]:
    """Per caller, when ``name`` first served one of its calls begun after ``since``."""
    found: dict[str, float | None] = {c.label: None for c in callers}
    scan = {c.label: 0 for c in callers}
    end = time.monotonic() + timeout
    while True:
        for c in callers:
            if found[c.label] is None:
                found[c.label], scan[c.label] = c.first_served(name, since, scan[c.label])
        if all(v is not None for v in found.values()) or time.monotonic() >= end:
            return found
        time.sleep(0.005)


def analyse(calls: Sequence[Call], victim: str, t_act: float, t_restore: float,
            t_end: float) -> dict[str, Any]:
    """Failed calls and time to steady state of one run for one caller (see module doc)."""
    window = [c for c in calls if c[1] >= t_act and c[0] < t_end]
    failed = [c for c in window if c[3] != "OK"]
    before = [c for c in window if c[0] < t_restore]
    touching = [c for c in before if c[3] != "OK" or c[2] == victim or victim in c[4]]
    return {
        "calls": len(window),
        "failed": len(failed),
        "failed_after_restore": sum(1 for c in failed if c[0] >= t_restore),
        "codes": sorted({c[3] for c in failed}),
        "retried_attempts": sum(c[4].count(victim) for c in before),
        "steady_s": max(c[1] for c in touching) - t_act if touching else 0.0,
    }


def one_run(cluster: Cluster, callers: Sequence[Caller], action: str, victim: str,
            observe: float, hold: float, back_timeout: float) -> dict[str, Any]:
    """Act on ``victim``, restore it, and judge every caller's calls."""
    t_act = time.time()
    if action == "kill":
        cluster.kill(victim)
    elif action == "stop":
        cluster.stop(victim)
    else:
        cluster.pause(victim)
    acted = time.time()
    if action == "pause":
        time.sleep(max(0.0, t_act + hold - time.time()))
        t_restore = time.time()
        cluster.resume(victim)
        t_serving = t_restore
    else:
        time.sleep(max(0.3, t_act + observe - time.time()))
        t_restore = time.time()
        cluster.start(victim)
        record = cluster.registry.get(victim)
        t_serving = record.updated_at if record.state is State.SERVING else time.time()
    back = wait_served(callers, victim, t_restore, back_timeout)
    t_end = time.time()
    out: dict[str, Any] = {"action": action, "victim": victim, "action_s": acted - t_act,
                           "restore_to_serving_s": t_serving - t_restore, "callers": {}}
    for c in callers:
        row = analyse(c.calls, victim, t_act, t_restore, t_end)
        first = back[c.label]
        row["back_s"] = None if first is None else first - t_serving
        out["callers"][c.label] = row
    return out


def summarise(runs: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, Any]:
    """Per action and caller: failed calls (total, per run, runs with any), steady, back."""
    out: dict[str, Any] = {}
    for action in ACTIONS:
        mine = [r for r in runs if r["action"] == action]
        if not mine:
            continue
        out[action] = {}
        for label in labels:
            rows = [r["callers"][label] for r in mine]
            failed = [row["failed"] for row in rows]
            steady = [row["steady_s"] for row in rows]
            back = [row["back_s"] for row in rows if row["back_s"] is not None]
            out[action][label] = {
                "runs": len(rows),
                "failed_total": sum(failed),
                "failed_per_run": failed,
                "failed_max": max(failed),
                "runs_with_failures": sum(1 for f in failed if f),
                "codes": sorted({code for row in rows for code in row["codes"]}),
                "steady_ms_median": 1000 * statistics.median(steady),
                "steady_ms_max": 1000 * max(steady),
                "back_ms_median": 1000 * statistics.median(back) if back else None,
                "back_ms_max": 1000 * max(back) if back else None,
                "not_back": sum(1 for row in rows if row["back_s"] is None),
                "calls": sum(row["calls"] for row in rows),
            }
    return out


def measure(runs: int = 10, hold: float = 3.0, observe: float = 1.0, back_timeout: float = 6.0,
            deadline: float = 1.0, actions: Sequence[str] = ACTIONS,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Scenario 5: ``runs`` runs of every action, per phase; raw runs and summaries.

    The first phase's figures are at the top level (as in earlier runs); the
    asyncio driver's and hedging's are under ``"aio"``.
    """
    with greeter_cluster(3) as cluster:
        phases = [_phase(cluster, callers, runs, hold, observe, back_timeout, deadline,
                         actions, progress) for callers in PHASES]
    first, second = phases
    first["aio"] = second
    return first


def _phase(cluster: Cluster, specs: dict[str, tuple[str, dict[str, Any]]], runs: int,
           hold: float, observe: float, back_timeout: float, deadline: float,
           actions: Sequence[str], progress: Callable[[str], None] | None) -> dict[str, Any]:
    """Every action ``runs`` times with the callers of ``specs`` and ``native rr``."""
    with ExitStack() as stack:
        addrs = addresses(cluster)
        names = sorted(addrs)
        callers: list[Caller] = []
        for label, (driver, options) in specs.items():
            if driver == "aio":
                callers.append(AioCaller(label, cluster.state_dir, deadline, **options))
                continue
            caller = Caller(label, deadline=deadline)
            caller.channel = stack.enter_context(BalancedChannel(
                "greeter", cluster.state_dir, on_call=caller.on_call, **options))
            callers.append(caller)
        native = native_channel([addrs[n] for n in names])
        stack.callback(native.close)
        callers.append(Caller("native rr", native, deadline=deadline))
        try:
            for c in callers:
                c.start()
            warm = wait_until_all_served(callers, names, 10.0)
            results = []
            for action in actions:
                for i in range(runs):
                    victim = names[i % len(names)]
                    row = one_run(cluster, callers, action, victim, observe, hold, back_timeout)
                    results.append(row)
                    if progress is not None:
                        progress(f"failover {action} {i + 1}/{runs} {victim}: " + ", ".join(
                            f"{k} failed {v['failed']} back {_ms(v['back_s'])}"
                            for k, v in row["callers"].items()))
                    time.sleep(0.2)
        finally:
            for c in callers:
                c.halt.set()
            for c in callers:
                c.join(timeout=5)
        labels = [c.label for c in callers]
        rates = {c.label: len(c.calls) / max(1e-9, c.calls[-1][1] - c.calls[0][0])
                 for c in callers if len(c.calls) > 1}
    return {
        "settings": {"instances": 3, "runs": runs, "deadline_s": deadline, "hold_s": hold,
                     "observe_s": observe, "back_timeout_s": back_timeout,
                     "warm_up_ok": warm, "callers": {k: [d, {o: str(v) for o, v in opts.items()}]
                                                     for k, (d, opts) in specs.items()}},
        "calls_per_s": rates,
        "summary": summarise(results, labels),
        "runs": results,
    }


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.0f} ms"


def wait_until_all_served(callers: Sequence[Caller], names: Sequence[str], timeout: float) -> bool:
    """True once every caller has had calls served by every instance."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all({c[2] for c in caller.calls[-200:]} >= set(names) for caller in callers):
            return True
        time.sleep(0.02)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per action (default 10)")
    parser.add_argument("--hold", type=float, default=3.0,
                        help="seconds an instance stays paused (default 3)")
    parser.add_argument("--observe", type=float, default=1.0,
                        help="seconds between kill/stop and start (default 1)")
    parser.add_argument("--back-timeout", type=float, default=6.0,
                        help="longest wait for a restored instance to get calls (default 6)")
    parser.add_argument("--actions", default=",".join(ACTIONS), help="kill,stop,pause")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    args = parser.parse_args(argv)
    result = measure(args.runs, args.hold, args.observe, args.back_timeout,
                     actions=[a for a in args.actions.split(",") if a], progress=print)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for phase in (result, result["aio"]):
        for action, per in phase["summary"].items():
            for label, s in per.items():
                back = "-" if s["back_ms_median"] is None else f"{s['back_ms_median']:.0f}"
                print(f"{action:<6} {label:<19} failed {s['failed_total']:>3} "
                      f"(max {s['failed_max']}/run, {s['runs_with_failures']}/{s['runs']} runs)"
                      f"  steady p50 {s['steady_ms_median']:7.1f} ms  back p50 {back} ms"
                      f"  not back {s['not_back']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
