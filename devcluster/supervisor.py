"""The supervisor: runs every instance of a Procfile until told to stop.

It owns the instances (each changes its own state), the registry's records, the
control socket and the signal handlers. ``run(settings)`` is ``devcluster up``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from devcluster import process, procfile
from devcluster.errors import CorruptRegistryError, UnknownInstanceError
from devcluster.instance import DRAIN_DELAY, Instance, Policy, Runtime
from devcluster.logs import LogSink
from devcluster.registry import FileRegistry, Registry, State, open_registry
from devcluster.registry.liveness import alive
from devcluster.statedir import hold_lock, socket_path
from devcluster.watchdog import Watchdog


@dataclass(frozen=True)
class Settings:
    """Everything ``devcluster up`` was asked for."""

    procfile: Path
    state_dir: Path
    env_files: tuple[Path, ...] = ()
    scale: dict[str, int] = field(default_factory=dict)
    base_port: int = procfile.DEFAULT_BASE_PORT
    grace: float = 5.0
    ready_timeout: float = 30.0
    restart: dict[str, Policy] = field(default_factory=dict)
    ready_fd: int | None = None
    """A pipe to write one JSON line to once every instance has settled (``up -d``)."""
    registry: str | None = None
    """``etcd://host:port/prefix`` to register into etcd; None: the state dir's file."""
    lifeline_fd: int | None = None
    """A pipe whose other end the starting process holds: EOF (it exited, however it
    died) shuts the cluster down gracefully. Unlike PDEATHSIG it is not tied to the
    thread that started us."""


class Supervisor:
    """The running cluster. Build with :meth:`create`; serve with :meth:`run`."""

    def __init__(self, settings: Settings, registry: Registry, sink: LogSink,
                 types: Sequence[procfile.ProcessType], env: dict[str, str],
                 specs: Sequence[procfile.InstanceSpec], watchdog: Watchdog | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.sink = sink
        self.types = {t.name: t for t in types}
        self.type_order = [t.name for t in types]
        self.env = env
        self.rt = Runtime(registry, sink, settings.procfile.parent.resolve(), settings.grace,
                          settings.ready_timeout, watchdog)
        self.instances: dict[str, Instance] = {}
        for spec in specs:
            self._add(spec)
        self.stopping = asyncio.Event()
        self.done = asyncio.Event()
        self._interrupts = 0
        self.started = time.monotonic()
        # scale and reload add and remove instances across awaits: one at a time.
        self._membership = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<Supervisor {self.settings.procfile} {len(self.instances)} instances>"

    def _add(self, spec: procfile.InstanceSpec) -> Instance:
        policy = self.settings.restart.get(spec.process_type, Policy.ON_FAILURE)
        inst = Instance(spec, policy, self.rt)
        self.instances[spec.name] = inst
        self.sink.widen(spec.name)
        return inst

    # -- lookup ------------------------------------------------------------------------

    def select(self, names: Iterable[str], all_: bool = False) -> list[Instance]:
        """Instances named, or all of a process type, or every one; unknown -> error."""
        if all_:
            return list(self.instances.values())
        chosen: dict[str, Instance] = {}
        for name in names:
            if name in self.instances:
                chosen[name] = self.instances[name]
                continue
            of_type = [i for i in self.instances.values() if i.spec.process_type == name]
            if not of_type:
                raise UnknownInstanceError(name, list(self.instances))
            chosen.update((i.name, i) for i in of_type)
        return list(chosen.values())

    # -- whole cluster -----------------------------------------------------------------

    def start_all(self) -> None:
        for inst in self.instances.values():
            inst.start()

    async def wait_settled(self, timeout: float) -> bool:
        """Wait until every instance is serving or has given up."""
        deadline = time.monotonic() + timeout
        for inst in list(self.instances.values()):
            if not await inst.wait_until(lambda i: i.settled, max(0.0, deadline - time.monotonic())):
                return False
        return True

    async def shutdown(self, grace: float | None = None, who: str = "signal") -> None:
        """Drain every instance in one registry write, then stop them all gracefully."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.sink.system(f"shutting down ({who}): draining {len(self.instances)} instances")
        running = [i for i in self.instances.values() if i.running]
        with contextlib.suppress(Exception):
            self.registry.update_many({i.name: {"state": State.DRAINING.value} for i in running})
        began = time.monotonic()
        await asyncio.gather(*(i.stop(grace, announce=False) for i in self.instances.values()))
        self.sink.system(f"all instances stopped in {1000 * (time.monotonic() - began):.0f} ms")
        self.done.set()

    def force(self) -> None:
        """Second Ctrl-C: SIGKILL every process group now."""
        self.sink.system("forced shutdown: SIGKILL to every instance")
        for inst in self.instances.values():
            inst.force_kill()

    async def reload(self) -> None:
        async with self._membership:
            await self._reload()

    async def _reload(self) -> None:
        """SIGHUP: re-read the Procfile; start added types, stop removed ones, restart
        instances whose command or environment changed. A bad Procfile changes nothing."""
        from devcluster.errors import DevclusterError

        st = self.settings
        try:
            types, env, specs = procfile.load(st.procfile, st.env_files, st.scale, st.base_port)
        except DevclusterError as e:
            self.sink.system(f"reload refused: {e}; the cluster keeps running as it was")
            return
        wanted = {s.name: s for s in specs}
        self.types, self.type_order, self.env = {t.name: t for t in types}, \
            [t.name for t in types], env
        removed = [i for n, i in self.instances.items() if n not in wanted]
        changed = [i for n, i in self.instances.items()
                   if n in wanted and (wanted[n].command, dict(wanted[n].env))
                   != (i.spec.command, dict(i.spec.env))]
        added = [s for n, s in wanted.items() if n not in self.instances]
        self.sink.system(f"reload: {len(added)} added, {len(removed)} removed, "
                         f"{len(changed)} changed")
        await asyncio.gather(*(i.stop(drain=DRAIN_DELAY) for i in removed + changed))
        for inst in removed:
            self.instances.pop(inst.name)
            self.registry.deregister(inst.name)
        for inst in changed:
            fresh = self._add(wanted[inst.name])
            fresh.restarts = inst.restarts + 1
            fresh.start()
        for spec in added:
            inst = self._add(spec)
            self.registry.register(inst.record())
            inst.start()

    def on_signal(self, sig: signal.Signals) -> None:
        """Signal handler: only schedules work (first: graceful, second: forced)."""
        if sig is signal.SIGHUP:
            if not self.stopping.is_set():
                asyncio.get_running_loop().create_task(self.reload())
            return
        self._interrupts += 1
        if self._interrupts == 1:
            asyncio.get_running_loop().create_task(self.shutdown(who=sig.name))
        else:
            self.force()

    async def scale(self, counts: dict[str, int]) -> list[Instance]:
        async with self._membership:
            return await self._scale(counts)

    async def _scale(self, counts: dict[str, int]) -> list[Instance]:
        """Set the number of instances of process types; returns those added or removed.

        Shrinking stops the highest-numbered instances gracefully and forgets them;
        growing adds instances with the next names (``greeter.4``) and ports.
        """
        for ptype in counts:
            if ptype not in self.types:
                raise UnknownInstanceError(ptype, self.type_order)
        changed: list[Instance] = []
        for ptype, wanted in counts.items():
            mine = sorted((i for i in self.instances.values() if i.spec.process_type == ptype),
                          key=lambda i: _number(i.name))
            extra = mine[wanted:]
            await asyncio.gather(*(i.stop(drain=DRAIN_DELAY) for i in extra))
            for inst in extra:
                self.instances.pop(inst.name)
                self.registry.deregister(inst.name)
                changed.append(inst)
            index = self.type_order.index(ptype)
            number = max((_number(i.name) for i in mine[:wanted]), default=0)
            for _ in range(wanted - len(mine)):
                number += 1
                spec = procfile.instance_spec(self.types[ptype], f"{ptype}.{number}", index,
                                              number, self.settings.base_port, self.env)
                inst = self._add(spec)
                self.registry.register(inst.record())
                inst.start()
                changed.append(inst)
        return changed


def _number(name: str) -> int:
    _, _, n = name.rpartition(".")
    return int(n) if n.isdigit() else 1


def clean_stale(registry: FileRegistry, sink: LogSink) -> str | None:
    """Say what a crashed run left behind, kill leftovers, and start from a fresh registry.

    Returns the note (also logged) so ``up -d`` can show it to the user.
    """
    try:
        snap = FileRegistry(registry.state_dir, check_liveness=False).snapshot()
    except CorruptRegistryError as e:
        kept = registry.recover()
        note = f"{e}; kept it as {kept.name if kept else '?'} and started a fresh one"
        sink.system(note)
        return note
    stale = [r for r in snap.records.values() if r.state.running]
    if not stale:
        return None
    killed = []
    for rec in stale:
        if rec.pid and rec.started_at and alive(rec.pid, rec.started_at):
            process.signal_group(rec.pid, signal.SIGKILL)
            killed.append(f"{rec.name} (pid {rec.pid})")
    names = ", ".join(r.name for r in stale)
    note = (f"cleaned stale state of a crashed run: {names}"
            + (f"; killed leftover {', '.join(killed)}" if killed else ""))
    sink.system(note)
    return note


def write_ready(fd: int | None, sup: Supervisor, notes: list[str]) -> None:
    """Tell the ``up -d`` parent the outcome (one JSON line), then close the pipe."""
    if fd is None:
        return
    instances = {name: {"state": i.state.value, "address": i.address,
                        "service": i.spec.service, "pid": i.pid, "restarts": i.restarts,
                        "started_at": i.started_at, "last_exit": i.last_exit,
                        "ready_timed_out": i.ready_timed_out}
                 for name, i in sup.instances.items()}
    payload = {"instances": instances, "notes": notes}
    with contextlib.suppress(OSError):
        os.write(fd, (json.dumps(payload) + "\n").encode())
        os.close(fd)


async def serve(settings: Settings, console: TextIO | None) -> int:
    """``devcluster up`` in the foreground: returns the exit status."""
    from devcluster.control import ControlServer

    types, env, specs = procfile.load(settings.procfile, settings.env_files, settings.scale,
                                      settings.base_port)
    for name in settings.restart:
        if name not in {t.name for t in types}:
            raise UnknownInstanceError(name, [t.name for t in types])
    with hold_lock(settings.state_dir):
        sink = LogSink(settings.state_dir / "logs", console)
        registry: Registry
        if settings.registry and settings.registry.startswith("etcd://"):
            registry = open_registry(settings.registry)  # stale records expire with leases
            notes: list[str] = []
        else:
            registry = FileRegistry(settings.state_dir)
            notes = [n for n in [clean_stale(registry, sink)] if n]
        _check_ports(specs)
        watchdog = Watchdog()
        sup = Supervisor(settings, registry, sink, types, env, specs, watchdog)
        registry.reset(i.record() for i in sup.instances.values())
        loop = asyncio.get_running_loop()
        control = ControlServer(sup, socket_path(settings.state_dir))
        await control.start()
        with _signals(loop, sup), _lifeline(loop, sup, settings.lifeline_fd):
            began = time.monotonic()
            sup.start_all()
            settled = asyncio.create_task(sup.wait_settled(settings.ready_timeout + 60))
            stop_wait = asyncio.create_task(sup.stopping.wait())
            await asyncio.wait({settled, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            if settled.done():
                _report_ready(sup, time.monotonic() - began)
            write_ready(settings.ready_fd, sup, notes)
            await sup.done.wait()
        await control.stop()
        watchdog.close()
        registry.close()  # etcd: revoke the lease, so our records go at once
        sink.system("bye")
        sink.close()
    return 0


def _report_ready(sup: Supervisor, seconds: float) -> None:
    serving = [i for i in sup.instances.values() if i.state is State.SERVING]
    others = [f"{i.name} {i.state.value}" for i in sup.instances.values()
              if i.state is not State.SERVING]
    line = f"ready: {len(serving)}/{len(sup.instances)} serving in {seconds:.2f} s"
    sup.sink.system(line + (f" (not serving: {', '.join(others)})" if others else ""))


def _check_ports(specs: Sequence[procfile.InstanceSpec]) -> None:
    from devcluster.errors import DevclusterError

    # Only commands that use $PORT bind it; the demo's `--port 50051` lines do not.
    taken = [(s, owner) for s in specs if s.port and "PORT" in s.command
             and (owner := process.port_owner(s.port))]
    if taken:
        spec, owner = taken[0]
        raise DevclusterError(
            f"port {spec.port} for {spec.name} is already in use by {owner}; stop it or "
            "choose another base with --port")


@contextlib.contextmanager
def _lifeline(loop: asyncio.AbstractEventLoop, sup: Supervisor, fd: int | None) -> Iterator[None]:
    """Shut down when the process that started us is gone (its pipe end closes)."""
    if fd is None:
        yield
        return

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            loop.create_task(sup.shutdown(who="the process that started the cluster exited"))

    loop.add_reader(fd, readable)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        os.close(fd)


@contextlib.contextmanager
def _signals(loop: asyncio.AbstractEventLoop, sup: Supervisor) -> Iterator[None]:
    """Install SIGINT/SIGTERM/SIGHUP handlers for the run; restore the old ones after."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.getsignal(s) for s in sigs}
    for s in sigs:
        loop.add_signal_handler(s, sup.on_signal, s)
    try:
        yield
    finally:
        for s in sigs:
            loop.remove_signal_handler(s)
            signal.signal(s, old[s])

