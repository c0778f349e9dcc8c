"""The supervisor: runs every instance of a Procfile until told to stop.

It owns the instances (each changes its own state), their registry records (written
by one :class:`~devcluster.recorder.Recorder` thread, never on the event loop) and the
signal handlers. Every task it runs belongs to the task group of :meth:`Supervisor.run`,
whose exit path always stops every instance. It knows nothing of the control plane:
:mod:`devcluster.control` calls the verbs below through a small protocol, and
:mod:`devcluster.daemon` wires the two together.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from devcluster import defaults, process, procfile
from devcluster import reload as rolling
from devcluster.errors import DevclusterError, UnknownInstanceError
from devcluster.events import EventKind, EventLog, follow_registry
from devcluster.instance import DRAIN_DELAY, Instance, Policy, Runtime, _landed
from devcluster.logs import LogSink
from devcluster.process import parse_signal
from devcluster.project import TypeSettings
from devcluster.projectplan import settle_budget
from devcluster.recorder import Recorder
from devcluster.registry import Record, Registry, State
from devcluster.schema import InstanceInfo
from devcluster.triggers import lifeline, signals
from devcluster.watchdog import Watchdog

_DONE = {"kill": "killed", "stop": "stopped", "start": "started", "restart": "restarted",
         "pause": "paused", "resume": "resumed"}
T = TypeVar("T")
#: Longest a whole-cluster shutdown waits for its `draining` write before SIGINT.
_DRAIN_WRITE_WAIT = 0.5


@dataclass(frozen=True)
class Settings:
    """Everything ``devcluster up`` was asked for."""

    procfile: Path
    state_dir: Path
    env_files: tuple[Path, ...] = ()
    scale: dict[str, int] = field(default_factory=dict)
    base_port: int = defaults.BASE_PORT
    grace: float = defaults.GRACE
    ready_timeout: float = defaults.READY_TIMEOUT
    restart: dict[str, Policy] = field(default_factory=dict)
    ready_fd: int | None = None
    """A pipe to write one JSON line to once every instance has settled (``up -d``)."""
    registry: str | None = None
    """``etcd://host:port/prefix`` to register into etcd; None: the state dir's file."""
    lock_fd: int | None = None
    """The state dir's lock file, already locked by the process that started us."""
    lifeline_fd: int | None = None
    """A pipe whose other end the starting process holds: EOF (it exited, however it
    died) shuts the cluster down gracefully. Unlike PDEATHSIG it is not tied to the
    thread that started us."""
    watch: tuple[Path, ...] | None = None
    """``up --watch``: reload when these change (empty: the Procfile's directory)."""
    console: bool = False
    """Serve the web console for as long as the cluster runs (``up -d --console``)."""
    console_port: int = 0
    """The console's port on 127.0.0.1; 0: a free one."""
    config: Path | None = None
    """The ``devcluster.toml`` these settings were read from (None: no file)."""
    types: Mapping[str, TypeSettings] = field(default_factory=dict)
    """Per process type, flags over the file (:func:`devcluster.project.resolve`). A type
    not here runs with the settings above and the default readiness probe."""
    waves: tuple[tuple[str, ...], ...] = ()
    """Start order from ``depends_on``: () starts every type at once."""


class Supervisor:
    """The running cluster: build it inside a running loop, then :meth:`run` it."""

    def __init__(self, settings: Settings, registry: Registry, sink: LogSink,
                 types: Sequence[procfile.ProcessType], env: dict[str, str],
                 specs: Sequence[procfile.InstanceSpec], watchdog: Watchdog | None = None,
                 events: EventLog | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.sink = sink
        self.types = {t.name: t for t in types}
        self.type_order = [t.name for t in types]
        self.env = env
        loop = asyncio.get_running_loop()
        self.records = Recorder(
            registry, lambda msg: loop.call_soon_threadsafe(sink.system, msg),
            # From the writer thread: list() copies the values in one step.
            truth=lambda: [i.record() for i in list(self.instances.values())])
        self.watchdog = watchdog
        self.rt = Runtime(self.records, sink, settings.procfile.parent.resolve(), settings.grace,
                          settings.ready_timeout, watchdog, self._spawn, self._ours, events)
        self.instances: dict[str, Instance] = {}
        #: Instances of ours not in the name table: a replacement starting, an old
        #: instance stopping (see devcluster.reload). They die with the cluster too.
        self.outside: set[Instance] = set()
        #: devcluster.toml's per-type tables as last applied (a reload diffs against them).
        self.tables: Any = {}
        with contextlib.suppress(DevclusterError):
            self.tables = rolling.project_tables(settings.procfile)
        for spec in specs:
            self._add(spec)
        self.stopping = asyncio.Event()
        self.done = asyncio.Event()
        self._interrupts = 0
        self.started = time.monotonic()
        self._tg: asyncio.TaskGroup | None = None
        self._shutdown_task: asyncio.Task[None] | None = None
        self._early_stop: tuple[float | None, str] | None = None
        #: Who asked for the shutdown (None while none was asked for).
        self.stopped_by: str | None = None
        # scale and reload add and remove instances across awaits: one at a time.
        self._membership = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<Supervisor {self.settings.procfile} {len(self.instances)} instances>"

    @property
    def procfile(self) -> Path:
        return self.settings.procfile

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task owned by :meth:`run`'s task group (no task of ours is left unowned)."""
        if self._tg is None:
            coro.close()
            raise RuntimeError("the supervisor is not running")
        return self._tg.create_task(coro)

    def _ours(self) -> set[int]:
        """Pids we started (instance leaders, the watchdog): never adopted orphans."""
        pids = {i.pid for i in [*self.instances.values(), *self.outside] if i.running and i.pid}
        if self.watchdog is not None:
            pids.add(self.watchdog.pid)
        return pids

    async def _reap_adopted(self) -> None:
        """Collect orphans that exited under us (we are their subreaper) so no zombie
        piles up. Polls: an adopted process gives us no event but SIGCHLD, which
        asyncio's child watcher owns."""
        while True:
            await asyncio.sleep(1.0)
            zombies = []
            for proc in process.adopted(self._ours()):
                with contextlib.suppress(psutil.Error):
                    if proc.status() == psutil.STATUS_ZOMBIE:
                        zombies.append(proc.pid)
            process.reap(zombies)

    async def _record_registry(self) -> None:
        """Weight, enable and metadata changes reach the registry from anyone (`devcluster
        weight`, a script): follow it into the timeline, in a thread (registry I/O never
        runs on the loop). Cancelled with the other duties at shutdown."""
        if self.rt.events is None:
            return
        stop = threading.Event()
        try:
            await asyncio.to_thread(follow_registry, self.registry, self.rt.events, stop)
        except Exception as e:  # an aid: the cluster runs on without it
            self.sink.system(f"timeline: no longer following the registry ({e})")
        finally:
            stop.set()  # the thread returns within one watch step

    def make_instance(self, spec: procfile.InstanceSpec) -> Instance:
        """A new instance of ``spec`` with its type's settings, in no table yet."""
        policy = self.settings.restart.get(spec.process_type, Policy.ON_FAILURE)
        self.sink.widen(spec.name)
        return Instance(spec, policy, self.rt, self.settings.types.get(spec.process_type))

    def _add(self, spec: procfile.InstanceSpec) -> Instance:
        inst = self.instances[spec.name] = self.make_instance(spec)
        return inst

    # -- lookup ------------------------------------------------------------------------

    def select(self, names: Iterable[str], all_: bool = False) -> list[Instance]:
        """Instances named, or all of a process type, or every one; unknown -> error."""
        if all_:
            return list(self.instances.values())
        chosen: dict[str, Instance] = {}
        for name in names:
            procfile.check_name(name)
            if name in self.instances:
                chosen[name] = self.instances[name]
                continue
            of_type = [i for i in self.instances.values() if i.spec.process_type == name]
            if not of_type:
                raise UnknownInstanceError(name, list(self.instances))
            chosen.update((i.name, i) for i in of_type)
        return list(chosen.values())

    async def infos(self, chosen: Iterable[Instance] | None = None) -> list[InstanceInfo]:
        """Instances in the one schema (every one by default); the registry is read in a
        thread, once, for weight and enabled (None if it cannot be read)."""
        chosen = list(self.instances.values() if chosen is None else chosen)
        # Unreadable (corrupt, deleted): answer from memory, with what we last wrote.
        last = self.records.last
        records: dict[str, Record] = dict(last.records) if last is not None else {}
        with contextlib.suppress(DevclusterError, OSError):
            records = dict((await asyncio.to_thread(self.registry.snapshot)).records)
        now = time.time()
        return [i.info(records.get(i.name), now) for i in chosen]

    async def _written(self) -> None:
        """Wait (bounded) until every registry write queued so far landed, so a control
        client reading the registry right after a reply sees what the reply says."""
        await _landed(self.records.flush(), self.settings.grace)

    # -- verbs (the control plane calls these) ------------------------------------------

    async def act(self, verb: str, names: Sequence[str], all_: bool = False, *,
                  signal_name: str = "", wait: bool = False,
                  timeout: float = defaults.CONTROL_WAIT,
                  who: str = "") -> tuple[list[InstanceInfo], list[str]]:
        """kill/stop/start/restart/pause/resume instances; (their infos, unchanged names)."""
        do, wanted = self._verb(verb, signal_name)
        chosen = self.select(names, all_)
        targets = "--all" if all_ else " ".join(names)
        sig = parse_signal(signal_name or "SIGKILL").name if verb == "kill" else ""
        label = f"kill ({sig})" if sig else verb
        who = who or "a control client"
        self.sink.system(f"{label} {targets} (asked by {who})")
        unchanged: list[str] = []

        async def one(inst: Instance) -> None:
            self.rt.event(EventKind.ASKED, inst.name, who=who, detail=f"{verb} {sig}".rstrip())
            inst.asker = who  # the state changes and exits it causes name the asker
            try:
                result = do(inst)
                changed = await result if asyncio.iscoroutine(result) else result
                if not changed:
                    unchanged.append(inst.name)
                elif wanted is not None and wait:
                    await inst.wait_until(wanted, timeout)
            finally:
                inst.asker = None

        await asyncio.gather(*(one(i) for i in chosen))
        await self._written()
        failed = {i.name: self.records.failures[i.name] for i in chosen
                  if i.name in self.records.failures}
        if failed:  # the action happened; the registry does not say so
            name, why = next(iter(failed.items()))
            others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise DevclusterError(f"{_DONE.get(verb, verb)} {name}{others}, but could not "
                                  f"record it in the registry: {why}")
        return await self.infos(chosen), unchanged

    def _verb(self, verb: str, signal_name: str) -> tuple[
            Callable[[Instance], Awaitable[bool] | bool], Callable[[Instance], bool] | None]:
        """(what ``verb`` does to one instance, what to wait for with ``wait``)."""
        settled: Callable[[Instance], bool] = lambda i: i.settled  # noqa: E731

        async def restart(inst: Instance) -> bool:
            await inst.stop(drain=DRAIN_DELAY)
            return inst.start(by_command=True)

        if verb == "kill":
            sig = parse_signal(signal_name or "SIGKILL")
            return (lambda i: i.kill(sig)), None
        verbs: dict[str, tuple[Callable[[Instance], Awaitable[bool] | bool],
                               Callable[[Instance], bool] | None]] = {
            "stop": (lambda i: i.stop(drain=DRAIN_DELAY), None),
            "start": (lambda i: i.start(by_command=True), settled),
            "restart": (restart, settled),
            "pause": (lambda i: i.pause(), None),
            "resume": (lambda i: i.resume(), None),
        }
        if verb not in verbs:
            raise DevclusterError(f"unknown action {verb!r}")
        return verbs[verb]

    async def scale(self, counts: dict[str, int], *, wait: bool = False,
                    timeout: float = defaults.CONTROL_WAIT, who: str = "") -> list[InstanceInfo]:
        """Set instance counts of process types; the infos of every instance of them."""
        who = who or "a control client"
        self.sink.system(f"scale {counts} (asked by {who})")
        for ptype, n in counts.items():
            self.rt.event(EventKind.ASKED, None, who=who, detail=f"scale {ptype}={n}")
        async with self._membership:
            changed = await self._scale(counts)
        if wait:
            for inst in changed:
                if inst.name in self.instances:
                    await inst.wait_until(lambda i: i.settled, timeout)
        await self._written()
        return await self.infos(i for i in self.instances.values()
                                if i.spec.process_type in counts)

    async def down(self, grace: float | None = None, who: str = "") -> list[InstanceInfo]:
        """Stop the whole cluster; returns once every instance is stopped."""
        self.request_shutdown(grace, who or "control client")
        await self.done.wait()
        return await self.infos()

    # -- whole cluster -----------------------------------------------------------------

    def start_all(self) -> None:
        """Start every instance; a type with ``depends_on`` waits (in a task of ours)
        until every instance of its dependencies serves."""
        waiting: dict[str, tuple[str, ...]] = {}
        for inst in self.instances.values():
            deps = self._depends_on(inst.spec.process_type)
            if deps:
                inst.held = True
                waiting[inst.spec.process_type] = deps
            else:
                inst.start()
        for ptype, deps in waiting.items():
            self._spawn(self._start_after(ptype, deps))

    def _depends_on(self, ptype: str) -> tuple[str, ...]:
        conf = self.settings.types.get(ptype)
        return conf.depends_on if conf is not None else ()

    def _of_types(self, types: Iterable[str]) -> list[Instance]:
        wanted = set(types)
        return [i for i in self.instances.values() if i.spec.process_type in wanted]

    async def _start_after(self, ptype: str, deps: tuple[str, ...]) -> None:
        """Start ``ptype`` once every instance of ``deps`` serves; if one gave up instead
        (failed, exited, not ready in time), do not start it and say why."""
        needed = self._of_types(deps)

        async def settled() -> None:
            for dep in needed:  # a dependency waiting on its own dependencies is unsettled
                while not await dep.wait_until(lambda i: i.settled, defaults.CONTROL_WAIT):
                    pass

        done, stop = asyncio.ensure_future(settled()), asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({done, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            stop.cancel()
        mine = [i for i in self._of_types([ptype]) if i.held]
        bad = [d for d in needed if d.state is not State.SERVING]
        if self.stopping.is_set():
            for inst in mine:
                inst.held = False
            return
        if bad:
            why = f"dependency {bad[0].name} did not serve ({bad[0].state.value})"
            for inst in mine:
                inst.not_started(why)
            return
        self.sink.system(f"{ptype}: {', '.join(deps)} serving; starting {len(mine)} instance(s)")
        for inst in mine:
            inst.start()

    async def wait_settled(self, timeout: float) -> bool:
        """Wait until every instance is serving or has given up."""
        deadline = time.monotonic() + timeout
        for inst in list(self.instances.values()):
            if not await inst.wait_until(lambda i: i.settled, max(0.0, deadline - time.monotonic())):
                return False
        return True

    def request_shutdown(self, grace: float | None = None, who: str = "signal") -> None:
        """Start the graceful shutdown (once; later requests join it)."""
        if self._tg is None:  # asked before the run began: it starts nothing, and stops
            self._early_stop = self._early_stop or (grace, who)
            self.stopping.set()
        elif self._shutdown_task is None:
            self.stopping.set()
            self.stopped_by = self.stopped_by or who
            self.rt.event(EventKind.ASKED, None, who=who, detail="down")
            with contextlib.suppress(RuntimeError):  # the group is failing: it stops all
                self._shutdown_task = self._spawn(self.shutdown(grace, who))

    async def shutdown(self, grace: float | None = None, who: str = "signal") -> None:
        """Drain every instance in one registry write, then stop them all gracefully."""
        self.stopping.set()
        self.sink.system(f"shutting down ({who}): draining {len(self.instances)} instances")
        began = time.monotonic()
        for group in self._stop_order():  # dependants before what they depend on
            running = [i for i in group if i.running]
            drained = self.records.update_many({i.name: {"state": State.DRAINING.value}
                                                for i in running})
            await _landed(drained, _DRAIN_WRITE_WAIT)  # never wait on the registry for long
            await asyncio.gather(*(i.stop(grace, announce=False) for i in group))
        # Replacements and replaced instances of a reload in progress go too.
        await asyncio.gather(*(i.stop(grace, announce=False) for i in self.outside))
        left = await asyncio.to_thread(process.sweep, self._ours())
        if left:
            self.sink.system(f"stopped {len(left)} process(es) the instances had daemonized "
                             f"(pids {', '.join(map(str, left))})")
        self.sink.system(f"all instances stopped in {1000 * (time.monotonic() - began):.0f} ms")
        self.done.set()

    def _stop_order(self) -> list[list[Instance]]:
        """Instances in groups to stop one after the other: the start waves reversed
        (without ``depends_on``, one group: all at once). Types in no wave go first."""
        waves = self.settings.waves
        if len(waves) <= 1:
            return [list(self.instances.values())]
        placed = {t for wave in waves for t in wave}
        groups = [[i for i in self.instances.values() if i.spec.process_type not in placed]]
        groups += [self._of_types(wave) for wave in reversed(waves)]
        return [g for g in groups if g]

    def force(self) -> None:
        """Second Ctrl-C (and the exit path): SIGKILL every process group now."""
        for inst in [*self.instances.values(), *self.outside]:
            inst.force_kill()
        process.sweep(self._ours())

    async def run(self, on_settled: Callable[[], Awaitable[None]] | None = None,
                  duties: Sequence[Callable[[], Coroutine[Any, Any, None]]] = ()) -> None:
        """Start every instance, serve until told to stop, stop them all.

        Every task (life cycles, probes, shutdown, reload) belongs to one task group. A
        task that fails cancels the others; each instance then stops its process on the
        way out, and what is left is SIGKILLed here: nothing outlives this call.
        ``on_settled`` runs once every instance settled (or shutdown began).
        """
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg  # before the handlers: a signal always finds its owner
                with signals(loop, self), lifeline(loop, self, self.settings.lifeline_fd):
                    await self._serve(on_settled, duties)
        except ExceptionGroup as group:
            first: BaseException = group
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            self.sink.system(f"a supervisor task failed ({first!r}); stopping every instance")
            raise first from group
        finally:
            self._tg = None
            self.stopping.set()
            self.force()
            self.done.set()

    async def _serve(self, on_settled: Callable[[], Awaitable[None]] | None,
                     duties: Sequence[Callable[[], Coroutine[Any, Any, None]]]) -> None:
        began = time.monotonic()
        background = [self._spawn(duty()) for duty in
                      (self._reap_adopted, self._record_registry, *duties)]
        if self._early_stop is not None:
            self._tg_ready_stop(*self._early_stop)
        else:
            for inst in self.instances.values():
                self.rt.event(EventKind.ADDED, inst.name, detail=inst.address)
            self.start_all()
        settled = self._spawn(self._settle(began))
        stop_wait = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({settled, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
        settled.cancel()
        await self._written()
        if on_settled is not None:
            await on_settled()
        await self.stopping.wait()
        if self._shutdown_task is not None:
            await self._shutdown_task
        for task in background:
            task.cancel()

    def _tg_ready_stop(self, grace: float | None, who: str) -> None:
        self.stopped_by = who
        self.rt.event(EventKind.ASKED, None, who=who, detail="down")
        self._shutdown_task = self._spawn(self.shutdown(grace, who))

    async def _settle(self, began: float) -> None:
        st = self.settings
        if await self.wait_settled(settle_budget(st.types, st.waves, st.ready_timeout) + 60):
            seconds = time.monotonic() - began
            await self._written()  # "ready" means the registry says so too
            self._report_ready(seconds)

    def _report_ready(self, seconds: float) -> None:
        serving = [i for i in self.instances.values() if i.state is State.SERVING]
        others = [f"{i.name} {i.state.value}" for i in self.instances.values()
                  if i.state is not State.SERVING]
        line = f"ready: {len(serving)}/{len(self.instances)} serving in {seconds:.2f} s"
        self.sink.system(line + (f" (not serving: {', '.join(others)})" if others else ""))

    # -- membership: reload and scale ----------------------------------------------------

    async def reload(self, names: Sequence[str] = (), all_: bool = False, *, who: str = "",
                     progress: rolling.Emit | None = None) -> rolling.ReloadResult:
        """Rolling reload (devcluster.reload): apply the files' diff, and replace the
        instances named (or every one) too. Unknown names raise before anything changes.

        The work is a task of the cluster's own: a control client that goes away does
        not leave a reload half done.
        """
        if self.stopping.is_set():
            raise DevclusterError("the cluster is shutting down; nothing to reload")
        targets = {i.name for i in self.select(names, all_)} if names or all_ else set()
        what = "--all" if all_ else " ".join(names) or "changes only"
        self.sink.system(f"reload {what} (asked by {who or 'a control client'})")

        def emit(event: rolling.Progress) -> None:
            self.sink.system(event.text)
            if progress is not None:
                progress(event)

        async def work() -> rolling.ReloadResult:
            async with self._membership:
                result = await rolling.run(self, targets, emit)
            await self._written()
            return result

        return await asyncio.shield(self._spawn(work()))

    def add_instance(self, spec: procfile.InstanceSpec) -> Instance:
        """A new instance in the table and the registry (not started)."""
        inst = self._add(spec)
        self.records.register(inst.record())
        self.rt.event(EventKind.ADDED, inst.name, detail=inst.address)
        return inst

    async def remove_instance(self, name: str) -> None:
        """Stop an instance gracefully and forget it."""
        inst = self.instances[name]
        await inst.stop(drain=DRAIN_DELAY)
        self.instances.pop(name, None)
        self.records.deregister(name)
        self.rt.event(EventKind.REMOVED, name)

    def adopt_config(self, types: Sequence[procfile.ProcessType], env: dict[str, str],
                     tables: Any) -> None:
        """What the files say now (new instances and scaling follow it)."""
        self.types, self.type_order = {t.name: t for t in types}, [t.name for t in types]
        self.env, self.tables = env, tables

    def on_signal(self, sig: signal.Signals) -> None:
        """Signal handler: only schedules work (first: graceful, second: forced)."""
        if sig is signal.SIGHUP:
            if not self.stopping.is_set() and self._tg is not None:
                self._spawn(self._hangup())
            return
        self._interrupts += 1
        if self._interrupts == 1:
            self.request_shutdown(who=sig.name)
        else:
            self.sink.system("forced shutdown: SIGKILL to every instance")
            self.force()

    async def _hangup(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.reload(who="SIGHUP")

    async def _scale(self, counts: dict[str, int]) -> list[Instance]:
        """Set the number of instances of process types; returns those added or removed.

        Shrinking stops the highest-numbered instances gracefully and forgets them;
        growing adds instances with the next names (``greeter.4``) and ports.
        """
        for ptype in counts:
            if ptype not in self.types:
                raise UnknownInstanceError(ptype, self.type_order)
        plan = [self._scale_plan(ptype, wanted) for ptype, wanted in counts.items()]
        changed: list[Instance] = []
        for extra, specs in plan:  # every spec is valid (ports...) before anything changes
            await asyncio.gather(*(i.stop(drain=DRAIN_DELAY) for i in extra))
            for inst in extra:
                self.instances.pop(inst.name)
                self.records.deregister(inst.name)
                self.rt.event(EventKind.REMOVED, inst.name)
                changed.append(inst)
            for spec in specs:
                inst = self._add(spec)
                self.records.register(inst.record())
                self.rt.event(EventKind.ADDED, inst.name, detail=inst.address)
                inst.start()
                changed.append(inst)
        return changed

    def _scale_plan(self, ptype: str, wanted: int) -> tuple[list[Instance], list[procfile.InstanceSpec]]:
        """(instances to remove, specs to add) to have ``wanted`` instances of ``ptype``."""
        mine = sorted((i for i in self.instances.values() if i.spec.process_type == ptype),
                      key=lambda i: _number(i.name))
        index = self.type_order.index(ptype)
        first = max((_number(i.name) for i in mine[:wanted]), default=0) + 1
        specs = [procfile.instance_spec(self.types[ptype], f"{ptype}.{n}", index, n,
                                        self.settings.base_port, self.env)
                 for n in range(first, first + wanted - len(mine))]
        return mine[wanted:], specs


def _number(name: str) -> int:
    _, _, n = name.rpartition(".")
    return int(n) if n.isdigit() else 1
