"""The life cycle of one instance's process: spawn, output, exit, restart policy.

:class:`Lifecycle` is a part of :class:`~devcluster.supervisor.instance.Instance` (a mixin: the
methods run on the instance itself, still the one object that changes its state). One
run spawns the command, pumps its output, has it probed for readiness
(:mod:`devcluster.supervisor.readiness`), waits for its exit and sweeps what it left; after an
exit by itself, the restart policy decides whether and when it runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from devcluster.config.procfile import command_argv, instance_environment
from devcluster.events import EventKind
from devcluster.registry import State
from devcluster.supervisor import core, probes, process
from devcluster.supervisor.core import MAX_FAILURES
from devcluster.supervisor.preload import Forked, PreloadError

if TYPE_CHECKING:
    from devcluster.supervisor.instance import Instance



class Lifecycle:
    """_lifecycle (run, restart, run...), one run, its output pump, the exit policy."""

    async def _lifecycle(self: Instance) -> None:
        """Run the process; after an exit by itself, apply the restart policy."""
        while True:
            returncode = await self._run_once()
            if returncode is None:
                return
            delay = self._after_exit(returncode)
            if delay is None:
                return
            self.rt.sink.system(f"{self.name} restarting in {delay:g}s "
                                f"(failure {self.failures} of {MAX_FAILURES})")
            await asyncio.sleep(delay)

    async def _run_once(self: Instance) -> int | None:
        """Spawn, pump output, probe readiness, wait for exit. None when it never ran."""
        self._intent = None
        self.ready_timed_out = False
        self.ready_how = None
        again = self.machine.begin_run()
        env = self._environment()
        argv = command_argv(self.spec.command, env)
        self._env = env  # what an exec probe runs with
        ready = self.conf.ready if self.conf is not None else None
        # Before the spawn: the log probe must see the very first line.
        self._log_probe = probes.LogProbe(ready.arg) if ready and ready.kind == "log" else None
        try:
            proc = await self._spawn_process(argv, env)
        except PreloadError as e:
            self.last_exit = f"preload failed: {e}"
            self.rt.sink.system(f"{self.name} failed: {self.last_exit}; fix preload in "
                                "devcluster.toml or remove it")
            self.pid = None
            self._set(State.FAILED)
            return None
        except OSError as e:
            self.last_exit = f"cannot run {argv[0]!r}: {e.strerror or e}"
            self.rt.sink.system(f"{self.name} failed: {self.last_exit}; fix the Procfile line")
            self.pid = None
            self._set(State.FAILED)
            return None
        self._proc, self.pid = proc, proc.pid
        self.rt.event(EventKind.STARTED, self.name, new=proc.pid, who=self.asker)
        if again:
            self.rt.event(EventKind.RESTARTED, self.name, new=self.restarts,
                          who=self.asker or "restart policy")
        if self.rt.watchdog is not None:
            self.rt.watchdog.track(proc.pid)
        try:
            self._ps = psutil.Process(proc.pid)
            self.started_at = self._ps.create_time()
            self._ps.cpu_percent(None)
        except psutil.Error:
            self._ps, self.started_at = None, time.time()
        self._apply(self.machine.spawned())
        how = "forked, preloaded" if isinstance(proc, Forked) else "pid"
        self.rt.sink.system(f"{self.name} started ({how} {proc.pid}): {self.spec.command}")
        async with asyncio.TaskGroup() as run:
            self._run_group = run
            pump = run.create_task(self._pump(proc))
            self._ready_task = run.create_task(self._become_ready(proc))
            returncode = await self._wait_exit(proc)
            self.rt.event(EventKind.EXITED, self.name, who=self.asker,
                          code=returncode if returncode >= 0 else None,
                          signal=process.describe_exit(returncode).removeprefix("signal ")
                          if returncode < 0 else None)
            self._ready_task.cancel()
            # The leader is gone; sweep whatever it left in its group and what it
            # daemonized out of it (adopted: we are a subreaper), then drain the pipe.
            process.signal_group(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(process.sweep, self.rt.ours(), self.name)
            if self.rt.watchdog is not None:
                self.rt.watchdog.forget(proc.pid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pump), 2.0)
            pump.cancel()
        self._run_group = None
        self.last_exit = process.describe_exit(returncode)
        return returncode

    def _environment(self: Instance) -> dict[str, str]:
        """The environment of this instance's next process."""
        return instance_environment(self.spec, str(Path(sys.executable).parent),
                                    self.conf.env if self.conf is not None else {},
                                    self.grace, self.port)

    def warm_preload(self: Instance) -> None:
        """Start the fork server of this instance's type now (a preloaded type): its
        imports then overlap the rest of the supervisor's start-up."""
        modules = self.conf.preload if self.conf is not None else ()
        if modules and self.rt.preload is not None:
            env = self._environment()
            self.rt.preload.warm(self.spec.process_type, modules,
                                 command_argv(self.spec.command, env), env, str(self.rt.cwd),
                                 self.ready_timeout)

    async def _spawn_process(self: Instance, argv: list[str],
                             env: dict[str, str]) -> process.Child:
        """Exec ``argv``, or fork it from its type's fork server (``preload``)."""
        modules = self.conf.preload if self.conf is not None else ()
        if modules and self.rt.preload is not None:
            return await self.rt.preload.spawn(self.spec.process_type, modules, argv, env,
                                               str(self.rt.cwd), self.ready_timeout, self.name)
        return await process.spawn(argv, env, str(self.rt.cwd))

    async def _wait_exit(self: Instance, proc: process.Child) -> int:
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

    async def _pump(self: Instance, proc: process.Child) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # a line over the limit: take what there is
                line = await proc.stdout.read(1 << 16)
            if not line:
                return
            text = line.decode("utf-8", "replace")
            self.recent.append(text.rstrip("\r\n"))
            self.rt.sink.line(self.name, text)
            self._news.set()  # a readiness probe napping between polls looks now
            if self._log_probe is not None:
                self._log_probe.feed(text)

    def _after_exit(self: Instance, returncode: int) -> float | None:
        """Set the state after an exit; return the restart delay, or None to stay down."""
        self._proc = None
        intent, self._intent = self._intent, None
        verdict = self.machine.exited(returncode, intent, time.monotonic())
        if verdict.reason == "asked":
            self.rt.sink.system(f"{self.name} {verdict.state.value} ({self.last_exit})")
        else:
            self.rt.sink.system(f"{self.name} exited by itself ({self.last_exit})")
        if verdict.state is State.FAILED:
            self.rt.sink.system(f"{self.name} failed {verdict.failures} times in a row; giving "
                                f"up (fix it, then `devcluster start {self.name}`)")
        return self._apply(core.commands(verdict))

    def _apply(self: Instance, commands: Sequence[core.Command]) -> float | None:
        """Carry out the core's commands; the backoff to sleep, if one was armed (the
        life cycle's loop sleeps it: a stop cancels that task)."""
        delay = None
        for command in commands:
            if isinstance(command, core.SetState):
                self._set(command.state)
            elif isinstance(command, core.ArmTimer):
                delay = command.seconds
        return delay
