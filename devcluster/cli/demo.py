"""``devcluster demo``: the seed article's story, scripted, narrated and checked.

Three greeters start; a balancing client calls them in the background and prints
every call; then, step by step: equal shares, ``weight server1 5``, ``kill server2``
(no failed call), ``start server2`` (it rejoins), ``pause server3`` (ejected after at
most 2 failed calls) and ``resume server3``, the same pause with hedging on (no failed
call at all), a fault on server2 (slow, then failing half its calls), ``disable
server3``, graceful shutdown.
Each step checks what it showed; the exit status is 0 only if every check held, so
the demo doubles as a smoke test.
"""

from __future__ import annotations

import contextlib
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import psutil

from devcluster.api import Cluster
from devcluster.cli.views import Terminal, check_mark, table
from devcluster.client import BalancedChannel, CallInfo

BUNDLED_PROCFILE = Path(__file__).parent.parent / "data" / "Procfile"
DEADLINE = 1.0  # per call, as in the seed's client
HEDGE = 0.1  # seconds unanswered before a call also goes to another instance


@dataclass
class StepResult:
    title: str
    calls: Counter[str] = field(default_factory=Counter)
    failures: int = 0
    ok: bool = False
    verdict: str = ""


class _Client:
    """Calls SayHello in a background thread, printing each call, tagging it by step."""

    def __init__(self, channel: BalancedChannel, console: Terminal, interval: float) -> None:
        from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc

        # The generated stub is untyped: say what it is once, here.
        self.stub = cast("Callable[[object], Any]", helloworld_pb2_grpc.GreeterStub)(channel)
        self.request = helloworld_pb2.HelloRequest
        self.console = console
        self.interval = interval
        self.step: StepResult | None = None
        self.log: list[tuple[StepResult | None, CallInfo]] = []
        self.lock = threading.Condition()
        self.stop = threading.Event()
        self.seq = 0
        self.thread = threading.Thread(target=self._run, name="demo-client", daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            self.seq += 1
            with contextlib.suppress(Exception):
                self.stub.SayHello(self.request(name=f"world-{self.seq}"), timeout=DEADLINE)
            self.stop.wait(self.interval)

    def on_call(self, info: CallInfo) -> None:
        with self.lock:
            step = self.step
            self.log.append((step, info))
            if step is not None:
                if info.ok:
                    step.calls[info.instance] += 1
                else:
                    step.failures += 1
            self.lock.notify_all()
        self.console.print(_line(info), "" if info.ok else "red")

    def calls_since(self, mark: int) -> list[CallInfo]:
        with self.lock:
            return [info for _, info in self.log[mark:]]

    def mark(self) -> int:
        with self.lock:
            return len(self.log)

    def wait_calls(self, mark: int, n: int, timeout: float) -> list[CallInfo]:
        """Wait until ``n`` calls completed after ``mark`` (or the timeout)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self.log) - mark < n and time.monotonic() < deadline:
                self.lock.wait(deadline - time.monotonic())
            return [info for _, info in self.log[mark:]]

    def wait_for(self, pred: Callable[[CallInfo], bool], mark: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.lock:
            while time.monotonic() < deadline:
                if any(pred(info) for _, info in self.log[mark:]):
                    return True
                self.lock.wait(max(0.0, deadline - time.monotonic()))
            return False


def _line(info: CallInfo) -> str:
    text = f"{info.seq:>4}  {info.instance:<8} {info.address:<16} {info.latency_ms:6.1f} ms  "
    if info.ok:
        text += str(getattr(info.response, "message", ""))
    else:
        text += f"FAILED {info.code}: {info.message}"
    if info.retried:
        text += "  (retried after " + ", ".join(f"{n} {c}" for n, c in info.retried) + ")"
    return text


def _shares_ok(calls: Counter[str], weights: dict[str, int], tolerance: float) -> bool:
    total, wsum = sum(calls.values()), sum(weights.values())
    return total > 0 and all(abs(calls[n] / total - w / wsum) <= tolerance
                             for n, w in weights.items())


class Demo:
    """The scripted story. ``run()`` returns True when every step behaved."""

    def __init__(self, console: Terminal, speed: float = 1.0, port: int | None = None,
                 procfile: Path = BUNDLED_PROCFILE) -> None:
        self.console = console
        self.speed = speed
        self.port = port
        self.procfile = procfile
        self.results: list[StepResult] = []

    def pause(self, seconds: float) -> None:
        time.sleep(seconds / self.speed)  # narration pacing only, never a correctness wait

    def say(self, title: str, command: str | None = None) -> StepResult:
        self.console.rule(title)
        if command:
            self.console.print(f"$ {command}", "cyan")
        step = StepResult(title)
        self.results.append(step)
        return step

    def judge(self, step: StepResult, ok: bool, verdict: str) -> None:
        step.ok, step.verdict = ok, verdict
        self.console.print(f"{self.console.paint(*check_mark(ok))} {verdict}")
        self.pause(0.8)

    def run(self) -> bool:
        with tempfile.TemporaryDirectory(prefix="devcluster-demo-") as tmp:
            procfile = self._procfile(Path(tmp))
            cluster = Cluster(procfile, state_dir=Path(tmp) / "state", grace=2.0, port=0)
            step = self.say("1. Start three greeters", f"devcluster -f {self.procfile.name} up -d")
            try:
                cluster.up()
                pids = [i.pid for i in cluster.instances if i.pid]
                self.console.print(", ".join(f"{i.name} {i.state} on {i.address}"
                                             for i in cluster.instances))
                self.judge(step, all(i.state == "serving" for i in cluster.instances),
                           "three instances serving, each registered with weight 1")
                # SayHello is idempotent: even the call a crashing server was running
                # may be repeated elsewhere, so a kill costs the caller nothing.
                with cluster.channel("server", eject_after=2,
                                     retry_on={grpc.StatusCode.UNAVAILABLE}) as channel:
                    client = _Client(channel, self.console, 0.08 / self.speed)
                    channel.on_call = client.on_call
                    client.thread.start()
                    try:
                        self._story(cluster, channel, client)
                    finally:
                        client.stop.set()
                        client.thread.join(5)
            finally:
                step = self.say("9. Graceful shutdown", "devcluster down")
                cluster.down()
                left = [p for p in locals().get("pids", []) if psutil.pid_exists(p)]
                self.judge(step, not left, "every instance drained, stopped, and gone"
                           if not left else f"still running: {left}")
        self._table()
        return all(r.ok for r in self.results)

    def _procfile(self, tmp: Path) -> Path:
        # The bundled Procfile's fixed ports may be taken (a `devcluster up` of the
        # user's own): the demo runs the same three greeters on free ports.
        text = re.sub(r"--port \d+", "--port $PORT", self.procfile.read_text())
        path = tmp / "Procfile"
        path.write_text(text)
        write_preload(path)
        return path

    def _step_calls(self, client: _Client, step: StepResult, n: int) -> list[CallInfo]:
        mark = client.mark()
        with client.lock:
            client.step = step
        calls = client.wait_calls(mark, n, timeout=30)
        with client.lock:
            client.step = None
        return calls

    def _story(self, cluster: Cluster, channel: BalancedChannel, client: _Client) -> None:
        """Steps 2 to 7, in order; each judges itself."""
        self._shares(cluster, channel, client)
        self._crash(cluster, client)
        self._freeze(cluster, channel, client)
        self._hedged_freeze(cluster, channel, client)
        self._faults(cluster, client)
        self._disable(cluster, channel, client)

    def _shares(self, cluster: Cluster, channel: BalancedChannel, client: _Client) -> None:
        step = self.say("2. A balancing client: equal weights, equal shares",
                        "devcluster client --service server")
        self._step_calls(client, step, 30)
        self.judge(step, step.failures == 0 and _shares_ok(
            step.calls, {"server1": 1, "server2": 1, "server3": 1}, 0.05),
            f"shares {dict(step.calls)}: one third each")

        step = self.say("3. Shift the load: weight 5 on server1", "devcluster weight server1 5")
        cluster.weight("server1", 5)
        _wait(lambda: channel.balancer.weights().get("server1") == 5, 5)
        self._step_calls(client, step, 35)
        self.judge(step, step.failures == 0 and _shares_ok(
            step.calls, {"server1": 5, "server2": 1, "server3": 1}, 0.06),
            f"shares {dict(step.calls)}: server1 gets 5/7, interleaved")

    def _crash(self, cluster: Cluster, client: _Client) -> None:
        step = self.say("4. Crash server2 under load", "devcluster kill server2")
        with client.lock:
            client.step = step
        cluster.kill("server2")
        after = client.mark()
        calls = client.wait_calls(after, 21, timeout=30)
        with client.lock:
            client.step = None
        to_killed = sum(1 for c in calls if c.ok and c.instance == "server2")
        retried = sum(1 for c in client.calls_since(0) if c.retried)
        self.judge(step, step.failures == 0 and to_killed == 0,
                   f"no failed call ({retried} retried transparently); server2 got "
                   f"{to_killed} calls after the kill")

        step = self.say("5. Bring server2 back", "devcluster start server2")
        cluster.start("server2")
        mark = client.mark()
        back = client.wait_for(lambda c: c.ok and c.instance == "server2", mark, 10)
        self._step_calls(client, step, 14)
        self.judge(step, back and step.failures == 0,
                   "server2 serves again and rejoined the rotation at once")

    def _freeze(self, cluster: Cluster, channel: BalancedChannel, client: _Client) -> None:
        step = self.say("6. Freeze server3 (a hung server stays registered)",
                        "devcluster pause server3")
        with client.lock:
            client.step = step
        cluster.pause("server3")
        self._wait_ejected(channel, "server3", 15)
        mark = client.mark()
        calls = client.wait_calls(mark, 14, timeout=30)
        with client.lock:
            client.step = None
        # A call already on its way to the frozen instance when it was ejected still
        # ends (as a failure, counted above) after this point: only answers count here.
        to_frozen = sum(1 for c in calls if c.ok and c.instance == "server3")
        self.judge(step, step.failures <= 2 and to_frozen == 0,
                   f"{step.failures} calls hit the deadline, then server3 was ejected "
                   f"(at most 2 allowed)")
        step = self.say("   Thaw it", "devcluster resume server3")
        cluster.resume("server3")
        mark = client.mark()
        with client.lock:
            client.step = step
        back = client.wait_for(lambda c: c.ok and c.instance == "server3", mark, 15)
        with client.lock:
            client.step = None
        self.judge(step, back, "server3 answered a health probe and is back in rotation")

    def _faults(self, cluster: Cluster, client: _Client) -> None:
        """A fault injected on server2: slow, then failing half its calls. The client
        applies it before it sends, as gRPC's fault filter does for xDS clients: the
        delayed calls still succeed, the aborted ones fail with the status asked for and
        are never retried elsewhere (a fault is there to test the caller's own handling)."""
        step = self.say("7. Make server2 slow (an injected fault)",
                        "devcluster fault server2 --delay 300ms")
        cluster.fault("server2", delay="300ms")
        calls = self._step_calls(client, step, 21)
        slow = [c.latency_ms for c in calls if c.ok and c.instance == "server2"]
        fast = [c.latency_ms for c in calls if c.ok and c.instance != "server2"]
        self.judge(step, step.failures == 0 and bool(slow) and min(slow) >= 300
                   and bool(fast) and max(fast) < 300,
                   f"server2's {len(slow)} calls took {min(slow, default=0):.0f} ms or more, "
                   f"the others at most {max(fast, default=0):.0f} ms; none failed")

        step = self.say("7b. Make half of server2's calls fail",
                        "devcluster fault server2 --abort UNAVAILABLE:50")
        cluster.fault("server2", abort="UNAVAILABLE:50")
        calls = self._step_calls(client, step, 42)
        failed = [c for c in calls if not c.ok]
        cluster.clear_fault("server2")
        only_server2 = all(c.instance == "server2" and c.code == "UNAVAILABLE" for c in failed)
        served = step.calls["server2"]
        self.judge(step, bool(failed) and only_server2 and not any(c.retried for c in failed),
                   f"{len(failed)} of server2's {len(failed) + served} calls failed "
                   "UNAVAILABLE (not retried: the caller sees the fault); the others' none"
                   if only_server2 else f"failures elsewhere: {[c.instance for c in failed]}")

    def _disable(self, cluster: Cluster, channel: BalancedChannel, client: _Client) -> None:
        step = self.say("8. Take server3 out of rotation", "devcluster disable server3")
        cluster.disable("server3")
        _wait(lambda: "server3" not in channel.balancer.weights(), 5)
        self._step_calls(client, step, 14)
        self.judge(step, step.failures == 0 and step.calls["server3"] == 0,
                   f"shares {dict(step.calls)}: server3 keeps running, gets no calls")

    def _hedged_freeze(self, cluster: Cluster, channel: BalancedChannel,
                       client: _Client) -> None:
        # SayHello is idempotent, so the client may hedge: a call unanswered for
        # 100 ms also goes to another instance, and the first answer wins.
        channel.hedge_after = HEDGE
        step = self.say("6b. Freeze server3 again, with hedging on",
                        f"devcluster client --hedge {HEDGE}   # then: devcluster pause server3")
        with client.lock:
            client.step = step
        cluster.pause("server3")
        self._wait_ejected(channel, "server3", 15)
        calls = client.wait_calls(client.mark(), 14, timeout=30)
        with client.lock:
            client.step = None
        hedged = sum(1 for c in client.calls_since(0) if ("server3", "DEADLINE_EXCEEDED")
                     in c.retried)
        to_frozen = sum(1 for c in calls if c.ok and c.instance == "server3")
        self.judge(step, step.failures == 0 and to_frozen == 0,
                   f"{step.failures} failed calls: {hedged} hedged to another instance after "
                   f"{HEDGE * 1000:.0f} ms, then server3 was ejected")
        cluster.resume("server3")
        back = client.wait_for(lambda c: c.ok and c.instance == "server3", client.mark(), 15)
        channel.hedge_after = None
        if not back:
            self.judge(step, False, "server3 did not come back after resume")

    def _wait_ejected(self, channel: BalancedChannel, name: str, timeout: float) -> None:
        _wait(lambda: any(i.name == name and i.ejected for i in channel.instances()), timeout)

    def _table(self) -> None:
        columns = ("step", "server1", "server2", "server3", "failed", "ok")
        rows = ([(r.title.strip(), ""), *((str(r.calls[n]), "") for n in columns[1:4]),
                 (str(r.failures), ""), check_mark(r.ok)] for r in self.results)
        self.console.print(table(columns, rows, self.console.colour, right=columns[1:],
                                 title="devcluster demo"))


#: What the bundled greeter imports: preloaded once, each instance forked from it.
GREETER_PRELOAD = ("grpc", "grpc.aio", "devcluster.greeter.server")


def write_preload(procfile: Path) -> None:
    """The demo's greeters are forked from one preloaded interpreter where that is safe
    (Linux; the bundled greeter has one thread after its imports): a devcluster.toml
    beside ``procfile`` says so for every type of it."""
    if not sys.platform.startswith("linux"):
        return
    types = re.findall(r"^([A-Za-z0-9_-]+):", procfile.read_text(), re.MULTILINE)
    modules = ", ".join(f'"{m}"' for m in GREETER_PRELOAD)
    procfile.with_name("devcluster.toml").write_text(
        "".join(f"[process.{t}]\npreload = [{modules}]\n" for t in types))


def _wait(pred: Callable[[], bool], timeout: float) -> bool:
    """Wait for an in-process condition the balancer updates from its watcher thread."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)  # polls an in-memory view: no event to wait on from outside
    return True


def run_demo(console: Terminal, speed: float = 1.0) -> bool:
    """Entry point of ``devcluster demo``."""
    return Demo(console, speed).run()
