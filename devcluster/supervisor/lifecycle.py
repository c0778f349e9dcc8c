"""The life cycle of one instance's process: spawn, output, exit, restart policy.

:class:`Life` is a collaborator of :class:`~devcluster.supervisor.instance.Instance`: it owns
what belongs to the instance's current process (the process, its pid and start time,
its output, why it is being ended) and runs it: one run spawns the command, pumps its
output, has it probed for readiness, waits for its exit and sweeps what it left; after
an exit by itself, the restart rules (:mod:`devcluster.supervisor.core`) decide whether
and when it runs again. It changes no state itself: it asks its :class:`Owner`, the
instance, still the one object that does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import psutil

from devcluster import defaults
from devcluster.config.preloadcheck import PRELOAD_WORKS
from devcluster.config.procfile import InstanceSpec, command_argv, instance_environment
from devcluster.config.project import TypeSettings
from devcluster.events import EventKind
from devcluster.registry import State
from devcluster.supervisor import core, early, probes, process
from devcluster.supervisor.core import MAX_FAILURES
from devcluster.supervisor.logfiles import DEFAULT_CAP, Cap, LineSplitter, clean
from devcluster.supervisor.preload import Forked, PreloadError, adopt
from devcluster.supervisor.shared import Runtime

#: Lines of its own output an instance keeps, to say why it failed (a replacement
#: shares its log file with the instance it replaces).
RECENT_LINES = 20

#: Errors of a spawn that say the machine is short of something for now, not that the
#: command is wrong: the instance is retried under its restart policy (EMFILE: a flood of
#: connections to the console once failed instances for good this way).
TRANSIENT_SPAWN_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM})


class Owner(Protocol):
    """What a life cycle needs of its instance."""

    @property
    def name(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def asker(self) -> str | None:
        """Who asked for the verb in progress (events name them)."""

    def new_run(self) -> None:
        """A run begins: forget how the last one became ready."""

    def set_state(self, state: State) -> None: ...

    def apply(self, commands: Sequence[core.Command]) -> float | None:
        """Carry out the core's commands; the backoff to wait, if one was armed."""

    async def become_ready(self, proc: process.Child) -> None: ...


class Life:
    """One instance's process, run after run (:meth:`run`)."""

    def __init__(self, owner: Owner, spec: InstanceSpec, conf: TypeSettings | None,
                 rt: Runtime, machine: core.Machine) -> None:
        self.owner, self.spec, self.conf, self.rt, self.machine = owner, spec, conf, rt, machine
        self.proc: process.Child | None = None
        self.ps: psutil.Process | None = None
        self.pid: int | None = None
        self.started_at: float | None = None
        self.last_exit = ""
        #: Why we are ending the process (STOPPED, KILLED); None: it ends by itself.
        self.intent: State | None = None
        #: The last lines of this process's own output.
        self.recent: collections.deque[str] = collections.deque(maxlen=RECENT_LINES)
        #: Set by each output line: wakes a readiness probe between polls.
        self.news = asyncio.Event()
        self.env: dict[str, str] = {}
        """What the current process (and an exec probe) runs with."""
        self.log_probe: probes.LogProbe | None = None  # fed every output line
        self.run_group: asyncio.TaskGroup | None = None  # owns this run's pump and probe
        self.ready_task: asyncio.Task[None] | None = None

    @property
    def grace(self) -> float:
        return self.rt.grace if self.conf is None else self.conf.grace

    @property
    def ready_timeout(self) -> float:
        return self.rt.ready_timeout if self.conf is None else self.conf.ready_timeout

    async def run(self) -> None:
        """Run the process; after an exit by itself, apply the restart policy."""
        while True:
            returncode = await self._run_once()
            if returncode is None:
                return
            delay = self._after_exit(returncode)
            if delay is None:
                return
            self.rt.sink.system(f"{self.owner.name} restarting in {delay:g}s "
                                f"(failure {self.machine.failures} of {MAX_FAILURES})")
            await asyncio.sleep(delay)

    async def _run_once(self) -> int | None:
        """Spawn, pump output, probe readiness, wait for exit. None when it never ran."""
        self.intent = None
        self.owner.new_run()
        again = self.machine.begin_run()
        env = self.env = self.environment()
        argv = command_argv(self.spec.command, env)
        ready = self.conf.ready if self.conf is not None else None
        # Before the spawn: the log probe must see the very first line.
        self.log_probe = probes.LogProbe(ready.arg) if ready and ready.kind == "log" else None
        try:
            proc = await self._spawn_process(argv, env)
        except (PreloadError, OSError) as e:
            if isinstance(e, OSError) and e.errno in TRANSIENT_SPAWN_ERRORS:
                return self._could_not_start_now(e)
            self._cannot_run(argv, e)
            return None
        self._started(proc, again)
        async with asyncio.TaskGroup() as run:
            self.run_group = run
            pump = run.create_task(self._pump(proc))
            probing = self.ready_task = run.create_task(self.owner.become_ready(proc))
            returncode = await self._wait_exit(proc)
            self.rt.event(EventKind.EXITED, self.owner.name, who=self.owner.asker,
                          code=returncode if returncode >= 0 else None,
                          signal=process.describe_exit(returncode).removeprefix("signal ")
                          if returncode < 0 else None)
            probing.cancel()
            # The leader is gone; sweep whatever it left in its group and what it
            # daemonized out of it (adopted: we are a subreaper), then drain the pipe.
            process.signal_group(proc.pid, signal.SIGKILL)
            if not self.rt.ending():  # else the shutdown's own sweep takes it
                await asyncio.to_thread(process.sweep, self.rt.ours(), self.owner.name)
            if self.rt.watchdog is not None:
                self.rt.watchdog.forget(proc.pid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pump), 2.0)
            pump.cancel()
        self.run_group = None
        self.last_exit = process.describe_exit(returncode)
        return returncode

    def _could_not_start_now(self, e: OSError) -> int:
        """The machine is short of something (file descriptors, processes, memory): not
        the Procfile's fault. Count it as a failed run, so the restart policy and its
        backoff try again, instead of failing the instance for good."""
        self.last_exit = f"could not start: {e.strerror or e}"
        self.pid = None
        return 1

    def _cannot_run(self, argv: Sequence[str], e: PreloadError | OSError) -> None:
        name = self.owner.name
        if isinstance(e, PreloadError):
            self.last_exit = f"preload failed: {e}"
            self.rt.sink.system(f"{name} failed: {self.last_exit}; fix preload in "
                                "devcluster.toml or remove it")
        else:
            self.last_exit = f"cannot run {argv[0]!r}: {e.strerror or e}"
            self.rt.sink.system(f"{name} failed: {self.last_exit}; fix the Procfile line")
        self.pid = None
        self.owner.set_state(State.FAILED)

    def _started(self, proc: process.Child, again: bool) -> None:
        """The process exists: record it, track it, and say so."""
        name, asker = self.owner.name, self.owner.asker
        self.proc, self.pid = proc, proc.pid
        self.rt.event(EventKind.STARTED, name, new=proc.pid, who=asker)
        if again:
            self.rt.event(EventKind.RESTARTED, name, new=self.machine.restarts,
                          who=asker or "restart policy")
        if self.rt.watchdog is not None:
            self.rt.watchdog.track(proc.pid)
        try:
            ps = self.ps = psutil.Process(proc.pid)
            self.started_at = ps.create_time()
            ps.cpu_percent(None)
        except psutil.Error:
            self.ps, self.started_at = None, time.time()
        self.owner.apply(self.machine.spawned())
        how = proc.how if isinstance(proc, Forked) else f"pid {proc.pid}"
        self.rt.sink.system(f"{name} started ({how}): {self.spec.command}")

    def environment(self) -> dict[str, str]:
        """The environment of this instance's next process."""
        return instance_environment(self.spec, str(Path(sys.executable).parent),
                                    self.conf.env if self.conf is not None else {},
                                    self.grace, self.owner.port)

    def warm_preload(self) -> None:
        """Start the fork server of this instance's type now (a preloaded type): its
        imports then overlap the rest of the supervisor's start-up."""
        modules = self.conf.preload if self.conf is not None and PRELOAD_WORKS else ()
        if modules and self.rt.preload is not None:
            env = self.environment()
            self.rt.preload.warm(self.spec.process_type, modules,
                                 command_argv(self.spec.command, env), env, str(self.rt.cwd),
                                 self.ready_timeout)

    async def _spawn_process(self, argv: list[str], env: dict[str, str]) -> process.Child:
        """Exec ``argv``, or fork it from its type's fork server (``preload``)."""
        modules = self.conf.preload if self.conf is not None and PRELOAD_WORKS else ()
        if modules and self.rt.preload is not None:
            return await self.rt.preload.spawn(self.spec.process_type, modules, argv, env,
                                               str(self.rt.cwd), self.ready_timeout,
                                               self.owner.name)
        started = early.take(self.owner.name, argv, env, str(self.rt.cwd))
        if started is not None:  # started before the supervisor's exec: the same command
            pid, out_r = started
            return await adopt(pid, out_r, how=f"pid {pid}, started early")
        return await process.spawn(argv, env, str(self.rt.cwd))

    async def _wait_exit(self, proc: process.Child) -> int:
        """Wait for the process to exit; if cancelled (the supervisor's task group is
        failing), stop it first (SIGINT, grace, SIGKILL), as trio's run_process does."""
        try:
            return await process.wait_exit(proc)
        except asyncio.CancelledError:
            process.signal_group(proc.pid, signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait_exit(proc), self.grace)
            except (TimeoutError, asyncio.CancelledError):
                pass
            finally:
                process.signal_group(proc.pid, signal.SIGKILL)
            raise

    async def _pump(self, proc: process.Child) -> None:
        """Copy the process's output to its log, a chunk at a time (a line at a time
        cost the supervisor a core under a flood); lines cut by a chunk are joined."""
        assert proc.stdout is not None
        lines = LineSplitter()
        while True:
            data = await proc.stdout.read(defaults.LOG_CHUNK)
            block = lines.feed(data) if data else lines.flush()
            if block is not None:
                self._output(block)
            if not data:
                return

    def _output(self, block: bytes) -> None:
        """Whole lines of output (joined by ``\\n``): to the log, the recent lines, a
        readiness probe still waiting for its line."""
        block, conf = clean(block), self.conf
        cap = Cap(conf.log_max, conf.log_keep) if conf is not None else DEFAULT_CAP
        self.rt.sink.output(self.owner.name, block, cap)
        last = block.rsplit(b"\n", RECENT_LINES)[-RECENT_LINES:]
        self.recent.extend(ln.decode("utf-8", "replace").rstrip("\r") for ln in last)
        self.news.set()  # a readiness probe napping between polls looks now
        probe = self.log_probe
        if probe is not None and probe.matched is None:
            for text in block.decode("utf-8", "replace").split("\n"):
                if probe.feed(text):
                    break

    def _after_exit(self, returncode: int) -> float | None:
        """Set the state after an exit; return the restart delay, or None to stay down."""
        self.proc = None
        intent, self.intent = self.intent, None
        verdict = self.machine.exited(returncode, intent, time.monotonic())
        name = self.owner.name
        if verdict.reason == "asked":
            self.rt.sink.system(f"{name} {verdict.state.value} ({self.last_exit})")
        else:
            self.rt.sink.system(f"{name} exited by itself ({self.last_exit})")
        if verdict.state is State.FAILED:
            self.rt.sink.system(f"{name} failed {verdict.failures} times in a row; giving "
                                f"up (fix it, then `devcluster start {name}`)")
        return self.owner.apply(core.commands(verdict))
