"""``devcluster demo --lesson``: the article's progression, step by step, checked.

The blog post devcluster grew from teaches client-side balancing in gRPC in
stages: one server address; the comma-separated list that does not work; a
static resolver with grpc's default ``pick_first``, then ``round_robin``; a
registry-backed resolver that follows instances as they change; a weighted
round robin with weight 5 on the first instance. This module replays each stage
on three real greeters: it says what the article claims, shows the devcluster
command, runs it (the per-call lines are exactly what that command prints),
and checks the claim. The exit status is 0 only if every claim held.
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from devcluster.api import Cluster
from devcluster.cli.client_runner import ClientOptions, run_client
from devcluster.cli.demo import BUNDLED_PROCFILE, write_preload
from devcluster.cli.views import Terminal, check_mark, table
from devcluster.client.calls import CallInfo

NAMES = ("server1", "server2", "server3")
DEADLINE = 1.0  # per call: long for a greeter, short enough to see a hung one quickly
#: Seconds between calls at speed 1 (a talk slows it down with --speed).
INTERVAL = 0.05
#: Longest wait for any one thing the lesson expects (a call, a change); a step
#: that runs into it fails instead of hanging.
PATIENCE = 15.0


@dataclass
class LessonStep:
    """One stage of the article and what it showed."""

    title: str
    calls: Counter[str] = field(default_factory=Counter)
    failures: int = 0
    ok: bool = False
    verdict: str = ""

    def count(self, infos: Sequence[CallInfo]) -> None:
        for info in infos:
            if info.ok:
                self.calls[info.instance] += 1
            else:
                self.failures += 1


class _Background:
    """``run_client`` in a thread until stopped; every call kept, waitable."""

    def __init__(self, opts: ClientOptions, console: Terminal) -> None:
        self.opts = opts
        self.console = console
        self.infos: list[CallInfo] = []
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lesson-client", daemon=True)

    def _run(self) -> None:
        run_client(self.opts, self.console, self.stop, on_call=self._seen, show_summary=False)

    def _seen(self, info: CallInfo) -> None:
        with self.cond:
            self.infos.append(info)
            self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.infos)

    def since(self, mark: int) -> list[CallInfo]:
        with self.cond:
            return self.infos[mark:]

    def wait(self, pred: Callable[[list[CallInfo]], bool], mark: int = 0,
             timeout: float = PATIENCE) -> bool:
        """Wait (on the calls, not a timer) until ``pred(calls since mark)`` holds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self.infos[mark:]):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.thread.is_alive():
                    return False
                self.cond.wait(remaining)
            return True

    def calls(self, n: int, mark: int) -> list[CallInfo]:
        """The first ``n`` calls after ``mark`` (fewer if they do not come in time)."""
        self.wait(lambda calls: len(calls) >= n, mark)
        return self.since(mark)[:n]


def _last_all(calls: Sequence[CallInfo], n: int, pred: Callable[[CallInfo], bool]) -> bool:
    """True when there are at least ``n`` calls and the last ``n`` all satisfy ``pred``."""
    return len(calls) >= n and all(pred(i) for i in calls[-n:])


class Lesson:
    """The article, replayed. ``run()`` returns True when every step held."""

    def __init__(self, console: Terminal, speed: float = 1.0,
                 procfile: Path = BUNDLED_PROCFILE) -> None:
        self.console = console
        self.speed = speed
        self.procfile = procfile
        self.interval = INTERVAL / speed
        self.results: list[LessonStep] = []
        self.addr: dict[str, str] = {}

    # -- narration -------------------------------------------------------------

    def pause(self, seconds: float) -> None:
        time.sleep(seconds / self.speed)  # narration pacing only, never a correctness wait

    def say(self, title: str, article: str, *commands: str, beyond: bool = False,
            ) -> LessonStep:
        """Open a step: its title, what the article says (or what we add), its commands."""
        self.console.rule(title)
        source = "Beyond the article:" if beyond else "The article:"
        self.console.print(f"{self.console.paint(source, 'italic')} {article}")
        for command in commands:
            self.console.print(f"$ {command}", "cyan")
        step = LessonStep(title)
        self.results.append(step)
        return step

    def meanwhile(self, command: str) -> None:
        """Show a command typed in a second terminal while a client runs."""
        self.console.print(f"{self.console.paint(f'$ {command}', 'cyan')}   "
                           f"{self.console.paint('(second terminal)', 'dim')}")

    def judge(self, step: LessonStep, ok: bool, verdict: str) -> None:
        step.ok, step.verdict = ok, verdict
        self.console.print(f"{self.console.paint(*check_mark(ok))} {verdict}")
        self.pause(0.6)

    def client(self, step: LessonStep, count: int, **opts: object) -> list[CallInfo]:
        """Run ``devcluster client -n count`` with ``opts``; book and return its calls."""
        infos: list[CallInfo] = []
        run_client(ClientOptions(name="lesson", count=count, interval=self.interval,
                                 timeout=DEADLINE, **opts),  # type: ignore[arg-type]
                   self.console, on_call=infos.append, show_summary=False)
        step.count(infos)
        return infos

    @contextmanager
    def background(self, **opts: object) -> Iterator[_Background]:
        """A client running until the block ends, as in a second terminal."""
        bg = _Background(ClientOptions(name="lesson", interval=self.interval, timeout=DEADLINE,
                                       **opts),  # type: ignore[arg-type]
                         self.console)
        bg.thread.start()
        try:
            yield bg
        finally:
            bg.stop.set()
            bg.thread.join(DEADLINE + 5)

    # -- the story ---------------------------------------------------------------

    def run(self) -> bool:
        began = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="devcluster-lesson-") as tmp:
            cluster = Cluster(self._procfile(Path(tmp)), state_dir=Path(tmp) / "state",
                              grace=2.0, port=0)
            pids: list[int] = []
            step = self.say(
                "0. Three instances of one service",
                "a Greeter server that takes its port from a flag, started three times "
                "from a goreman Procfile.", f"devcluster -f {self.procfile.name} up -d")
            try:
                cluster.up()
                instances = cluster.instances
                pids = [i.pid for i in instances if i.pid]
                self.addr = {i.name: i.address or "" for i in instances}
                self.console.print(", ".join(f"{i.name} on {i.address}" for i in instances))
                self.judge(step, all(i.state == "serving" for i in instances)
                           and sorted(self.addr) == list(NAMES),
                           "server1, server2, server3 serving, each on its own port")
                if step.ok:
                    self._story(cluster)
            finally:
                step = self.say("11. Shut down", "on Ctrl-C each server stops taking calls, "
                                "finishes the ones in flight and exits.", "devcluster down")
                cluster.down()
                left = [p for p in pids if psutil.pid_exists(p)]
                self.judge(step, bool(pids) and not left,
                           "every instance stopped and gone" if not left
                           else f"still running: {left}")
        self._table(time.monotonic() - began)
        return all(r.ok for r in self.results)

    def _procfile(self, tmp: Path) -> Path:
        # Free ports instead of the Procfile's fixed ones, which may be taken.
        path = tmp / "Procfile"
        path.write_text(re.sub(r"--port \d+", "--port $PORT", self.procfile.read_text()))
        write_preload(path)
        return path

    def _story(self, cluster: Cluster) -> None:
        a1, a2, a3 = (self.addr[n] for n in NAMES)
        listed = f"{a1},{a2},{a3}"

        step = self.say(
            "1. One address",
            "the first client dials a single host:port; grpc connects straight to it, so "
            "that one instance answers everything.",
            f"devcluster client --target {a1} -n 4")
        infos = self.client(step, 4, target=a1)
        self.judge(step, len(infos) == 4 and step.calls == {"server1": 4},
                   f"{step.calls['server1']} of {len(infos)} calls to server1")

        step = self.say(
            "2. The comma-separated list",
            "putting all three addresses in one string, separated by commas, does not "
            "give a client of three servers: the dial never succeeds.",
            f"devcluster client --target {listed} -n 2")
        infos = self.client(step, 2, target=listed)
        errors = sorted({f"{i.code}: {i.message}" for i in infos if not i.ok})
        self.judge(step, len(infos) == 2 and not any(i.ok for i in infos),
                   f"no call got through; grpc's own error: {errors[0] if errors else '-'}")

        step = self.say(
            "3. A static resolver, default policy",
            "a resolver that returns the fixed list makes grpc connect to all three, but "
            "its default pick_first policy sends every call to the first one.",
            f"devcluster client --target static:///{listed} --policy pick_first -n 6")
        infos = self.client(step, 6, target=f"static:///{listed}", policy="pick_first")
        self.judge(step, len(infos) == 6 and step.calls == {"server1": 6},
                   f"{step.calls['server1']} of {len(infos)} calls to server1 "
                   "(100%); server2 and server3 idle")

        step = self.say(
            "4. round_robin",
            "switching the balancing policy to round_robin spreads the calls evenly over "
            "the three instances.",
            f"devcluster client --target static:///{listed} --policy round_robin -n 9")
        infos = self.client(step, 9, target=f"static:///{listed}", policy="round_robin")
        self.judge(step, len(infos) == 9 and step.calls == dict.fromkeys(NAMES, 3),
                   f"shares {dict(step.calls)}: one third each")

        self._registry_steps(cluster)

    def _registry_steps(self, cluster: Cluster) -> None:
        registry = {"state_dir": cluster.state_dir, "service": "server"}

        step = self.say(
            "5. A registry-backed resolver",
            "a resolver subscribed to the service registry updates the client whenever "
            "instances change: taking one offline in the console removes it from the "
            "rotation, bringing it back restores it.",
            "devcluster client --policy round_robin")
        with self.background(policy="round_robin", **registry) as bg:
            first = bg.calls(6, 0)
            even = Counter(i.instance for i in first if i.ok) == dict.fromkeys(NAMES, 2)
            self.meanwhile("devcluster disable server2")
            cluster.disable("server2")
            # A call already on its way may still land on server2: wait for six in a
            # row that skip it (the registry write reaches the client in milliseconds).
            skipped = bg.wait(lambda calls: _last_all(
                calls, 6, lambda i: i.ok and i.instance != "server2"), bg.mark())
            self.meanwhile("devcluster enable server2")
            cluster.enable("server2")
            back_mark = bg.mark()
            back = bg.wait(lambda calls: any(i.ok and i.instance == "server2" for i in calls),
                           back_mark)
            step.count(bg.since(0))
        self.judge(step, even and skipped and back and step.failures == 0,
                   "equal shares; server2 skipped once disabled, back once enabled"
                   if even and skipped and back else
                   f"even at first: {even}, skipped when disabled: {skipped}, "
                   f"back when enabled: {back}, failed calls: {step.failures}")

        step = self.say(
            "6. Weighted round robin",
            "a custom balancer lists an instance of weight n n times; with instance 1 set "
            "to weight 5 it gets five calls out of seven.",
            "devcluster weight server1 5", "devcluster client -n 14")
        cluster.weight("server1", 5)
        infos = self.client(step, 14, policy="weighted", **registry)
        share = step.calls["server1"] / max(1, len(infos))
        self.judge(step, len(infos) == 14 and step.failures == 0 and abs(share - 5 / 7) < 0.01
                   and step.calls["server2"] == step.calls["server3"] == 2,
                   f"shares {dict(step.calls)}: server1 got {share:.0%} (5/7 = 71%)")

        self._fault_steps(cluster, registry)

    def _fault_steps(self, cluster: Cluster, registry: dict[str, object]) -> None:
        step = self.say(
            "7. An instance crashes",
            "the registry learns of a crash only after it happened; the calls caught "
            "in between must go elsewhere, not fail.",
            "devcluster weight server1 1", "devcluster client", beyond=True)
        cluster.weight("server1", 1)
        with self.background(policy="weighted", **registry) as bg:
            bg.calls(6, 0)
            self.meanwhile("devcluster kill server2")
            cluster.kill("server2")
            mark = bg.mark()
            after = bg.calls(12, mark)
            step.count(bg.since(0))
            killed_ok = (len(after) == 12 and step.failures == 0
                         and not any(i.instance == "server2" for i in after))
            retried = sum(1 for i in bg.since(0) if i.retried)
            self.judge(step, killed_ok,
                       f"no failed call ({retried} retried on another instance); server2 "
                       f"served {sum(1 for i in after if i.instance == 'server2')} calls "
                       "after the kill")

            step = self.say(
                "8. An instance hangs",
                "a frozen server stays registered, so only the client can notice: it must "
                "stop calling it after a timeout or two.", beyond=True)
            self.meanwhile("devcluster pause server3")
            mark = bg.mark()
            cluster.pause("server3")
            # Ejected: ten good calls in a row that avoid server3, after the pause.
            ejected = bg.wait(lambda calls: _last_all(
                calls, 10, lambda i: i.ok and i.instance != "server3"), mark)
            hung = bg.since(mark)
            step.count(hung)
            self.judge(step, ejected and step.failures <= 2,
                       f"{step.failures} calls timed out ({DEADLINE:g} s deadline), then "
                       "server3 was ejected (at most 2 allowed)" if ejected else
                       f"server3 not ejected after {step.failures} timeouts")

            step = self.say("9. It recovers", "a health probe lets it back in as soon as it "
                            "answers again.", beyond=True)
            self.meanwhile("devcluster resume server3")
            cluster.resume("server3")
            mark = bg.mark()
            back = bg.wait(lambda calls: any(i.ok and i.instance == "server3" for i in calls),
                           mark)
            step.count(bg.since(mark))
        self.judge(step, back and step.failures == 0,
                   "server3 serves again" if back else "server3 did not come back in time")
        self._xds_step(cluster)

    def _xds_step(self, cluster: Cluster) -> None:
        """The step the article did not have: no resolver, no balancer written by hand."""
        step = self.say(
            "10. Any client, no code: xDS",
            "the article's Go client needed a hand-written resolver and balancer; gRPC's "
            "own xDS client (Go, Java, C++, Node, Python) takes the same weights, drains and "
            "failover from the control plane devcluster runs.",
            'eval "$(devcluster xds)"', "devcluster weight server1 5",
            "devcluster client --xds", beyond=True)
        cluster.start("server2")  # killed in step 7
        cluster.weight("server1", 5)
        xds = {"state_dir": cluster.state_dir, "service": "server", "xds": True}
        with self.background(**xds) as bg:
            # The weight may reach the client after its first picks: judge calls after it.
            bg.wait(lambda calls: len(calls) >= 5)
            shares = bg.calls(70, bg.mark())
            share = sum(1 for i in shares if i.ok and i.instance == "server1") / max(1, len(shares))
            self.meanwhile("devcluster stop server2")
            cluster.stop("server2")
            mark = bg.mark()
            after = bg.calls(14, mark)
            step.count(bg.since(0))
        drained = len(after) == 14 and not any(i.instance == "server2" for i in after)
        # grpc's weighted picks are random: 5/7 = 71 % give or take a few calls in 70.
        self.judge(step, len(shares) == 70 and 0.55 < share < 0.87 and drained
                   and step.failures == 0,
                   f"server1 got {share:.0%} of 70 calls (5/7 = 71%, grpc picks at random); "
                   f"server2 stopped with no failed call and got none after; no devcluster "
                   "code in the client")

    def _table(self, elapsed: float) -> None:
        columns = ("step", *NAMES, "failed", "ok")
        rows = ([(r.title, ""), *((str(r.calls[n]), "") for n in NAMES), (str(r.failures), ""),
                 check_mark(r.ok)] for r in self.results)
        self.console.print(table(columns, rows, self.console.colour, right=columns[1:],
                                 title=f"devcluster demo --lesson ({elapsed:.1f} s)"))


def run_lesson(console: Terminal, speed: float = 1.0) -> bool:
    """Entry point of ``devcluster demo --lesson``."""
    return Lesson(console, speed).run()
