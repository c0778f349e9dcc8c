"""The Python API: :class:`Cluster`, what the CLI, the pytest plugin and scripts use.

>>> with Cluster("Procfile", scale={"greeter": 3}, port=0) as cluster:   # doctest: +SKIP
...     stub = GreeterStub(cluster.channel("greeter"))
...     cluster.kill("greeter.2")
...     cluster.weight("greeter.1", 5)

The supervisor runs as a separate process (``devcluster up`` in the background), so a
cluster outlives nothing it should not: with ``owned=True`` (the default for the API)
it dies with the Python process that started it, and its instances die with it.
Instances are :class:`~devcluster.schema.InstanceInfo` objects (``to_dict()`` gives the
``ps --json`` shape).
Starting it: :mod:`devcluster.launch`; reaching a cluster without one: :mod:`devcluster.control.access`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self, TypedDict, overload

from devcluster import defaults
from devcluster.config import procfile as procfile_mod
from devcluster.config.project import Resolved
from devcluster.control.access import (  # public here since the beginning
    control_client,
    instance_dict,
    instance_info,
    set_metadata,
    set_weight,
)
from devcluster.errors import (
    ClusterRunningError,
    DevclusterError,
    NoClusterError,
    NotReadyError,
    UsageError,
    from_payload,
)
from devcluster.launch import (
    Ask,
    Launcher,
    longest_grace,
    resolve,
)
from devcluster.registry import Registry, Snapshot, State, open_registry
from devcluster.registry.record import parse_weight
from devcluster.schema import InstanceInfo
from devcluster.serving import not_ready_message, require_serving
from devcluster.statedir import layout, running_pid

if TYPE_CHECKING:
    from typing import Unpack

    from devcluster.client.aio import AioBalancedChannel
    from devcluster.client.channel import BalancedChannel
    from devcluster.client.options import ChannelOptions
    from devcluster.control.plane import ControlClient
    from devcluster.events import Event
    from devcluster.xds.bootstrap import ClientSetup

__all__ = [
    "STATE_DIR_NAME",
    "Cluster",
    "ClusterOptions",
    "FaultSet",
    "NotReadyError",
    "ReloadError",
    "control_client",
    "default_state_dir",
    "instance_dict",
    "parse_weight",
    "set_metadata",
    "set_weight",
]

STATE_DIR_NAME = defaults.STATE_DIR_NAME
#: Longest ``weight``/``enable``/``disable`` wait for the change to reach the timeline.
_TIMELINE_WAIT = 2.0

def default_state_dir(procfile: Path, state_dir: str | Path | None = None) -> Path:
    """``--state-dir`` > ``$DEVCLUSTER_HOME`` > ``.devcluster`` beside the Procfile."""
    return defaults.state_dir(procfile, state_dir)


class ClusterOptions(TypedDict, total=False):
    """The keyword arguments of :class:`Cluster` that :meth:`Cluster.attach` passes on."""

    scale: Mapping[str, int] | None
    state_dir: str | Path | None
    port: int | None
    grace: float | None
    env_files: Sequence[str | Path]
    restart: Mapping[str, str] | None
    ready_timeout: float | None
    registry: str | None
    watch: Sequence[str | Path] | None
    console: bool
    console_port: int
    config: str | Path | None


class ReloadError(DevclusterError):
    """A reload stopped: a replacement did not serve (the old instance keeps serving) or
    the files are bad (then nothing changed). ``result`` is what the reload did."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result
        self.instance = result.get("failed")
        self.log = tuple(result.get("log", ()))
        if result.get("usage_error"):
            self.exit_code = 2


class Cluster:
    """A devcluster cluster: start it, play with its instances, stop it."""

    def __init__(
        self,
        procfile: str | Path = "Procfile",
        *,
        scale: Mapping[str, int] | None = None,
        state_dir: str | Path | None = None,
        port: int | None = None,
        grace: float | None = None,
        env_files: Sequence[str | Path] = (),
        restart: Mapping[str, str] | None = None,
        ready_timeout: float | None = None,
        owned: bool = True,
        registry: str | None = None,
        watch: Sequence[str | Path] | None = None,
        console: bool = False,
        console_port: int = 0,
        config: str | Path | None = None,
        attach: bool | None = None,
    ) -> None:
        """``port``, ``grace``, ``ready_timeout``, ``scale``, ``restart`` and ``registry``
        override ``devcluster.toml`` (``config``, else the one beside the Procfile if
        any); None (not given) keeps the file's value, else devcluster's default.

        ``owned=True`` (the default): this process owns the cluster, which stops when
        this process ends, however it ends. ``owned=False``: the cluster outlives it
        (``devcluster up -d``), until ``down()`` or ``devcluster down``. ``attach`` is
        the old, deprecated spelling of ``owned`` (it read as :meth:`attach`, which
        does the opposite: reach a cluster this process does not own).
        """
        if attach is not None:
            warnings.warn("Cluster(attach=...) is deprecated: use Cluster(owned=...) (the "
                          "cluster dies with this process); Cluster.attach() reaches a "
                          "running one", DeprecationWarning, stacklevel=2)
            owned = attach
        self.procfile = Path(procfile).absolute()
        self.state_dir = default_state_dir(self.procfile, state_dir)
        self.scale_counts = dict(scale or {})
        self.port = port
        self.grace = defaults.GRACE if grace is None else grace
        self._flags = (port, grace, ready_timeout, registry)
        self.env_files = tuple(Path(p) for p in env_files)
        self.restart_policies = dict(restart or {})
        self.ready_timeout = defaults.READY_TIMEOUT if ready_timeout is None else ready_timeout
        #: Whether the cluster dies with this process (the constructor's ``owned``).
        self.tied = owned
        self.config = None if config is None else Path(config).absolute()
        #: ``etcd://...`` (or ``$DEVCLUSTER_REGISTRY``); None: the state dir's file
        #: (or the project file's ``[cluster] registry``, known once :meth:`up` read it).
        self.registry_url = defaults.registry_url(registry)
        #: Reload when these paths change (``up --watch``); empty: the Procfile's dir.
        self.watch = None if watch is None else tuple(Path(p).absolute() for p in watch)
        #: Serve the web console inside the supervisor (its URL: :attr:`console_url`).
        self.console = console
        self.console_port = console_port
        #: What :meth:`up` runs: flags over the project file (None before it).
        self.resolved: Resolved | None = None
        #: The daemon process (up) and its lifeline: started by up, waited for by down.
        self._launcher = Launcher()
        #: What the supervisor reported while starting (e.g. stale state it cleaned).
        self.notes: list[str] = []
        self._registry: Registry | None = None

    def __repr__(self) -> str:
        return f"<Cluster {self.procfile} state_dir={self.state_dir}>"

    @property
    def owned(self) -> bool:
        """Whether the cluster stops when this process ends (the constructor's ``owned``)."""
        return self.tied

    def _resolve(self) -> Resolved:
        """Flags over ``devcluster.toml`` (a bad file raises here: nothing has started)."""
        resolved = self.resolved = resolve(self.procfile, self.config, self._flags,
                                           self.scale_counts, self.restart_policies)
        self.grace = longest_grace(resolved)  # what down() waits (+10 s)
        self.ready_timeout = resolved.ready_timeout
        self.registry_url = resolved.registry
        return resolved

    @classmethod
    def attach(cls, where: str | Path = "Procfile", **options: Unpack[ClusterOptions]) -> Self:
        """The Cluster of a supervisor that already runs (``devcluster up -d``, another
        process): ``where`` is its state dir or its Procfile. Do not call ``up()`` on it;
        ``down()`` stops it through its control plane. NoClusterError when none runs.

        >>> cluster = Cluster.attach(".devcluster")                  # doctest: +SKIP
        >>> cluster.kill("server2"); cluster.events()[-1].describe()  # doctest: +SKIP
        """
        path = Path(where)
        if path.is_dir():
            options["state_dir"] = path
            with control_client(path.absolute()) as control:
                path = Path(control.ps().procfile)
        cluster = cls(path, owned=False, **options)
        if running_pid(cluster.state_dir) is None:
            raise NoClusterError(f"no cluster running in {cluster.state_dir}; start one with "
                                 "`devcluster up -d`")
        return cluster

    # -- life cycle --------------------------------------------------------------------

    def up(self) -> dict[str, dict[str, Any]]:
        """Start the supervisor in the background; return once every instance settled.

        Raises NotReadyError (cluster left running) when some instance does not serve.
        """
        resolved = self._resolve()
        types, _, _ = procfile_mod.load(self.procfile, self.env_files, resolved.scale,
                                        resolved.port)
        for name in self.restart_policies:
            if name not in {t.name for t in types}:
                raise UsageError(f"--restart {name}=...: the Procfile has no process type "
                                 f"{name!r}; types: {', '.join(t.name for t in types)}")
        pid = running_pid(self.state_dir)
        if pid is not None:
            raise ClusterRunningError(
                f"a cluster is already running in {self.state_dir} (supervisor pid {pid}); "
                "stop it with `devcluster down` or use another --state-dir")
        report = self._launcher.start(
            Ask(self.procfile, self.state_dir, self.env_files, self.config, self.tied,
                self.watch, self.console, self.console_port), resolved)
        if report.error is not None:  # the daemon could not start: its error, as data
            raise from_payload(report.error)
        states = {name: dict(info) for name, info in report.instances.items()}
        self.notes = list(report.notes)
        if report.stopped_by:  # `down` (or a signal) while it started
            raise DevclusterError(f"the cluster was stopped while it started (asked by "
                                  f"{report.stopped_by}); its instances are stopping")
        bad = {n: s for n, s in states.items() if s["state"] != State.SERVING.value}
        if bad:
            raise NotReadyError(not_ready_message(self.state_dir, bad), states)
        return states

    def down(self, grace: float | None = None) -> None:
        """Stop every instance gracefully and the supervisor; no-op when none runs."""
        try:
            with control_client(self.state_dir) as control:
                control.down(grace)
        except NoClusterError:
            pass
        self._launcher.wait((self.grace if grace is None else grace) + 10)
        if self._registry is not None:
            self._registry.close()

    def __enter__(self) -> Self:
        """``up()``; a cluster that fails to start is stopped before the error is raised."""
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        """``down()``."""
        self.down()

    # -- looking -----------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        """The cluster's registry (the state dir's file, or etcd), opened on first use.

        >>> cluster.registry.snapshot().usable("greeter")   # doctest: +SKIP
        """
        if self._registry is None:
            self._registry = open_registry(self.registry_url or self.state_dir)
        return self._registry

    @property
    def console_url(self) -> str | None:
        """The web console's URL, token included (``console=True``); None when it has none."""
        try:
            return layout(self.state_dir).console_url.read_text().strip() or None
        except FileNotFoundError:
            return None

    def xds(self) -> ClientSetup:
        """How any gRPC client follows this cluster over xDS: ``bootstrap`` (the file for
        ``$GRPC_XDS_BOOTSTRAP``), ``server_uri``, ``listeners`` (dial ``xds:///NAME``) and
        ``bootstrap_config`` (the same, inline). NoClusterError when none runs.

        >>> os.environ["GRPC_XDS_BOOTSTRAP"] = cluster.xds().bootstrap   # doctest: +SKIP
        >>> grpc.insecure_channel("xds:///greeter")                      # doctest: +SKIP
        """
        from devcluster.xds.bootstrap import running_setup

        return running_setup(self.state_dir, self.registry)

    def control(self) -> ControlClient:
        """A client of the supervisor's control plane (close it, or use ``with``);
        NoClusterError when no supervisor runs.

        >>> with cluster.control() as control:                 # doctest: +SKIP
        ...     control.ps().procfile
        """
        return control_client(self.state_dir)

    def ps(self) -> list[InstanceInfo]:
        """Every instance, as ``devcluster ps`` shows it (``.to_dict()``: ``ps --json``).

        >>> [(i.name, i.state) for i in cluster.ps()]          # doctest: +SKIP
        [('greeter.1', 'serving'), ('greeter.2', 'serving')]
        """
        with self.control() as control:
            return [instance_info(i) for i in control.ps().instances]

    @property
    def instances(self) -> list[InstanceInfo]:
        """Every instance now (the same as :meth:`ps`)."""
        return self.ps()

    def instance(self, name: str) -> InstanceInfo:
        """The instance named ``name``; UnknownInstanceError if the cluster has none."""
        instances = self.ps()
        for info in instances:
            if info.name == name:
                return info
        from devcluster.errors import UnknownInstanceError

        raise UnknownInstanceError(name, [i.name for i in instances])

    def logs(self, name: str | None = None, n: int = 50) -> list[str]:
        """The last ``n`` lines of an instance's log (or of the merged view of every log:
        the supervisor's lines and every instance's, in the order they were written).
        What the instances wrote before the call is in it: it waits (at most
        ``LOG_READ_WAIT``, 1 s) for the supervisor to read their output."""
        from devcluster.config.procfile import check_name
        from devcluster.supervisor.logread import shown, wait_read

        whose = check_name(name) if name else None
        records = self.registry.snapshot().records.values()
        wait_read(r.pid for r in records if r.pid and (whose is None or r.name == whose))
        return shown(layout(self.state_dir).logs, whose, n)

    def wait_for(self, predicate: Callable[[Snapshot], bool], timeout: float = 10.0) -> Snapshot:
        """Wait on registry changes (not a timer) until ``predicate(snapshot)`` holds."""
        import threading

        from devcluster.registry.inotify import WatchStop

        stop = WatchStop()
        timer = threading.Timer(timeout, stop.set)
        timer.start()
        last: Snapshot | None = None
        try:
            for snap in self.registry.watch(stop):
                last = snap
                if predicate(snap):
                    return snap
        finally:
            timer.cancel()
            stop.set()
        raise TimeoutError(f"condition not met within {timeout:g}s (last revision "
                           f"{last.revision if last else '?'})")

    @overload
    def channel(self, service: str | None = None, *, aio: Literal[False] = False,
                **options: Unpack[ChannelOptions]) -> BalancedChannel: ...

    @overload
    def channel(self, service: str | None = None, *, aio: Literal[True],
                **options: Unpack[ChannelOptions]) -> AioBalancedChannel: ...

    def channel(self, service: str | None = None, *, aio: bool = False,
                **options: Unpack[ChannelOptions]) -> BalancedChannel | AioBalancedChannel:
        """A balancing channel over this cluster's registry (stubs work on it unchanged).

        ``options`` are the client's (``policy``, ``retry_on``, ``hedge_after``,
        ``eject_after``, ``on_call``...). ``aio=True`` gives the ``grpc.aio`` twin, with
        the same options; make it inside the running event loop.

        >>> async with cluster.channel("greeter", aio=True, policy="least_loaded") as ch:
        ...     await GreeterStub(ch).SayHello(HelloRequest(name="x"))  # doctest: +SKIP
        """
        options.setdefault("state_dir", self.state_dir)  # where its statistics go (etcd too)
        if aio:
            from devcluster.client.aio import AioBalancedChannel

            return AioBalancedChannel(service, self.registry, **options)
        from devcluster.client.channel import BalancedChannel

        return BalancedChannel(service, self.registry, **options)

    def events(self, since: float | None = None) -> list[Event]:
        """The supervisor's timeline of this run, oldest first (at or after ``since``,
        seconds since the epoch): starts, exits with code or signal, restarts, state,
        weight, enable and metadata changes, and who asked for each verb.

        >>> [e.describe() for e in cluster.events() if e.kind == "exited"]  # doctest: +SKIP
        ['server2 exited (signal SIGKILL) (asked by pid 4242)']
        """
        from devcluster.events import read_events

        return read_events(self.state_dir, since)

    # -- acting ------------------------------------------------------------------------

    def asker(self) -> str | None:
        """Who the cluster's timeline says asked for this object's verbs (None: this
        process, ``pid N``). The pytest fixture names the running test."""
        return None

    def _act(self, verb: str, names: Sequence[str] | str, **kw: Any) -> list[InstanceInfo]:
        names = [names] if isinstance(names, str) else list(names)
        with self.control() as control:
            reply = control.act(verb, names, who=self.asker(), **kw)
        infos = [instance_info(i) for i in reply.instances]
        if kw.get("wait"):
            require_serving(self.state_dir, [i.to_dict() for i in infos], verb)
        return infos

    # ``name`` everywhere below: an instance (``greeter.2``), a process type (``greeter``:
    # all its instances) or a list of them. Each returns the instances it acted on, as
    # they are once the verb is done.

    def kill(self, name: str | Sequence[str], signal: str = "SIGKILL") -> list[InstanceInfo]:
        """Send ``signal`` to the instances (a simulated crash: the restart policy applies).

        >>> [i.state for i in cluster.kill("greeter.2")]       # doctest: +SKIP
        ['killed']
        """
        return self._act("kill", name, signal=signal)

    def stop(self, name: str | Sequence[str]) -> list[InstanceInfo]:
        """Stop the instances gracefully (drain, SIGINT, SIGKILL after ``grace``)."""
        return self._act("stop", name)

    def start(self, name: str | Sequence[str], wait: bool = True) -> list[InstanceInfo]:
        """Start stopped (or failed) instances; ``wait``: until they serve or fail (then
        NotReadyError names those that do not serve, why, and their last log lines)."""
        return self._act("start", name, wait=wait)

    def restart(self, name: str | Sequence[str], wait: bool = True) -> list[InstanceInfo]:
        """Stop then start the instances; ``wait``: until they serve again or fail (then
        NotReadyError, as :meth:`start`)."""
        return self._act("restart", name, wait=wait)

    def pause(self, name: str | Sequence[str]) -> list[InstanceInfo]:
        """Freeze the instances (SIGSTOP): they stay registered but answer nothing."""
        return self._act("pause", name)

    def resume(self, name: str | Sequence[str]) -> list[InstanceInfo]:
        """Thaw paused instances (SIGCONT)."""
        return self._act("resume", name)

    def scale(self, counts: Mapping[str, int] | None = None, /, wait: bool = True,
              **kw: int) -> list[InstanceInfo]:
        """Set how many instances each process type runs (new ones start, the highest
        numbers stop); ``wait``: until the new ones serve (one that failed raises
        NotReadyError). Returns every instance of the types scaled.

        >>> cluster.scale(greeter=3)                            # doctest: +SKIP
        """
        wanted = {**(counts or {}), **kw}
        with self.control() as control:
            reply = control.scale(wanted, wait=wait, who=self.asker())
        infos = [instance_info(i) for i in reply.instances]
        if wait:
            require_serving(self.state_dir, [i.to_dict() for i in infos], "scale")
        return infos

    def reload(self, names: str | Sequence[str] = (), all: bool = False,
               on_progress: Callable[[str, str, str], None] | None = None) -> dict[str, Any]:
        """Rolling reload: re-read the Procfile, .env and devcluster.toml, apply the diff
        (changed types reload, new ones start, removed ones stop), and replace ``names``
        (instances or types; ``all``: every one) too, one at a time, losing no call.

        Returns what it did (``reloaded`` steps with old/new pid and timings, ``started``,
        ``stopped``, ``instances``); raises ReloadError when a replacement does not
        serve (its instance keeps serving) or a file is bad.

        >>> cluster.reload("greeter")["reloaded"][0]["new_pid"]   # doctest: +SKIP
        """
        names = [names] if isinstance(names, str) else list(names)
        with self.control() as control:
            result: dict[str, Any] = control.reload(names, all, on_progress)
        if not result["ok"]:
            raise ReloadError(result["error"] or "the reload failed", result)
        return result

    def weight(self, name: str, weight: int) -> None:
        """Set ``name``'s weight in the registry; returns once the timeline has it too."""
        self._registry_change(name, "weight", parse_weight(weight))

    def enable(self, name: str) -> None:
        """Let clients pick ``name`` again (registry ``enabled``); returns once the
        timeline has it too."""
        self._registry_change(name, "enabled", True)

    def disable(self, name: str) -> None:
        """Take ``name`` out of clients' rotation without stopping it (registry
        ``enabled``); returns once the timeline has it too."""
        self._registry_change(name, "enabled", False)

    def _registry_change(self, name: str, key: str, value: Any) -> None:
        """Write one registry field; when it changed and a supervisor runs, wait (bounded)
        until its timeline has it, so ``events()`` right after shows the change."""
        before = getattr(self.registry.get(name), key)
        began = time.time()
        self.registry.update(name, **{key: value})
        if before == value or running_pid(self.state_dir) is None:
            return
        from devcluster.events import read_events

        deadline = time.monotonic() + _TIMELINE_WAIT
        # Polls: the supervisor appends to a file of its own; a few reads of its tail.
        while time.monotonic() < deadline:
            if any(e.kind == key and e.instance == name and e.new == value
                   for e in read_events(self.state_dir, began - 1)):
                return
            time.sleep(0.01)

    def fault(self, target: str, *, delay: str | None = None,
              abort: str | None = None) -> FaultSet:
        """Delay or fail a share of the calls ``target`` (an instance, a process type or
        a service) serves, as ``devcluster fault`` does: xDS clients and the balanced
        clients alike. Used as a context manager, the fault is cleared on exit.

        >>> with cluster.fault("greeter.2", delay="200ms:50", abort="UNAVAILABLE:10"):  # doctest: +SKIP
        ...     run_the_scenario()
        """
        from devcluster.registry.faults import parse

        return self._set_fault(target, parse(target, delay, abort))

    def clear_fault(self, target: str) -> None:
        """Remove the fault of ``target`` (an instance, a process type or a service)."""
        self._set_fault(target, None)

    def _set_fault(self, target: str, fault: Any) -> FaultSet:
        from devcluster.registry.faultset import set_fault

        records = set_fault(self.registry, target, fault)
        return FaultSet(self, target, tuple(r.name for r in records))

    def meta(self, name: str, **changes: str | None) -> dict[str, str]:
        """Set metadata keys of an instance (``None`` removes one); its metadata now.

        >>> cluster.meta("echo.1", zone="b", canary=None)       # doctest: +SKIP
        {'zone': 'b'}
        """
        return dict(set_metadata(self.registry, name, changes).metadata)


class FaultSet:
    """A fault :meth:`Cluster.fault` set: ``names`` are the instances it hits; as a
    context manager it clears the fault on exit (on an error too)."""

    def __init__(self, cluster: Cluster, target: str, names: tuple[str, ...]) -> None:
        self.cluster, self.target, self.names = cluster, target, names

    def clear(self) -> None:
        self.cluster.clear_fault(self.target)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()

    def __repr__(self) -> str:
        return f"<FaultSet {self.target}: {', '.join(self.names)}>"
