"""The supervisor's rules, sans-IO: restart and backoff, ``depends_on`` waves, stop order.

Nothing here spawns, signals, sleeps or reads a clock: every function takes plain
values (states, exit codes, times from the caller's clock) and returns what to do. The
asyncio driver (:mod:`devcluster.supervisor.lifecycle`, :mod:`devcluster.supervisor.runtime`)
does only the I/O the answers name, so each rule has one copy, and the tests replay
event histories with a fake clock in milliseconds (tests/supervisor/test_core.py).

:class:`Machine` is one instance's restart side as a state machine, for drivers and
tests that feed it events (start asked, spawned, served, exited, timer fired)::

    machine = Machine(Policy.ON_FAILURE)
    machine.start()                       # -> (Spawn(),)
    machine.begin_run(); machine.spawned()  # -> (SetState(STARTING),)
    machine.served(now)                   # -> (SetState(SERVING),)
    commands(machine.exited(1, None, now))  # -> (SetState(BACKOFF), ArmTimer(0.5))
    machine.timer_fired()                 # -> (Spawn(),)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from devcluster.config.policy import Policy
from devcluster.registry.record import State

#: Restart backoff: 0.5 s doubling, capped; reset once an instance served this long.
BACKOFF_FIRST: Final = 0.5
BACKOFF_CAP: Final = 30.0
BACKOFF_RESET_AFTER: Final = 10.0
#: Consecutive failed runs after which the restart policy gives up (state ``failed``).
MAX_FAILURES: Final = 5
#: States in which ``up -d`` and ``start --wait`` stop waiting.
SETTLED: Final = frozenset({State.SERVING, State.FAILED, State.EXITED, State.KILLED,
                            State.STOPPED})


@dataclass(frozen=True)
class RestartRule:
    """How the restart policy backs off and when it gives up."""

    first: float = BACKOFF_FIRST
    cap: float = BACKOFF_CAP
    reset_after: float = BACKOFF_RESET_AFTER
    """Serving this long (seconds) before an exit forgets the failures before it."""
    max_failures: int = MAX_FAILURES

    def delay(self, failures: int) -> float:
        """The wait before the restart that follows failure number ``failures`` (1...).

        With the defaults the restart policy gives up at the fifth failure, so the
        waits are 0.5, 1, 2 and 4 s: the 30 s cap is never reached.
        """
        return float(min(self.first * 2 ** (failures - 1), self.cap))

    def waits(self) -> tuple[float, ...]:
        """Every wait of an uninterrupted crash loop, in order, before ``failed``."""
        return tuple(self.delay(n) for n in range(1, self.max_failures))


@dataclass(frozen=True)
class Verdict:
    """What follows an exit: the new state, the restart delay (None: stay down), the
    failure count to keep, and the one line the log gets (None: nothing to add)."""

    state: State
    delay: float | None
    failures: int
    reason: str


def after_exit(policy: Policy, returncode: int, intent: State | None, failures: int,
               served_for: float | None, rule: RestartRule = RestartRule()) -> Verdict:
    """The restart policy: after an exit with ``returncode`` (negative: a signal).

    ``intent``: the state we ended the process for (stopped, killed), None when it
    exited by itself. ``served_for``: seconds it had been serving (None: never served).
    """
    if intent is not None:
        return Verdict(intent, None, failures, "asked")
    if served_for is not None and served_for >= rule.reset_after:
        failures = 0  # a long healthy run: what failed before it is forgotten
    if policy is Policy.NO or (policy is Policy.ON_FAILURE and returncode == 0):
        return Verdict(State.EXITED, None, failures, "policy")
    failures += 1
    if failures >= rule.max_failures:
        return Verdict(State.FAILED, None, failures, "gave up")
    return Verdict(State.BACKOFF, rule.delay(failures), failures, "backoff")


def settled(state: State, held: bool, ready_timed_out: bool) -> bool:
    """Serving, down for good, or not ready within its ready timeout (never while it
    waits for its dependencies)."""
    if held:
        return False
    return state in SETTLED or (state is State.STARTING and ready_timed_out)


# -- the cluster: depends_on waves and the stop order ---------------------------------

@dataclass(frozen=True)
class StartPlan:
    """Which instances start at once, and which types wait for which dependencies."""

    now: tuple[str, ...]
    waiting: Mapping[str, tuple[str, ...]]
    """Process type -> the types every instance of which must serve first."""


def start_plan(instances: Iterable[tuple[str, str]],
               depends_on: Mapping[str, Sequence[str]]) -> StartPlan:
    """``instances``: (name, process type) pairs in start order."""
    now: list[str] = []
    waiting: dict[str, tuple[str, ...]] = {}
    for name, ptype in instances:
        deps = tuple(depends_on.get(ptype, ()))
        if deps:
            waiting[ptype] = deps
        else:
            now.append(name)
    return StartPlan(tuple(now), waiting)


@dataclass(frozen=True)
class DependencyOutcome:
    """What a waiting type does once its dependencies settled: ``start``; or not,
    with ``why`` (shown as its last exit); or just stop waiting (shutting down)."""

    start: bool
    why: str | None = None


def dependency_outcome(dependencies: Mapping[str, State], stopping: bool) -> DependencyOutcome:
    """``dependencies``: every instance of the dependencies by name, once each settled
    (or shutdown began)."""
    if stopping:
        return DependencyOutcome(False)
    bad = [(name, state) for name, state in dependencies.items() if state is not State.SERVING]
    if bad:
        name, state = bad[0]
        return DependencyOutcome(False, f"dependency {name} did not serve ({state.value})")
    return DependencyOutcome(True)


def stop_order(instances: Sequence[tuple[str, str]],
               waves: Sequence[Sequence[str]]) -> list[list[str]]:
    """Names in groups to stop one after the other: the start waves reversed (without
    ``depends_on``, one group: all at once). Types in no wave go first."""
    if len(waves) <= 1:
        return [[name for name, _ in instances]]
    placed = {t for wave in waves for t in wave}
    groups = [[name for name, ptype in instances if ptype not in placed]]
    for wave in reversed(waves):
        wanted = set(wave)
        groups.append([name for name, ptype in instances if ptype in wanted])
    return [g for g in groups if g]


# -- reload: how many instances of each type ---------------------------------------------

def reload_counts(files_before: Mapping[str, int], files_after: Mapping[str, int],
                  running: Mapping[str, int]) -> dict[str, int]:
    """How many instances of each type a reload wants, for the types the files name now.

    ``files_*``: the count the files (and the flags of ``up``) give each type, before and
    after the edit; ``running``: how many run now (a runtime ``scale`` changed that). A
    type keeps its running count unless the files changed its count or it is new: an
    edit elsewhere must not undo ``scale greeter=5``.

    >>> reload_counts({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 1}, {"a": 4, "b": 2})
    {'a': 4, 'b': 3, 'c': 1}
    """
    return {t: n if t not in files_before or files_before[t] != n else running.get(t, n)
            for t, n in files_after.items()}


# -- one instance as a state machine --------------------------------------------------

@dataclass(frozen=True)
class SetState:
    """Change the instance's state (and write its record)."""

    state: State


@dataclass(frozen=True)
class ArmTimer:
    """Call :meth:`Machine.timer_fired` after ``seconds`` (the restart backoff)."""

    seconds: float


@dataclass(frozen=True)
class Spawn:
    """Start a process for the instance."""


Command = SetState | ArmTimer | Spawn


def commands(verdict: Verdict) -> tuple[Command, ...]:
    """What the driver does after an exit judged by ``verdict``."""
    if verdict.delay is None:
        return (SetState(verdict.state),)
    return SetState(verdict.state), ArmTimer(verdict.delay)


class Machine:
    """One instance's restart bookkeeping over events (the instance's own, driven by
    :class:`devcluster.supervisor.instance.Instance`; replayed by the tests).

    It keeps only what the rules need: the failure count, when the current run began
    serving, how many runs were restarts. The driver owns the process, the timer and
    the registry, and cancels a pending timer itself when asked to stop.
    """

    def __init__(self, policy: Policy, rule: RestartRule = RestartRule()) -> None:
        self.policy = policy
        self.rule = rule
        self.failures = 0
        self.serving_since: float | None = None
        self.restarts = 0
        self._ran = False

    def start(self, by_command: bool = False) -> tuple[Command, ...]:
        """Start asked: by the cluster, or by ``devcluster start`` (a fresh count)."""
        if by_command:
            self.failures = 0
        return (Spawn(),)

    def begin_run(self) -> bool:
        """A run begins (before its spawn); True when it is a restart."""
        again, self._ran = self._ran, True
        if again:
            self.restarts += 1
        return again

    def spawned(self) -> tuple[Command, ...]:
        """Its process exists: starting (it serves once its probe says so)."""
        self.serving_since = None
        return (SetState(State.STARTING),)

    def served(self, now: float) -> tuple[Command, ...]:
        """Its readiness probe passed at ``now``."""
        self.serving_since = now
        return (SetState(State.SERVING),)

    def exited(self, returncode: int, intent: State | None, now: float) -> Verdict:
        """Its process exited at ``now``; :func:`commands` of the verdict say what next."""
        served = None if self.serving_since is None else now - self.serving_since
        verdict = after_exit(self.policy, returncode, intent, self.failures, served, self.rule)
        self.failures = verdict.failures
        return verdict

    def timer_fired(self) -> tuple[Command, ...]:
        """The backoff is over: run again."""
        return (Spawn(),)
