"""One supervised instance: its process, its state, its restart policy.

Exactly one object changes an instance's state: its :class:`Instance`. Every change
is written to the registry (except ``paused``: a frozen server stays advertised as
serving, as a real hung server would) and wakes whoever waits on the instance.

This module holds its state and verbs (start, stop, kill, pause...). Its collaborators
never change its state themselves: the restart rules are a
:class:`~devcluster.supervisor.core.Machine`, running its process is a
:class:`~devcluster.supervisor.lifecycle.Life` (which asks the instance to change state), and
deciding that it serves is :func:`devcluster.supervisor.readiness.wait_ready`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import time
from collections.abc import Callable, Sequence

import psutil

from devcluster.config.policy import Policy
from devcluster.config.procfile import InstanceSpec
from devcluster.config.project import TypeSettings
from devcluster.events import EventKind
from devcluster.registry import Record, State
from devcluster.schema import InstanceInfo, uptime
from devcluster.supervisor import core, process, readiness
from devcluster.supervisor.core import (  # noqa: F401  the restart constants, where they were
    BACKOFF_CAP,
    BACKOFF_FIRST,
    BACKOFF_RESET_AFTER,
    MAX_FAILURES,
    SETTLED,
)
from devcluster.supervisor.drain import DRAIN_BOUND, Drained
from devcluster.supervisor.lifecycle import RECENT_LINES as RECENT_LINES
from devcluster.supervisor.lifecycle import Life
from devcluster.supervisor.recorder import Written, landed_at
from devcluster.supervisor.shared import Runtime as Runtime


class Instance:
    """A supervised instance. Build it with a spec; drive it with start/stop/kill/pause."""

    def __init__(self, spec: InstanceSpec, policy: Policy, rt: Runtime,
                 conf: TypeSettings | None = None) -> None:
        self.spec = spec
        #: The restart rules' bookkeeping (sans-IO): failures, restarts, serving since.
        self.machine = core.Machine(policy)
        self.rt = rt
        #: Its type's settings from devcluster.toml and the flags; None: the cluster's.
        self.conf = conf
        #: Waiting for its dependencies to serve (depends_on): not started, not settled.
        self.held = False
        self.state = State.STOPPED
        self.port = spec.port
        self.address = f"{rt.advertise_host}:{spec.port}" if spec.port else ""
        self.ready_timed_out = False
        self._before_pause = State.SERVING
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        #: How the current process was found ready ("health check", "TCP connect"...).
        self.ready_how: str | None = None
        #: False while the registry record of this name is another process's: a
        #: replacement before it serves, an old instance once replaced (see reload).
        self.registered = True
        #: Another process of ours listens on this port too (SO_REUSEPORT): readiness
        #: then asks the kernel which ports this process holds, not the port.
        self.shared_port = False
        #: Who asked for the verb in progress (the timeline names them); None: nobody.
        self.asker: str | None = None
        self._told: State | None = None  # the last state the timeline recorded
        #: False once continuous health checks missed ``health_failures`` in a row
        #: (:mod:`devcluster.supervisor.checkup`): advertised ``unhealthy``; a new run
        #: or one passed check makes it True again.
        self.healthy = True
        #: Its process, run after run (a collaborator: it asks us to change state).
        self.life = Life(self, spec, conf, rt, self.machine)

    def __repr__(self) -> str:
        return f"<Instance {self.name} {self.state.value} pid={self.pid} {self.address or '-'}>"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.life.pid

    @property
    def started_at(self) -> float | None:
        return self.life.started_at

    @property
    def last_exit(self) -> str:
        """How its last process ended ("exit 1", "signal SIGKILL"...), or why it did not run."""
        return self.life.last_exit

    @property
    def recent(self) -> collections.deque[str]:
        """The last lines of its process's own output."""
        return self.life.recent

    @property
    def policy(self) -> Policy:
        """What to do when it exits by itself (a reload swaps it for a while)."""
        return self.machine.policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self.machine.policy = policy

    @property
    def restarts(self) -> int:
        return self.machine.restarts

    @restarts.setter
    def restarts(self, count: int) -> None:
        self.machine.restarts = count

    @property
    def failures(self) -> int:
        """Failed runs in a row (the restart policy gives up at MAX_FAILURES)."""
        return self.machine.failures

    @property
    def serving_since(self) -> float | None:
        return self.machine.serving_since

    @property
    def grace(self) -> float:
        """Seconds between SIGINT and SIGKILL when this instance stops."""
        return self.rt.grace if self.conf is None else self.conf.grace

    @property
    def ready_timeout(self) -> float:
        return self.rt.ready_timeout if self.conf is None else self.conf.ready_timeout

    @property
    def running(self) -> bool:
        """A process of this instance exists (it may be starting, serving, paused...)."""
        return self.life.proc is not None and self.life.proc.returncode is None

    def record(self) -> Record:
        """This instance as a registry record (weight/enabled are the registry's own)."""
        conf = self.conf or TypeSettings()
        return Record(self.name, self.spec.service, self.address, state=self._advertised(),
                      pid=self.pid, restarts=self.restarts, started_at=self.started_at,
                      weight=conf.weight, metadata=dict(conf.metadata))

    def _advertised(self) -> State:
        state = self._before_pause if self.state is State.PAUSED else self.state
        return State.UNHEALTHY if state is State.SERVING and not self.healthy else state

    @property
    def advertised(self) -> State:
        """The state the registry shows: a paused instance keeps its state before the
        pause (clients must find the hang), a serving one that fails its health checks
        is ``unhealthy``."""
        return self._advertised()

    @property
    def shown(self) -> State:
        """The state ``ps`` shows: ``unhealthy`` for a serving instance that fails its
        health checks; ``paused`` stays paused (someone asked for it)."""
        return self._advertised() if self.state is State.SERVING else self.state

    def set_health(self, healthy: bool, why: str) -> None:
        """A health check verdict that changes this run's health: the registry (clients
        route no calls to an unhealthy instance), the timeline and the log say so."""
        if healthy == self.healthy:
            return
        before = self._advertised()
        self.healthy = healthy
        after = self._advertised()
        self.rt.sink.system(f"{self.name} {'healthy again' if healthy else 'unhealthy'} ({why})")
        if after is not before:
            self.rt.event(EventKind.STATE, self.name, old=before.value, new=after.value,
                          who="health check")
            if self.registered:
                self.rt.records.update(self.name, state=after.value)
        self._changed.set()
        self._changed = asyncio.Event()

    # -- state -------------------------------------------------------------------------

    def _set(self, state: State) -> Written | None:
        """Change state, queue the registry write (returned), wake whoever waits."""
        self.state = state
        if state is not self._told:  # paused too: the timeline is not the registry
            old, self._told = self._told, state
            self.rt.event(EventKind.STATE, self.name, old=old and old.value, new=state.value,
                          who=self.asker)
        written = None
        if state is not State.PAUSED and self.registered:
            written = self.rt.records.update(
                self.name, state=self._advertised().value, pid=self.pid, address=self.address,
                restarts=self.restarts, started_at=self.started_at)
        self._changed.set()
        self._changed = asyncio.Event()
        return written

    def set_state(self, state: State) -> None:
        """Change state (for the life cycle: :meth:`_set` without its future)."""
        self._set(state)

    def apply(self, commands: Sequence[core.Command]) -> float | None:
        """Carry out the core's commands; the backoff to sleep, if one was armed (the
        life cycle's loop sleeps it: a stop cancels that task)."""
        delay = None
        for command in commands:
            if isinstance(command, core.SetState):
                self._set(command.state)
            elif isinstance(command, core.ArmTimer):
                delay = command.seconds
        return delay

    def new_run(self) -> None:
        """A run begins: it is not ready yet, in any way."""
        self.ready_timed_out = False
        self.ready_how = None
        self.healthy = True

    async def wait_until(self, predicate: Callable[[Instance], bool], timeout: float) -> bool:
        """Wait (on state changes, not a timer) until ``predicate(self)`` or ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    @property
    def settled(self) -> bool:
        """Serving, or down for good, or not ready within the ready timeout."""
        return core.settled(self.state, self.held, self.ready_timed_out)

    def publish(self) -> Written | None:
        """Take over the registry record of this name (a replacement that serves)."""
        self.registered = True
        return self._set(self.state)

    # -- verbs -------------------------------------------------------------------------

    def start(self, by_command: bool = False) -> bool:
        """Start the instance unless it runs; False when it already ran (no change)."""
        if self.running or (self._task is not None and not self._task.done()
                            and self.state is not State.BACKOFF):
            return False
        if self._task is not None and not self._task.done():
            self._task.cancel()  # a pending backoff: the user's start wins
        self.held = False
        self.machine.start(by_command)
        # Not settled from here on, even before the task first runs.
        self.state, self.ready_timed_out = State.STARTING, False
        self._task = self.rt.spawn(self.life.run())
        return True

    def not_started(self, why: str) -> None:
        """Give up starting it (a dependency did not serve); ``why`` is shown as its exit."""
        self.held = False
        self.life.last_exit = f"not started: {why}"
        self.rt.sink.system(f"{self.name} {self.last_exit}")
        self._set(State.STOPPED)

    async def stop(self, grace: float | None = None, intent: State = State.STOPPED,
                   drain: bool = False, announce: bool = True) -> bool:
        """Graceful stop: draining, SIGINT, SIGKILL after ``grace``. False if not running.

        With ``drain``, SIGINT waits until the clients watching the registry have applied
        its ``draining`` (or, with ``announce=False``, the caller's last registry write:
        a reload's switch of the record), so they stop sending first (a stopping gRPC
        server refuses new calls): :meth:`_drain`. A whole-cluster shutdown does not
        drain: there is nowhere to go.
        """
        if not self.running:
            return self._cancel_backoff(intent)
        grace = self.grace if grace is None else grace
        self.life.intent = intent
        paused = self.state is State.PAUSED
        written = None
        if announce:
            written = self._set(State.DRAINING)
        else:  # the supervisor wrote the registry itself (shutdown, reload)
            self.state = State.DRAINING
        if drain and not paused:
            await self._drain(written)
        if not self.running:
            return True
        assert self.pid is not None
        process.signal_group(self.pid, signal.SIGINT)
        if paused:  # wake it so it can handle the SIGINT
            process.signal_group(self.pid, signal.SIGCONT)
        if not await self._wait_task(grace):
            self.rt.sink.system(f"{self.name} did not stop within {grace:g}s; sending SIGKILL")
            process.signal_group(self.pid, signal.SIGKILL)
            await self._wait_task(None)
        return True

    async def _drain(self, written: Written | None) -> Drained:
        """Wait for the registry write ``written`` to land (bounded: a stuck registry never
        blocks a stop), then until every watcher has applied it (:mod:`.drain`): no
        watcher, no wait; watchers that say nothing, at most :data:`DRAIN_BOUND`."""
        if written is None:  # the caller's write landed already: ours is the last known
            revision = self.rt.records.revision
        else:
            revision = await landed_at(written, self.rt.grace)
        if self.rt.watchers is None:  # nobody to ask: the fixed delay of before
            await asyncio.sleep(DRAIN_BOUND)
            return Drained(revision, 0, 0, DRAIN_BOUND)
        drained = await self.rt.watchers.until_applied(revision)
        if drained.behind:  # say why this stop took the bound: someone did not answer
            self.rt.sink.system(
                f"{self.name}: {drained.behind} of {drained.watchers} registry watcher(s) had "
                f"not applied revision {revision} after {1000 * drained.waited_s:.0f} ms; "
                "stopping it anyway")
        return drained

    async def kill(self, sig: signal.Signals = signal.SIGKILL) -> bool:
        """Send ``sig`` to the process group: a simulated crash, never auto-restarted."""
        if not self.running:
            return self._cancel_backoff(State.KILLED)
        assert self.pid is not None
        self.life.intent = State.KILLED
        process.signal_group(self.pid, sig)
        if self.state is State.PAUSED and sig is not signal.SIGKILL:
            process.signal_group(self.pid, signal.SIGCONT)
        if not await self._wait_task(self.rt.grace):
            self.life.intent = None  # it survived the signal: it is still what it was
        return True

    def pause(self) -> bool:
        """SIGSTOP the group; the registry keeps advertising it (a hung server)."""
        if not self.running or self.state is State.PAUSED or self.pid is None:
            return False
        self._before_pause = self.state
        process.signal_group(self.pid, signal.SIGSTOP)
        self._set(State.PAUSED)
        return True

    def resume(self) -> bool:
        """SIGCONT the group and return to the state it had."""
        if self.state is not State.PAUSED or self.pid is None:
            return False
        process.signal_group(self.pid, signal.SIGCONT)
        self._set(self._before_pause)
        ready = self.life.ready_task
        if self._before_pause is State.STARTING and self.life.proc is not None and (
                ready is None or ready.done()):
            # Frozen while starting, its readiness clock ran out: give it a fresh one.
            self.ready_timed_out = False
            if self.life.run_group is not None:
                self.life.ready_task = self.life.run_group.create_task(self.become_ready(self.life.proc))
        return True

    async def become_ready(self, proc: process.Child) -> None:
        """Wait until this run serves (:func:`readiness.wait_ready`), then say so: serving,
        or not ready within its ready timeout (it keeps running: settled, not serving)."""
        began = time.monotonic()
        ready = self.conf.ready if self.conf is not None else None
        outcome = await readiness.wait_ready(readiness.ReadyCheck(
            ready, self.ready_timeout, self.port,
            "PORT" in self.spec.command and not self.shared_port, self.address, self.life.env,
            self.rt.cwd, self.life.news, self.life.log_probe), proc)
        if outcome.port is not None:
            self.port, self.address = outcome.port, f"{self.rt.advertise_host}:{outcome.port}"
        if proc.returncode is not None or self.state is not State.STARTING:
            return  # it exited, or was paused or stopped meanwhile: not ours to judge
        if outcome.ok:
            self.ready_how = outcome.reason
            self.apply(self.machine.served(time.monotonic()))
            self.rt.sink.system(f"{self.name} serving on {self.address or 'no port'} "
                                f"({outcome.reason}, {1000 * (time.monotonic() - began):.0f} ms)")
            return
        self.ready_timed_out = True
        why = outcome.reason.partition(": ")[2] if outcome.reason.startswith("not ready after") \
            else outcome.reason
        self.rt.sink.system(f"{self.name} not ready after {self.ready_timeout:g}s ({why})")
        self._changed.set()

    def force_kill(self) -> None:
        """SIGKILL the whole group now (second Ctrl-C, supervisor teardown)."""
        if self.running and self.pid is not None:
            self.life.intent = self.life.intent or State.STOPPED
            process.signal_group(self.pid, signal.SIGKILL)

    def _cancel_backoff(self, intent: State) -> bool:
        if self.state is State.BACKOFF and self._task is not None:
            self._task.cancel()
            self._set(intent)
            return True
        return False

    async def _wait_task(self, timeout: float | None) -> bool:
        task = self._task
        if task is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            return False
        return True

    def stats(self) -> tuple[float | None, int | None, int | None]:
        """(CPU % since the last call, RSS, USS) of the leader; None when not measured."""
        if self.life.ps is None or not self.running:
            return None, None, None
        try:
            with self.life.ps.oneshot():
                cpu = self.life.ps.cpu_percent(None)
                mem = self.life.ps.memory_full_info()
            return round(cpu, 1), mem.rss, getattr(mem, "uss", None)
        except psutil.Error:
            return None, None, None

    def info(self, record: Record | None, now: float | None = None) -> InstanceInfo:
        """This instance in the one schema; weight/enabled come from its ``record``."""
        cpu, rss, uss = self.stats()
        running = self.running
        return InstanceInfo(
            name=self.name, service=self.spec.service, process_type=self.spec.process_type,
            state=self.shown.value, pid=self.pid,
            address=self.address or None, port=self.port or None,
            weight=record.weight if record else None,
            enabled=record.enabled if record else None, restarts=self.restarts,
            uptime_s=uptime(self.state.value, self.started_at, now) if running else None,
            cpu_percent=cpu, rss_bytes=rss, uss_bytes=uss, last_exit=self.last_exit or None,
            started_at=self.started_at,
            metadata=dict(record.metadata) if record else None,
            ready=self.ready_how if running and self.state is not State.STARTING else None,
            fault=record.fault.describe() if record and record.fault else None)
