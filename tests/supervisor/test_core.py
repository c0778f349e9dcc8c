"""The supervisor's rules, sans-IO: event histories replayed with a fake clock.

Each table row is a history of one instance (what happened, when) and what the rules
must answer. Nothing here spawns or sleeps: the whole module runs in milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from devcluster.config.policy import Policy
from devcluster.registry.record import State
from devcluster.supervisor import core
from devcluster.supervisor.core import (
    ArmTimer,
    Machine,
    RestartRule,
    SetState,
    Spawn,
    after_exit,
    commands,
    dependency_outcome,
    settled,
    start_plan,
    stop_order,
)


@dataclass
class FakeClock:
    now: float = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class Driver:
    """A stand-in for the asyncio driver: carries out commands on a fake clock and
    keeps the history of states and waits (as the real one would write and sleep)."""

    def __init__(self, policy: Policy, rule: RestartRule | None = None) -> None:
        self.clock = FakeClock()
        self.machine = Machine(policy, rule or RestartRule())
        self.states: list[State] = []
        self.waits: list[float] = []
        self.spawns = 0

    def run(self, cmds: Sequence[core.Command]) -> None:
        for cmd in cmds:
            if isinstance(cmd, SetState):
                self.states.append(cmd.state)
            elif isinstance(cmd, ArmTimer):
                self.waits.append(cmd.seconds)
                self.clock.advance(cmd.seconds)  # the timer fires: the driver's sleep
                self.run(self.machine.timer_fired())
            elif isinstance(cmd, Spawn):
                self.spawns += 1
                self.machine.begin_run()
                self.run(self.machine.spawned())

    def serve_for(self, seconds: float) -> None:
        self.run(self.machine.served(self.clock.now))
        self.clock.advance(seconds)

    def exit(self, code: int, intent: State | None = None, after: float = 0.05) -> None:
        self.clock.advance(after)
        self.run(commands(self.machine.exited(code, intent, self.clock.now)))

    @property
    def state(self) -> State:
        return self.states[-1]


def crash_loop(policy: Policy, code: int, rule: RestartRule | None = None) -> Driver:
    """Start, then every run exits with ``code`` at once, until the rules stop it."""
    d = Driver(policy, rule)
    d.run(d.machine.start())
    for _ in range(100):
        if d.state is not State.STARTING:
            break
        d.exit(code)
    return d


def test_a_crash_loop_backs_off_doubling_then_gives_up_at_the_fifth_failure() -> None:
    began = time.perf_counter()
    d = crash_loop(Policy.ON_FAILURE, 1)
    assert d.waits == [0.5, 1.0, 2.0, 4.0]  # the 30 s cap is never reached
    assert d.state is State.FAILED
    assert d.spawns == 5 and d.machine.restarts == 4 and d.machine.failures == 5
    assert d.states.count(State.BACKOFF) == 4
    assert time.perf_counter() - began < 0.1


def test_the_default_rule_waits_seven_and_a_half_seconds_in_all() -> None:
    assert RestartRule().waits() == (0.5, 1.0, 2.0, 4.0)
    assert sum(RestartRule().waits()) == 7.5


@pytest.mark.parametrize(("failures", "delay"), [(1, 0.5), (2, 1.0), (4, 4.0), (6, 16.0),
                                                 (7, 30.0), (20, 30.0)])
def test_the_delay_doubles_up_to_its_cap(failures: int, delay: float) -> None:
    assert RestartRule().delay(failures) == delay


def test_a_higher_limit_reaches_the_cap() -> None:
    d = crash_loop(Policy.ALWAYS, 0, RestartRule(max_failures=9))
    assert d.waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert d.state is State.FAILED


@pytest.mark.parametrize(("policy", "code", "final", "spawns"), [
    (Policy.NO, 1, State.EXITED, 1),
    (Policy.NO, 0, State.EXITED, 1),
    (Policy.ON_FAILURE, 0, State.EXITED, 1),     # a clean exit is not a failure
    (Policy.ON_FAILURE, -9, State.FAILED, 5),    # a death by signal is
    (Policy.ON_FAILURE, 3, State.FAILED, 5),
    (Policy.ALWAYS, 0, State.FAILED, 5),         # always: clean exits count too
])
def test_the_policy_decides_what_an_exit_means(policy: Policy, code: int, final: State,
                                               spawns: int) -> None:
    d = crash_loop(policy, code)
    assert (d.state, d.spawns) == (final, spawns)


def test_serving_long_enough_forgets_the_failures_before() -> None:
    d = Driver(Policy.ON_FAILURE)
    d.run(d.machine.start())
    for _ in range(4):
        d.exit(1)
    assert d.machine.failures == 4 and d.state is State.STARTING
    d.serve_for(10.0)
    d.exit(1, after=0.0)
    assert d.machine.failures == 1 and d.waits[-1] == 0.5  # a fresh count


def test_serving_briefly_does_not_reset_the_count() -> None:
    d = Driver(Policy.ON_FAILURE)
    d.run(d.machine.start())
    for _ in range(4):
        d.serve_for(9.9)
        d.exit(1, after=0.0)
    d.serve_for(9.9)
    d.exit(1, after=0.0)
    assert d.state is State.FAILED


@pytest.mark.parametrize("intent", [State.STOPPED, State.KILLED])
def test_an_exit_we_asked_for_is_never_restarted(intent: State) -> None:
    d = Driver(Policy.ALWAYS)
    d.run(d.machine.start())
    d.exit(-9, intent)
    assert d.state is intent and d.spawns == 1 and d.machine.failures == 0


def test_start_by_command_gives_a_failed_instance_a_fresh_count() -> None:
    d = crash_loop(Policy.ON_FAILURE, 1)
    assert d.state is State.FAILED
    d.run(d.machine.start(by_command=True))
    assert d.machine.failures == 0 and d.state is State.STARTING
    d.exit(1)
    assert d.waits[-1] == 0.5 and d.state is State.STARTING


def test_after_exit_as_a_table() -> None:
    table = [
        # policy, code, intent, failures, served_for -> state, delay, failures
        (Policy.ON_FAILURE, 1, None, 0, None, State.BACKOFF, 0.5, 1),
        (Policy.ON_FAILURE, 1, None, 3, 2.0, State.BACKOFF, 4.0, 4),
        (Policy.ON_FAILURE, 1, None, 4, 2.0, State.FAILED, None, 5),
        (Policy.ON_FAILURE, 1, None, 4, 10.0, State.BACKOFF, 0.5, 1),
        (Policy.ON_FAILURE, 0, None, 4, 10.0, State.EXITED, None, 0),
        (Policy.ALWAYS, 0, State.STOPPED, 2, None, State.STOPPED, None, 2),
    ]
    for policy, code, intent, failures, served, state, delay, kept in table:
        v = after_exit(policy, code, intent, failures, served)
        assert (v.state, v.delay, v.failures) == (state, delay, kept), (policy, code, intent)


@pytest.mark.parametrize(("state", "held", "timed_out", "expected"), [
    (State.SERVING, False, False, True),
    (State.FAILED, False, False, True),
    (State.STARTING, False, False, False),
    (State.STARTING, False, True, True),     # not ready in time: settled, not serving
    (State.BACKOFF, False, False, False),    # the policy may still bring it up
    (State.STOPPED, True, False, False),     # waiting for its dependencies
])
def test_settled(state: State, held: bool, timed_out: bool, expected: bool) -> None:
    assert settled(state, held, timed_out) is expected


# -- depends_on waves and the stop order ----------------------------------------------

INSTANCES = [("db.1", "db"), ("api.1", "api"), ("api.2", "api"), ("web.1", "web"),
             ("tool.1", "tool")]


def test_types_without_dependencies_start_at_once() -> None:
    plan = start_plan(INSTANCES, {"api": ("db",), "web": ("api",)})
    assert plan.now == ("db.1", "tool.1")
    assert dict(plan.waiting) == {"api": ("db",), "web": ("api",)}


def test_without_depends_on_everything_starts_at_once() -> None:
    plan = start_plan(INSTANCES, {})
    assert plan.now == tuple(n for n, _ in INSTANCES) and not plan.waiting


@pytest.mark.parametrize(("states", "stopping", "start", "why"), [
    ({"db.1": State.SERVING}, False, True, None),
    ({"db.1": State.SERVING, "db.2": State.FAILED}, False, False,
     "dependency db.2 did not serve (failed)"),
    ({"db.1": State.STARTING}, False, False, "dependency db.1 did not serve (starting)"),
    ({"db.1": State.SERVING}, True, False, None),  # shutting down: just stop waiting
])
def test_a_waiting_type_starts_only_when_every_dependency_serves(
        states: dict[str, State], stopping: bool, start: bool, why: str | None) -> None:
    outcome = dependency_outcome(states, stopping)
    assert (outcome.start, outcome.why) == (start, why)


def test_the_stop_order_is_the_start_waves_reversed() -> None:
    waves = [("db",), ("api",), ("web",)]
    assert stop_order(INSTANCES, waves) == [["tool.1"], ["web.1"], ["api.1", "api.2"], ["db.1"]]


def test_one_wave_or_none_stops_everything_at_once() -> None:
    everyone = [[n for n, _ in INSTANCES]]
    assert stop_order(INSTANCES, []) == everyone
    assert stop_order(INSTANCES, [("db", "api", "web", "tool")]) == everyone


def test_the_core_does_no_io() -> None:
    """The rules stay pure: no asyncio, os, psutil or subprocess in the core."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(core.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom)}
    assert not imported & {"asyncio", "os", "psutil", "subprocess", "time", "signal"}


# -- reload counts --------------------------------------------------------------------

@pytest.mark.parametrize(("before", "after", "running", "wanted"), [
    ({"g": 3}, {"g": 3}, {"g": 5}, {"g": 5}),        # a runtime scale up survives
    ({"g": 3}, {"g": 3}, {"g": 0}, {"g": 0}),        # ... and a scale to 0
    ({"g": 3}, {"g": 2}, {"g": 5}, {"g": 2}),        # the file changed the count: it wins
    ({"g": 1}, {"g": 1, "new": 2}, {"g": 1}, {"g": 1, "new": 2}),  # a new type: its count
    ({"g": 1, "old": 1}, {"g": 1}, {"g": 1, "old": 1}, {"g": 1}),  # a removed type: gone
])
def test_reload_counts_keep_a_runtime_scale_unless_the_files_changed_it(
        before: dict[str, int], after: dict[str, int], running: dict[str, int],
        wanted: dict[str, int]) -> None:
    assert core.reload_counts(before, after, running) == wanted
