"""The supervisor: runs every instance of a Procfile until told to stop.

It owns the instances (each changes its own state), their registry records (written
by one :class:`~devcluster.supervisor.recorder.Recorder` thread, never on the event loop) and the
signal handlers. Every task it runs belongs to the task group of :meth:`Supervisor.run`,
whose exit path always stops every instance. It knows nothing of the control plane:
:mod:`devcluster.control.plane` calls its verbs through a small protocol, and
:mod:`devcluster.daemon` wires the two together.

This module holds the cluster's life (start in waves, settle, shut down, signals); its
state is a :class:`~devcluster.supervisor.crew.Crew`, on which two collaborators work: the
control verbs (:mod:`devcluster.supervisor.verbs`) and membership (scale, reload:
:mod:`devcluster.supervisor.membership`). The rules (restart, waves, stop order) are
:mod:`devcluster.supervisor.core`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil

from devcluster import defaults
from devcluster.config import procfile
from devcluster.config.plan import settle_budget
from devcluster.errors import DevclusterError
from devcluster.events import EventKind, EventLog, follow_registry
from devcluster.registry import Registry, State
from devcluster.registry.inotify import WatchStop
from devcluster.schema import InstanceInfo
from devcluster.supervisor import core, preboot, process
from devcluster.supervisor import reload as rolling
from devcluster.supervisor.checkup import Checkups
from devcluster.supervisor.crew import Crew
from devcluster.supervisor.drain import Watchers
from devcluster.supervisor.duty import Duty, guarded
from devcluster.supervisor.instance import Instance
from devcluster.supervisor.logs import LogSink
from devcluster.supervisor.membership import Membership
from devcluster.supervisor.preload import Preloader
from devcluster.supervisor.recorder import Recorder, landed
from devcluster.supervisor.request import UpRequest
from devcluster.supervisor.shared import Runtime
from devcluster.supervisor.triggers import lifeline, signals
from devcluster.supervisor.verbs import Verbs
from devcluster.supervisor.watchdog import Watchdog

T = TypeVar("T")
#: Longest a whole-cluster shutdown waits for its `draining` write before SIGINT.
_DRAIN_WRITE_WAIT = 0.5


class Supervisor:
    """The running cluster: build it inside a running loop, then :meth:`run` it.

    Its state is a :class:`Crew` (``crew``); the control verbs (:class:`Verbs`) and
    membership (:class:`Membership`) are collaborators working on that crew, and the
    supervisor offers their verbs to the control plane (``Supervised``)."""

    def __init__(self, settings: UpRequest, registry: Registry, sink: LogSink,
                 types: Sequence[procfile.ProcessType], env: dict[str, str],
                 specs: Sequence[procfile.InstanceSpec], watchdog: Watchdog | None = None,
                 events: EventLog | None = None,
                 advertise_host: str = defaults.ADVERTISE_HOST) -> None:
        self.registry, self.sink = registry, sink
        loop = asyncio.get_running_loop()

        def report(message: str) -> None:  # from the writer thread: log it on the loop
            loop.call_soon_threadsafe(sink.system, message)

        self.records = Recorder(
            registry, report,
            # From the writer thread: list() copies the values in one step.
            truth=lambda: [i.record() for i in list(self.instances.values())])
        self.watchdog = watchdog
        self.preload = Preloader(*preboot.started())  # launched early by the daemon
        self.preload.on_restart = self._fork_server_restarted
        #: Who watches the registry (client files, xDS streams): what a drain waits on.
        self.watchers = Watchers(settings.state_dir)
        self.rt = Runtime(self.records, sink, settings.procfile.parent.resolve(), settings.grace,
                          settings.ready_timeout, watchdog, self._spawn, self._ours, events,
                          self.preload, advertise_host, self.watchers,
                          ending=lambda: self.stopping.is_set())
        tables: Any = {}
        with contextlib.suppress(DevclusterError):
            tables = rolling.project_tables(settings.procfile)
        self.crew = Crew(settings, registry, sink, self.records, self.rt, self.preload,
                         self._spawn, {t.name: t for t in types}, [t.name for t in types],
                         env, tables)
        self.crew.file_counts = {t.name: settings.scale.get(t.name, 1) for t in types}
        # The crew's own table, set and event (never rebound): the names the life of
        # the cluster below reads most.
        self.instances, self.outside = self.crew.instances, self.crew.outside
        self.stopping = self.crew.stopping
        self.done = asyncio.Event()
        self.verbs = Verbs(self.crew, lambda grace, who: self.request_shutdown(grace, who),
                           self.done)
        self.membership = Membership(self.crew)
        for spec in specs:
            self.crew.add(spec)
        # Preloaded types: their fork servers import while we finish starting up.
        for first in {i.spec.process_type: i for i in reversed(self.instances.values())}.values():
            first.life.warm_preload()
        self._interrupts = 0
        self.started = time.monotonic()
        self._tg: asyncio.TaskGroup | None = None
        self._shutdown_task: asyncio.Task[None] | None = None
        self._early_stop: tuple[float | None, str] | None = None
        #: Who asked for the shutdown (None while none was asked for).
        self.stopped_by: str | None = None

    def __repr__(self) -> str:
        return f"<Supervisor {self.settings.procfile} {len(self.instances)} instances>"

    @property
    def settings(self) -> UpRequest:
        """What the cluster runs with now: the crew's (a reload re-reads the files' part)."""
        return self.crew.settings

    @property
    def procfile(self) -> Path:
        return self.settings.procfile

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

    # -- what the control plane calls (Supervised): the collaborators' verbs ---------------

    async def infos(self, chosen: Iterable[Instance] | None = None) -> list[InstanceInfo]:
        """Every instance (or ``chosen``) in the one schema."""
        return await self.crew.infos(chosen)

    async def act(self, verb: str, names: Sequence[str], all_: bool = False, *,
                  signal_name: str = "", wait: bool = False,
                  timeout: float = defaults.CONTROL_WAIT,
                  who: str = "") -> tuple[list[InstanceInfo], list[str]]:
        """See :meth:`Verbs.act`."""
        return await self.verbs.act(verb, names, all_, signal_name=signal_name, wait=wait,
                                    timeout=timeout, who=who)

    async def down(self, grace: float | None = None, who: str = "") -> list[InstanceInfo]:
        """See :meth:`Verbs.down`."""
        return await self.verbs.down(grace, who)

    async def scale(self, counts: dict[str, int], *, wait: bool = False,
                    timeout: float = defaults.CONTROL_WAIT, who: str = "") -> list[InstanceInfo]:
        """See :meth:`Membership.scale`."""
        return await self.membership.scale(counts, wait=wait, timeout=timeout, who=who)

    async def reload(self, names: Sequence[str] = (), all_: bool = False, *, who: str = "",
                     progress: rolling.Emit | None = None) -> rolling.ReloadResult:
        """See :meth:`Membership.reload`."""
        return await self.membership.reload(names, all_, who=who, progress=progress)

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task owned by :meth:`run`'s task group (no task of ours is left unowned)."""
        if self._tg is None:
            coro.close()
            raise RuntimeError("the supervisor is not running")
        return self._tg.create_task(coro)

    def _fork_server_restarted(self, ptype: str, old: int, new: int) -> None:
        why = f"the fork server of {ptype} (pid {old}) exited; started a new one (pid {new})"
        self.sink.system(why)
        self.rt.event(EventKind.FORKSERVER, None, old=old, new=new, detail=why)

    def _ours(self) -> set[int]:
        """Pids we started (instance leaders, the watchdog): never adopted orphans."""
        pids = {i.pid for i in [*self.instances.values(), *self.outside] if i.running and i.pid}
        if self.watchdog is not None:
            pids.add(self.watchdog.pid)
        return pids | self.preload.pids()

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
        runs on the loop). Ends as shutdown begins: re-reading the registry at each of the
        shutdown's own writes was a third of the supervisor's samples then (py-spy, N=30),
        and its thread held up the exit."""
        if self.rt.events is None:
            return
        stop = WatchStop()  # wakes the watch thread at once
        follow = asyncio.ensure_future(
            asyncio.to_thread(follow_registry, self.registry, self.rt.events, stop))
        ending = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({follow, ending}, return_when=asyncio.FIRST_COMPLETED)
            if follow.done():
                follow.result()
        except Exception as e:  # an aid: the cluster runs on without it
            self.sink.system(f"timeline: no longer following the registry ({e})")
        finally:
            stop.set()  # the thread returns within one watch step
            ending.cancel()

    async def _liveness_restart(self, inst: Instance) -> None:
        """Restart an instance that stayed unhealthy (``liveness = true``), as the
        ``restart`` verb does; the timeline names the health checks as the asker."""
        self.rt.event(EventKind.ASKED, inst.name, who="liveness", detail="restart")
        await inst.stop(drain=True)
        inst.start(by_command=True)

    # -- whole cluster -----------------------------------------------------------------

    def start_all(self) -> None:
        """Start every instance; a type with ``depends_on`` waits (in a task of ours)
        until every instance of its dependencies serves (:func:`core.start_plan`)."""
        plan = core.start_plan(((i.name, i.spec.process_type) for i in self.instances.values()),
                               {t: self._depends_on(t) for t in self.crew.types})
        for inst in self.instances.values():
            if inst.spec.process_type in plan.waiting:
                inst.held = True
        for name in plan.now:
            self.instances[name].start()
        for ptype, deps in plan.waiting.items():
            self._spawn(self._start_after(ptype, deps))

    def _depends_on(self, ptype: str) -> tuple[str, ...]:
        conf = self.settings.types.get(ptype)
        return conf.depends_on if conf is not None else ()

    async def _start_after(self, ptype: str, deps: tuple[str, ...]) -> None:
        """Start ``ptype`` once every instance of ``deps`` serves; if one gave up instead
        (failed, exited, not ready in time), do not start it and say why."""
        needed = self.crew.of_types(deps)

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
        mine = [i for i in self.crew.of_types([ptype]) if i.held]
        outcome = core.dependency_outcome({d.name: d.state for d in needed},
                                          self.stopping.is_set())
        if not outcome.start:
            for inst in mine:
                if outcome.why is None:
                    inst.held = False
                else:
                    inst.not_started(outcome.why)
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
            await landed(drained, _DRAIN_WRITE_WAIT)  # never wait on the registry for long
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
        """Instances in groups to stop one after the other (:func:`core.stop_order`)."""
        groups = core.stop_order([(i.name, i.spec.process_type) for i in self.instances.values()],
                                 self.settings.waves)
        return [[self.instances[name] for name in group] for group in groups]

    def force(self) -> None:
        """Second Ctrl-C (and the exit path): SIGKILL every process group now."""
        for inst in [*self.instances.values(), *self.outside]:
            inst.force_kill()
        process.sweep(self._ours())

    async def run(self, on_settled: Callable[[], Awaitable[None]] | None = None,
                  duties: Sequence[tuple[str, Duty]] = (),
                  on_started: Callable[[], Awaitable[None]] | None = None) -> None:
        """Start every instance, serve until told to stop, stop them all.

        Every task (life cycles, probes, shutdown, reload) belongs to one task group. The
        ``duties`` (named aids such as the state dir's keeper) run guarded
        (:func:`~devcluster.supervisor.duty.guarded`): their errors are said and retried,
        never fatal. Any other task that fails cancels the others; each instance then stops its process on the
        way out, and what is left is SIGKILLed here: nothing outlives this call.
        ``on_settled`` runs once every instance settled (or shutdown began);
        ``on_started`` once every instance without dependencies has been spawned (what
        it raises stops them all).
        """
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg  # before the handlers: a signal always finds its owner
                with signals(loop, self), lifeline(loop, self, self.settings.lifeline_fd):
                    await self._serve(on_settled, duties, on_started)
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
            await self.preload.close()
            self.done.set()

    async def _serve(self, on_settled: Callable[[], Awaitable[None]] | None,
                     duties: Sequence[tuple[str, Duty]],
                     on_started: Callable[[], Awaitable[None]] | None = None) -> None:
        began = time.monotonic()
        if self._early_stop is not None:
            self._tg_ready_stop(*self._early_stop)
        else:
            for inst in self.instances.values():
                self.rt.event(EventKind.ADDED, inst.name, detail=inst.address)
            self.start_all()
            # Let every life cycle reach its spawn before anything else runs: time to
            # ready is the instances' own start-up, so it starts first (issue 21).
            await asyncio.sleep(0)
        if on_started is not None:
            await on_started()
        own = [("collecting adopted orphans", self._reap_adopted),
               ("following the registry into the timeline", self._record_registry),
               ("health checks", Checkups(lambda: list(self.instances.values()),
                                          self._liveness_restart, self.rt.cwd).run)]
        background = [self._spawn(guarded(name, duty, self.sink.system))
                      for name, duty in (*own, *duties)]
        settled = self._spawn(self._settle(began))
        stop_wait = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({settled, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
        settled.cancel()
        await self.crew.written()
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
            await self.crew.written()  # "ready" means the registry says so too
            self._report_ready(seconds)

    def _report_ready(self, seconds: float) -> None:
        serving = [i for i in self.instances.values() if i.state is State.SERVING]
        others = [f"{i.name} {i.state.value}" for i in self.instances.values()
                  if i.state is not State.SERVING]
        line = f"ready: {len(serving)}/{len(self.instances)} serving in {seconds:.2f} s"
        self.sink.system(line + (f" (not serving: {', '.join(others)})" if others else ""))

    def on_signal(self, sig: signal.Signals) -> None:
        """Signal handler: only schedules work (first: graceful, second: forced)."""
        if sig is signal.SIGHUP:
            if not self.stopping.is_set() and self._tg is not None:
                self._spawn(self.membership.hangup())
            return
        self._interrupts += 1
        if self._interrupts == 1:
            self.request_shutdown(who=sig.name)
        else:
            self.sink.system("forced shutdown: SIGKILL to every instance")
            self.force()
