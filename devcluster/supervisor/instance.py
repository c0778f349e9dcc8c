"""One supervised instance: its process, its state, its restart policy.

Exactly one object changes an instance's state: its :class:`Instance`. Every change
is written to the registry (except ``paused``: a frozen server stays advertised as
serving, as a real hung server would) and wakes whoever waits on the instance.

This module holds its state and verbs (start, stop, kill, pause...); running its
process is :mod:`devcluster.supervisor.lifecycle` and deciding that it serves is
:mod:`devcluster.supervisor.readiness`, both parts of the one class.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from devcluster import defaults
from devcluster.config.policy import Policy
from devcluster.config.procfile import InstanceSpec
from devcluster.config.project import TypeSettings
from devcluster.events import Event, EventKind, EventLog
from devcluster.registry import Record, State
from devcluster.schema import InstanceInfo, uptime
from devcluster.supervisor import core, probes, process, readiness
from devcluster.supervisor.core import (  # noqa: F401  the restart constants, where they were
    BACKOFF_CAP,
    BACKOFF_FIRST,
    BACKOFF_RESET_AFTER,
    MAX_FAILURES,
    SETTLED,
)
from devcluster.supervisor.lifecycle import Lifecycle
from devcluster.supervisor.logs import LogSink
from devcluster.supervisor.preload import Preloader
from devcluster.supervisor.recorder import Recorder, landed
from devcluster.supervisor.watchdog import Watchdog

#: Seconds between ``draining`` in the registry and SIGINT for a single-instance stop:
#: registry watchers see a change within ~10 ms (p99); a margin for loaded machines.
DRAIN_DELAY = 0.1
#: Lines of its own output an instance keeps, to say why it failed (a replacement
#: shares its log file with the instance it replaces).
RECENT_LINES = 20


def _unowned(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    coro.close()
    raise RuntimeError("instances start only while their supervisor runs")


@dataclass(frozen=True)
class Runtime:
    """What every instance of one supervisor shares."""

    records: Recorder
    """The registry writer: state changes are queued, never written on the loop."""
    sink: LogSink
    cwd: Path
    grace: float = defaults.GRACE
    ready_timeout: float = defaults.READY_TIMEOUT
    watchdog: Watchdog | None = None
    spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]] = _unowned
    """Creates a task owned by the supervisor's task group: no instance task is unowned."""
    ours: Callable[[], set[int]] = set
    """Pids of the processes the supervisor started itself (not orphans it adopted)."""
    events: EventLog | None = None
    """The cluster's timeline (``events.jsonl``); None records nothing."""
    preload: Preloader | None = None
    """The fork servers of preloaded types (``preload`` in devcluster.toml); None: every
    instance is exec'd."""

    def event(self, kind: EventKind, name: str | None, **fields: Any) -> None:
        """Append one event to the timeline (a one-line write: cheap on the loop)."""
        if self.events is not None:
            self.events.append(Event(time.time(), kind, name, **fields))


class Instance(Lifecycle):
    """A supervised instance. Build it with a spec; drive it with start/stop/kill/pause."""

    def __init__(self, spec: InstanceSpec, policy: Policy, rt: Runtime,
                 conf: TypeSettings | None = None) -> None:
        self.spec = spec
        #: The restart rules' bookkeeping (sans-IO): failures, restarts, serving since.
        self.machine = core.Machine(policy)
        self.rt = rt
        #: Its type's settings from devcluster.toml and the flags; None: the cluster's.
        self.conf = conf
        self._log_probe: probes.LogProbe | None = None  # fed every output line
        #: Set by each output line: wakes a readiness probe between polls.
        self._news = asyncio.Event()
        self._env: dict[str, str] = {}
        #: Waiting for its dependencies to serve (depends_on): not started, not settled.
        self.held = False
        self.state = State.STOPPED
        self.pid: int | None = None
        self.port = spec.port
        self.address = f"127.0.0.1:{spec.port}" if spec.port else ""
        self.started_at: float | None = None
        self.last_exit = ""
        self.ready_timed_out = False
        self._proc: process.Child | None = None
        self._ps: psutil.Process | None = None
        self._intent: State | None = None  # why we are ending the process: STOPPED/KILLED
        self._before_pause = State.SERVING
        self._task: asyncio.Task[None] | None = None
        self._ready_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        #: How the current process was found ready ("health check", "TCP connect"...).
        self.ready_how: str | None = None
        self._run_group: asyncio.TaskGroup | None = None  # owns this run's pump and probe
        #: False while the registry record of this name is another process's: a
        #: replacement before it serves, an old instance once replaced (see reload).
        self.registered = True
        #: Another process of ours listens on this port too (SO_REUSEPORT): readiness
        #: then asks the kernel which ports this process holds, not the port.
        self.shared_port = False
        #: The last lines of this process's own output.
        self.recent: collections.deque[str] = collections.deque(maxlen=RECENT_LINES)
        #: Who asked for the verb in progress (the timeline names them); None: nobody.
        self.asker: str | None = None
        self._told: State | None = None  # the last state the timeline recorded

    def __repr__(self) -> str:
        return f"<Instance {self.name} {self.state.value} pid={self.pid} {self.address or '-'}>"

    @property
    def name(self) -> str:
        return self.spec.name

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
        return self._proc is not None and self._proc.returncode is None

    def record(self) -> Record:
        """This instance as a registry record (weight/enabled are the registry's own)."""
        conf = self.conf or TypeSettings()
        return Record(self.name, self.spec.service, self.address, state=self._advertised(),
                      pid=self.pid, restarts=self.restarts, started_at=self.started_at,
                      weight=conf.weight, metadata=dict(conf.metadata))

    def _advertised(self) -> State:
        return self._before_pause if self.state is State.PAUSED else self.state

    # -- state -------------------------------------------------------------------------

    def _set(self, state: State) -> Future[None] | None:
        """Change state, queue the registry write (returned), wake whoever waits."""
        self.state = state
        if state is not self._told:  # paused too: the timeline is not the registry
            old, self._told = self._told, state
            self.rt.event(EventKind.STATE, self.name, old=old and old.value, new=state.value,
                          who=self.asker)
        written = None
        if state is not State.PAUSED and self.registered:
            written = self.rt.records.update(
                self.name, state=state.value, pid=self.pid, address=self.address,
                restarts=self.restarts, started_at=self.started_at)
        self._changed.set()
        self._changed = asyncio.Event()
        return written

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

    def publish(self) -> Future[None] | None:
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
        self._task = self.rt.spawn(self._lifecycle())
        return True

    def not_started(self, why: str) -> None:
        """Give up starting it (a dependency did not serve); ``why`` is shown as its exit."""
        self.held = False
        self.last_exit = f"not started: {why}"
        self.rt.sink.system(f"{self.name} {self.last_exit}")
        self._set(State.STOPPED)

    async def stop(self, grace: float | None = None, intent: State = State.STOPPED,
                   drain: float = 0.0, announce: bool = True) -> bool:
        """Graceful stop: draining, SIGINT, SIGKILL after ``grace``. False if not running.

        ``drain`` seconds pass between the registry saying ``draining`` and SIGINT, so
        clients watching the registry stop sending first (a stopping grpc server
        refuses new calls). A whole-cluster shutdown passes 0: there is nowhere to go.
        """
        if not self.running:
            return self._cancel_backoff(intent)
        grace = self.grace if grace is None else grace
        self._intent = intent
        paused = self.state is State.PAUSED
        if announce:
            written = self._set(State.DRAINING)
            if drain > 0 and not paused and written is not None:
                # Watchers must be able to see `draining` before SIGINT: wait for the
                # write to land (bounded: a stuck registry never blocks a stop).
                await landed(written, self.rt.grace)
        else:  # the supervisor wrote every instance's `draining` in one registry write
            self.state = State.DRAINING
        if drain > 0 and not paused:
            await asyncio.sleep(drain)
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

    async def kill(self, sig: signal.Signals = signal.SIGKILL) -> bool:
        """Send ``sig`` to the process group: a simulated crash, never auto-restarted."""
        if not self.running:
            return self._cancel_backoff(State.KILLED)
        assert self.pid is not None
        self._intent = State.KILLED
        process.signal_group(self.pid, sig)
        if self.state is State.PAUSED and sig is not signal.SIGKILL:
            process.signal_group(self.pid, signal.SIGCONT)
        if not await self._wait_task(self.rt.grace):
            self._intent = None  # it survived the signal: it is still what it was
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
        ready = self._ready_task
        if self._before_pause is State.STARTING and self._proc is not None and (
                ready is None or ready.done()):
            # Frozen while starting, its readiness clock ran out: give it a fresh one.
            self.ready_timed_out = False
            if self._run_group is not None:
                self._ready_task = self._run_group.create_task(self._become_ready(self._proc))
        return True

    async def _become_ready(self, proc: process.Child) -> None:
        """Wait until this run serves (:func:`readiness.wait_ready`), then say so: serving,
        or not ready within its ready timeout (it keeps running: settled, not serving)."""
        began = time.monotonic()
        ready = self.conf.ready if self.conf is not None else None
        outcome = await readiness.wait_ready(readiness.ReadyCheck(
            ready, self.ready_timeout, self.port,
            "PORT" in self.spec.command and not self.shared_port, self.address, self._env,
            self.rt.cwd, self._news, self._log_probe), proc)
        if outcome.port is not None:
            self.port, self.address = outcome.port, f"127.0.0.1:{outcome.port}"
        if proc.returncode is not None or self.state is not State.STARTING:
            return  # it exited, or was paused or stopped meanwhile: not ours to judge
        if outcome.ok:
            self.ready_how = outcome.reason
            self._apply(self.machine.served(time.monotonic()))
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
            self._intent = self._intent or State.STOPPED
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
        if self._ps is None or not self.running:
            return None, None, None
        try:
            with self._ps.oneshot():
                cpu = self._ps.cpu_percent(None)
                mem = self._ps.memory_full_info()
            return round(cpu, 1), mem.rss, getattr(mem, "uss", None)
        except psutil.Error:
            return None, None, None

    def info(self, record: Record | None, now: float | None = None) -> InstanceInfo:
        """This instance in the one schema; weight/enabled come from its ``record``."""
        cpu, rss, uss = self.stats()
        running = self.running
        return InstanceInfo(
            name=self.name, service=self.spec.service, process_type=self.spec.process_type,
            state=self.state.value, pid=self.pid,
            address=self.address or None, port=self.port or None,
            weight=record.weight if record else None,
            enabled=record.enabled if record else None, restarts=self.restarts,
            uptime_s=uptime(self.state.value, self.started_at, now) if running else None,
            cpu_percent=cpu, rss_bytes=rss, uss_bytes=uss, last_exit=self.last_exit or None,
            started_at=self.started_at,
            metadata=dict(record.metadata) if record else None,
            ready=self.ready_how if running and self.state is not State.STARTING else None)
