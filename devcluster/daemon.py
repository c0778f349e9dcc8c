"""Wiring: the supervisor, its control plane and its state dir, for ``devcluster up``.

:func:`serve` is ``devcluster up`` (the CLI calls it in the foreground). The supervisor
knows nothing of the control plane; here the control server is given the supervisor
(which satisfies :class:`devcluster.control.plane.Supervised`) and both run inside the state
dir's lock. Leaving :func:`serve` always stops the instances, then the control server
(removing its socket), then releases the lock, whatever failed.

``python -m devcluster.daemon < SETTINGS_JSON`` is the background supervisor of ``up -d``
and of the Python API: no terminal (its own lines go to ``logs/devcluster.log``),
with the web console in a thread if asked (its URL, token included, in the state
dir's ``private/console.url``, 0600, and in the ready report's notes). It reports how start-up
went on a pipe as data: every instance in the one schema, or the error (type, message,
instance, last log lines). It skips the CLI's imports (typer, rich): its start-up is on
the path of every ``up -d``.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `up -d`: our instances, started before our exec, are ours;
    from devcluster.supervisor import early, preboot  # preloaded types' fork servers

    early.receive()
    preboot.begin(sys.argv[1:])  # import while we do

import asyncio
import contextlib
import importlib
import os
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, TextIO

from devcluster import defaults
from devcluster.config import procfile
from devcluster.config.project import XdsGroup, find_project
from devcluster.errors import CorruptRegistryError, DevclusterError, UsageError, to_payload
from devcluster.events import EventLog, fresh_log
from devcluster.exiting import exit_now
from devcluster.registry import FileRegistry, Registry, open_registry
from devcluster.registry.liveness import alive
from devcluster.statedir import Claim, hold_lock, write_replacing
from devcluster.supervisor import early, preboot, process
from devcluster.supervisor.drain import Watchers
from devcluster.supervisor.duty import Duty
from devcluster.supervisor.logfiles import Cap
from devcluster.supervisor.logs import LogSink
from devcluster.supervisor.request import ReadyReport, UpRequest
from devcluster.supervisor.runtime import Supervisor
from devcluster.supervisor.watchdog import Watchdog

if TYPE_CHECKING:
    from devcluster.control.server import ControlServer

#: Longest the exit path waits for queued registry writes before giving up on them.
_LAST_WRITES_WAIT = 2.0


class ReadyPipe:
    """The pipe to the ``up -d`` parent: one JSON line, written once, then closed."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def send(self, report: ReadyReport) -> None:
        """Write ``report`` (once; later reports are dropped) and close the pipe."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None  # once: the number may be reused after close
        with contextlib.suppress(OSError):
            os.write(fd, (report.to_json() + "\n").encode())
        with contextlib.suppress(OSError):
            os.close(fd)


async def serve(settings: UpRequest, console: TextIO | None, ready: ReadyPipe | None = None) -> int:
    """``devcluster up``: returns the exit status; user mistakes raise DevclusterError."""
    ready = ready or ReadyPipe(settings.ready_fd)
    host = _advertise_host()  # a bad value fails before anything starts
    process.watch_children_with_pidfds()
    types, env, specs = procfile.load(settings.procfile, settings.env_files, settings.scale,
                                      settings.base_port)
    for name in settings.restart:
        if name not in {t.name for t in types}:
            raise UsageError(f"--restart {name}=...: the Procfile has no process type "
                             f"{name!r}; types: {', '.join(t.name for t in types)}")
    where = defaults.layout(settings.state_dir)
    with hold_lock(settings.state_dir, settings.lock_fd) as claim:
        sink = LogSink(where.logs, console, cap=Cap(settings.log_max, settings.log_keep))
        events = fresh_log(settings.state_dir)  # one timeline per `up`; the last one kept
        try:
            await _run(settings, sink, types, env, specs, ready, claim, events, host)
            sink.system("bye")
        finally:
            events.close()
            sink.close()
    return 0


def _advertise_host() -> str:
    try:
        return defaults.advertise_host()
    except ValueError as e:
        raise UsageError(str(e)) from None


async def _run(settings: UpRequest, sink: LogSink, types: Sequence[procfile.ProcessType],
               env: dict[str, str], specs: Sequence[procfile.InstanceSpec],
               ready: ReadyPipe, claim: Claim, events: EventLog | None = None,
               host: str = defaults.ADVERTISE_HOST) -> None:
    registry: Registry
    notes: list[str] = []
    if settings.registry and settings.registry.startswith("etcd://"):
        registry = open_registry(settings.registry)  # stale records expire with leases
    else:
        registry = FileRegistry(settings.state_dir)
        notes = [n for n in [await asyncio.to_thread(clean_stale, registry, sink)] if n]
    if not preboot.asked_ahead() and not early.any_started():  # else checked before they
        # were started or asked for (devcluster.supervisor.early, preboot)
        _check_ports(specs)
    process.become_subreaper()  # what instances daemonize stays ours to find and stop
    watchdog = Watchdog(process.mark_entry())  # also kills what carries our mark
    sup = Supervisor(settings, registry, sink, types, env, specs, watchdog, events, host)
    sup.records.before_write = lambda: _check_claim(claim)
    keeper = _Keeper(claim, sup, sink, isinstance(registry, FileRegistry))
    xds = XdsPlane(settings, sink, sup.watchers, sup.stopping)
    try:
        # Queued before any spawn (the writer keeps order: it lands before their states);
        # awaited once they are spawned: a registry that cannot be written at start is
        # the user's error to see.
        reset = sup.records.reset(i.record() for i in sup.instances.values())

        control = _ControlPlane(sup, keeper, settings)

        async def started() -> None:
            if left := early.discard():  # started early, but no first start took them
                sink.system(f"stopped {len(left)} instance(s) started early for another "
                            f"command line (pids {', '.join(map(str, left))})")
            await asyncio.wrap_future(reset)
            control.begin_by(defaults.CONTROL_START_LATEST)

        async def settled() -> None:
            # Once every instance settled: the control plane's imports (grpc's server, our
            # protos) competed with the instances' own start-up for the CPU; `up -d`
            # returns with it serving, so `ps` and every verb work at once.
            await control.start()
            infos = await sup.infos()
            ready.send(ReadyReport(instances={i.name: i.to_dict() for i in infos},
                                   notes=tuple(notes), stopped_by=sup.stopped_by))
            # After the report: envoy's protos are our heaviest imports (~75 ms of CPU);
            # `devcluster xds` and Cluster.xds() wait for its bootstrap meanwhile.
            xds.begin()

        try:
            async with _web_console(settings, notes):
                await sup.run(settled, [("keeping the state dir", keeper.run), *_watcher(sup)],
                              on_started=started)
        finally:  # both at once: each takes a few ms
            await asyncio.gather(xds.stop(remove=not keeper.lost),
                                 control.stop(remove=not keeper.lost))
    finally:
        sup.force()  # nothing outlives us, whatever failed
        await sup.preload.close()
        if not await asyncio.to_thread(sup.records.close, _LAST_WRITES_WAIT):
            sink.system("registry writes still pending at exit; left undone")
        watchdog.close()
        with contextlib.suppress(Exception):
            registry.close()  # etcd: revoke the lease, so our records go at once


async def import_aside(*modules: str) -> None:
    """Import ``modules`` in a thread, so the loop goes on meanwhile: the control and
    xDS servers' imports (grpc's server, envoy's protos) take 50-300 ms of CPU, which
    would stall every instance's log pump and health check; an import in a thread
    yields the GIL every switch interval."""
    def load() -> None:
        for name in modules:
            importlib.import_module(name)

    await asyncio.to_thread(load)


def _watcher(sup: Supervisor) -> list[tuple[str, Duty]]:
    """``up --watch``: the file watcher, a duty of the cluster (none without --watch)."""
    if sup.settings.watch is None:
        return []
    from devcluster.supervisor.watch import Watcher

    return [("the file watcher", Watcher(sup, sup.settings.watch).run)]


@contextlib.asynccontextmanager
async def _web_console(settings: UpRequest, notes: list[str]) -> AsyncIterator[None]:
    """The web console (``up -d --console``) in a thread of this process, for as long as
    the cluster runs; started after the control plane, whose verbs it calls."""
    if not settings.console:
        yield
        return
    from devcluster.console import Console

    console = Console(settings.state_dir, settings.registry, port=settings.console_port,
                      port_option="--console-port")
    path = defaults.layout(settings.state_dir).console_url
    try:
        url = await asyncio.to_thread(console.start)
        # By rename, 0600 (the token is a key): a planted link is replaced, not followed.
        await asyncio.to_thread(write_replacing, path, url + "\n", 0o600)
        notes.append(f"console: {url}")
        yield
    finally:
        await asyncio.to_thread(console.stop)
        with contextlib.suppress(OSError):
            path.unlink()


class XdsPlane:
    """The cluster's xDS control plane: ADS on 127.0.0.1 (a free port), following the
    registry (either backend), and the bootstrap file that tells any gRPC client where
    it is. Started once the cluster is ready (its imports would slow the first health
    checks); a bootstrap left by a crashed run is removed at once, so nobody reads a
    stale one meanwhile. A failure is said and the cluster runs on without it."""

    def __init__(self, settings: UpRequest, sink: LogSink, watchers: Watchers | None = None,
                 stopping: asyncio.Event | None = None) -> None:
        self.settings, self.sink = settings, sink
        #: Set as the whole cluster's shutdown begins: the server stops following the
        #: registry then (its clients have nowhere left to go).
        self.stopping = stopping
        #: A stop waits until the xDS streams ACKed its `draining` too (supervisor.drain).
        self.watchers = watchers
        self.path = defaults.layout(settings.state_dir).xds_bootstrap
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task[None] | None = None
        with contextlib.suppress(OSError):
            self.path.unlink()  # a crashed run's: its port is not ours

    def begin(self) -> None:
        self._task = asyncio.ensure_future(self._start_bounded())

    async def _start_bounded(self) -> None:
        """Start it (bounded); say why not, once, if it cannot."""
        try:
            await asyncio.wait_for(self._start(), defaults.XDS_START_WAIT)
        except Exception as e:  # an aid: the cluster runs without it
            self.sink.system(f"xDS: not serving ({e!r}); the cluster runs without it")

    async def _start(self) -> None:
        await import_aside("devcluster.xds.server", "devcluster.xds.bootstrap")
        from devcluster.xds.bootstrap import write_bootstrap
        from devcluster.xds.resources import Group, Options
        from devcluster.xds.server import serve

        spec = self.settings.registry
        # A registry object of its own: the xDS watch runs in a thread of its own.
        registry = (open_registry(spec) if spec and spec.startswith("etcd://")
                    else FileRegistry(self.settings.state_dir))
        groups = {name: Group(g.types, g.where) for name, g in self._groups().items()}
        server = await self._stack.enter_async_context(
            serve(registry, options=Options(groups=groups), until=self.stopping))
        if self.watchers is not None:
            self.watchers.add(server)
            self._stack.callback(self.watchers.remove, server)
        await asyncio.to_thread(write_bootstrap, self.path, server.port, groups=groups)
        self.sink.system(f"xDS: ADS on 127.0.0.1:{server.port}; clients: "
                         f"GRPC_XDS_BOOTSTRAP={self.path} (see `devcluster xds`)")

    def _groups(self) -> Mapping[str, XdsGroup]:
        """The ``[xds.<name>]`` groups of the cluster's devcluster.toml (checked by up)."""
        project = find_project(self.settings.procfile, self.settings.config)
        return project.xds if project is not None else {}

    async def stop(self, remove: bool = True) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if remove:
            with contextlib.suppress(OSError):
                self.path.unlink()
        with contextlib.suppress(Exception):
            await self._stack.aclose()


class StateDirLostError(DevclusterError):
    """The state dir this supervisor locked is gone or belongs to another run now."""


def _check_claim(claim: Claim) -> None:
    if not claim.mine():
        raise StateDirLostError(f"the state dir {claim.state_dir} is not this supervisor's "
                                "any more (deleted or taken by another run); not writing")


class _ControlPlane:
    """The control server (``ps``, verbs, ``down``): started once every instance settled,
    or after ``latest`` seconds of a slow start (``down`` must reach a cluster that is
    still starting; its client waits for the socket meanwhile)."""

    def __init__(self, sup: Supervisor, keeper: _Keeper, settings: UpRequest) -> None:
        self.sup, self.keeper, self.settings = sup, keeper, settings
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def begin_by(self, latest: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(latest, self._begin)

    def _begin(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.ensure_future(self._serve())
        return self._task

    async def start(self) -> None:
        await asyncio.shield(self._begin())

    async def _serve(self) -> None:
        await import_aside("devcluster.control.server")
        from devcluster.control.server import ControlServer

        server = ControlServer(self.sup, defaults.layout(self.settings.state_dir))
        await server.start()
        self.keeper.control = server

    async def stop(self, remove: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task}, timeout=5.0)  # a start under way ends first
        if self.keeper.control is not None:
            await self.keeper.control.stop(remove=remove)


class _Keeper:
    """Keeps the state dir usable while the cluster runs: a deleted dir, lock, socket or
    registry is re-created within a second, so `ps` and `down` keep working; a dir
    another supervisor took meanwhile is left alone, and this cluster stops."""

    def __init__(self, claim: Claim, sup: Supervisor, sink: LogSink, file_registry: bool) -> None:
        self.claim = claim
        self.sup = sup
        self.sink = sink
        self.file_registry = file_registry
        self.control: ControlServer | None = None
        self.lost = False

    async def run(self) -> None:
        # Polls: nothing tells a process that a directory it does not watch was deleted
        # (watching it would not see its own deletion reliably either). A stat or two
        # every 0.2 s costs nothing measurable.
        while not self.lost:
            await asyncio.sleep(0.2)
            await self.check()

    async def check(self) -> None:
        if self.sup.stopping.is_set():
            return  # shutting down: a deleted state dir is not re-created any more
        where = defaults.layout(self.claim.state_dir)
        if not self.claim.mine():
            if not await asyncio.to_thread(self.claim.retake):
                self.lost = True
                self.sink.system("the state dir was re-created by another supervisor; "
                                 "stopping this cluster without touching that run's files")
                self.sup.request_shutdown(who="the state dir belongs to another run")
                return
            self.sink.reopen()
            if self.sup.rt.events is not None:
                self.sup.rt.events.reopen()
            self.sink.system("the state dir was deleted; re-created its lock, control socket, "
                             "registry and logs")
        again = self.sink.refresh()
        if again:
            self.sink.system(f"log file(s) deleted: {', '.join(again)}; writing new ones")
        if self.control is not None and self.control.missing():
            await self.control.restore()
        if self.file_registry and not where.registry.exists():
            self.sup.records.rewrite("the registry file was deleted")


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


def _check_ports(specs: Sequence[procfile.InstanceSpec]) -> None:
    # Only commands that use $PORT bind it; the demo's `--port 50051` lines do not.
    wanted = [s for s in specs if s.port and "PORT" in s.command]
    owners = process.ports_taken({s.port for s in wanted}) if wanted else {}
    taken = [(s, owners[s.port]) for s in wanted if s.port in owners]
    if taken:
        spec, owner = taken[0]
        error = DevclusterError(
            f"port {spec.port} for {spec.name} is already in use by {owner}; stop it or "
            "choose another base with --port")
        error.instance = spec.name
        raise error


def main(argv: list[str]) -> int:
    """The request (:meth:`UpRequest.to_json`) on stdin (or, for hand use, as the one argument).

    A leading ``--state-dir DIR`` is a label for whoever looks at the process list."""
    if argv[:1] == ["--state-dir"]:
        argv = argv[2:]
    text = argv[0] if argv else preboot.settings_text() or sys.stdin.read()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the settings pipe is done with; instances must not inherit it
    os.close(null)
    settings = UpRequest.from_json(text)
    ready = ReadyPipe(settings.ready_fd)
    try:
        code = asyncio.run(serve(settings, None, ready))
    except DevclusterError as e:
        ready.send(ReadyReport(error=to_payload(e)))
        print(f"devcluster: error: {e}", file=sys.stderr, flush=True)  # for post-mortems
        return e.exit_code
    except Exception as e:
        ready.send(ReadyReport(error=to_payload(e)))
        raise  # the traceback goes to logs/supervisor.out
    exit_now(code)  # every instance, file and socket is closed: skip the teardown


def run_forked(text: str) -> int:
    """:func:`main` in a process forked from the CLI (:mod:`devcluster.daemonfork`): the
    same first steps as ``python -m devcluster.daemon`` takes before its imports."""
    early.receive()
    preboot.begin([text])
    return main([text])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
