"""The Python API: :class:`Cluster`, what the CLI, the pytest plugin and scripts use.

>>> with Cluster("Procfile", scale={"greeter": 3}, port=0) as cluster:   # doctest: +SKIP
...     stub = GreeterStub(cluster.channel("greeter"))
...     cluster.kill("greeter.2")
...     cluster.weight("greeter.1", 5)

The supervisor runs as a separate process (``devcluster up`` in the background), so a
cluster outlives nothing it should not: with ``attach=True`` (the default for the API)
it dies with the Python process that started it, and its instances die with it.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from devcluster import defaults
from devcluster import procfile as procfile_mod
from devcluster.errors import (
    ClusterRunningError,
    DevclusterError,
    NoClusterError,
    UsageError,
    from_payload,
)
from devcluster.logs import tail
from devcluster.project import Resolved
from devcluster.registry import Record, Registry, Snapshot, State, open_registry
from devcluster.registry.record import parse_weight
from devcluster.schema import InstanceInfo
from devcluster.statedir import running_pid

if TYPE_CHECKING:
    from devcluster.events import Event

STATE_DIR_NAME = defaults.STATE_DIR_NAME
#: Longest ``weight``/``enable``/``disable`` wait for the change to reach the timeline.
_TIMELINE_WAIT = 2.0

def default_state_dir(procfile: Path, state_dir: str | Path | None = None) -> Path:
    """``--state-dir`` > ``$DEVCLUSTER_HOME`` > ``.devcluster`` beside the Procfile."""
    return defaults.state_dir(procfile, state_dir)


class NotReadyError(DevclusterError):
    """``up`` finished with instances that do not serve; the cluster keeps running."""

    def __init__(self, message: str, states: dict[str, dict[str, Any]]) -> None:
        super().__init__(message)
        self.states = states


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
        attach: bool = True,
        registry: str | None = None,
        watch: Sequence[str | Path] | None = None,
        console: bool = False,
        console_port: int = 0,
        config: str | Path | None = None,
    ) -> None:
        """``port``, ``grace``, ``ready_timeout``, ``scale``, ``restart`` and ``registry``
        override ``devcluster.toml`` (``config``, else the one beside the Procfile if
        any); None (not given) keeps the file's value, else devcluster's default."""
        self.procfile = Path(procfile).absolute()
        self.state_dir = default_state_dir(self.procfile, state_dir)
        self.scale_counts = dict(scale or {})
        self.port = port
        self.grace = defaults.GRACE if grace is None else grace
        self._flags = (port, grace, ready_timeout, registry)
        self.env_files = tuple(Path(p) for p in env_files)
        self.restart_policies = dict(restart or {})
        self.ready_timeout = defaults.READY_TIMEOUT if ready_timeout is None else ready_timeout
        #: Whether the cluster dies with this process (the constructor's ``attach``).
        self.tied = attach
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
        self._proc: subprocess.Popen[bytes] | None = None
        self._lifeline: int | None = None
        #: What the supervisor reported while starting (e.g. stale state it cleaned).
        self.notes: list[str] = []
        self._registry: Registry | None = None

    def __repr__(self) -> str:
        return f"<Cluster {self.procfile} state_dir={self.state_dir}>"

    @classmethod
    def attach(cls, where: str | Path = "Procfile", **options: Any) -> Self:
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
        cluster = cls(path, attach=False, **options)
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
        from devcluster.statedir import prepare, take_lock

        prepare(self.state_dir)  # never changes the mode of a directory it did not create
        # Lock the state dir now and hand the lock to the daemon (the same open file):
        # from this moment `down` sees a cluster starting, and two `up -d` cannot race.
        lock = take_lock(self.state_dir)
        where = defaults.layout(self.state_dir)
        where.logs.mkdir(exist_ok=True)
        read_fd, write_fd = os.pipe()
        passed = [write_fd, lock.fileno()]
        lifeline = None
        if self.tied:
            # The daemon holds the read end; when this process ends (however), the write
            # end closes and the cluster shuts down gracefully.
            lifeline, self._lifeline = os.pipe()
            passed.append(lifeline)
        out = open(where.daemon_out, "ab")  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                # --state-dir only labels the process (`ps`, the pytest plugin's leak guard
                # and sweeps find a cluster's supervisor by it); settings come on stdin.
                [sys.executable, "-m", "devcluster.daemon", "--state-dir", str(self.state_dir)],
                stdin=subprocess.PIPE,
                stdout=out, stderr=out, pass_fds=passed, start_new_session=True,
                cwd=self.procfile.parent)
        finally:
            for fd in passed[:1] + passed[2:]:
                os.close(fd)
            lock.close()  # the daemon holds it now
            out.close()
        # The settings go through a pipe, not argv: no size limit ("Argument list too
        # long"), and not on display in `ps` to every user.
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(self._settings(write_fd, lifeline, passed[1]).encode())
            self._proc.stdin.close()
        except BrokenPipeError:
            pass  # it died at once; _read_ready reports it
        try:
            payload = self._read_ready(read_fd)
        finally:
            os.close(read_fd)
        if "error" in payload:  # the daemon could not start: its error, as data
            raise from_payload(payload["error"])
        states: dict[str, dict[str, Any]] = payload["instances"]
        self.notes = list(payload.get("notes", []))
        if payload.get("stopped_by"):  # `down` (or a signal) while it started
            raise DevclusterError(f"the cluster was stopped while it started (asked by "
                                  f"{payload['stopped_by']}); its instances are stopping")
        bad = {n: s for n, s in states.items() if s["state"] != State.SERVING.value}
        if bad:
            raise NotReadyError(self._not_ready_message(bad), states)
        return states

    def _resolve(self) -> Resolved:
        """Flags over ``devcluster.toml`` (a bad file raises here: nothing has started)."""
        from devcluster.policy import Policy
        from devcluster.project import Flags
        from devcluster.projectplan import plan

        port, grace, ready_timeout, registry = self._flags
        try:
            restart = {k: Policy(str(v)) for k, v in self.restart_policies.items()}
        except ValueError as e:
            raise UsageError(f"bad restart policy: {e}; use no, on-failure or always") from None
        flags = Flags(port=port, grace=grace, ready_timeout=ready_timeout, registry=registry,
                      scale=self.scale_counts, restart=restart)
        resolved = self.resolved = plan(self.procfile, flags, self.config)
        # down() waits this long (+10 s): the longest any instance may take to stop.
        self.grace = max([resolved.grace, *(t.grace for t in resolved.types.values())])
        self.ready_timeout = resolved.ready_timeout
        self.registry_url = resolved.registry
        return resolved

    def _settings(self, ready_fd: int, lifeline_fd: int | None, lock_fd: int) -> str:
        """The daemon's settings (devcluster.supervisor.Settings) as JSON."""
        from devcluster.projectplan import types_to_json

        r = self.resolved
        assert r is not None
        return json.dumps({
            "procfile": str(self.procfile), "state_dir": str(self.state_dir),
            "env_files": [str(p) for p in self.env_files], "scale": dict(r.scale),
            "base_port": r.port, "grace": r.grace, "ready_timeout": r.ready_timeout,
            "restart": {k: v.value for k, v in r.restart.items()},
            "ready_fd": ready_fd, "lifeline_fd": lifeline_fd, "lock_fd": lock_fd,
            "registry": r.registry, "config": str(self.config) if self.config else None,
            "types": types_to_json(r.types), "waves": [list(w) for w in r.waves],
            "watch": None if self.watch is None else [str(p) for p in self.watch],
            "console": self.console, "console_port": self.console_port})

    def _read_ready(self, fd: int) -> dict[str, Any]:
        from devcluster.projectplan import settle_budget

        r = self.resolved
        budget = settle_budget(r.types, r.waves, r.ready_timeout) if r else self.ready_timeout
        # Crash loops settle as `failed` after ~7.5 s of backoff; allow for that.
        deadline = time.monotonic() + budget + 60
        data = b""
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, remaining))
            if not ready:
                raise DevclusterError(f"the cluster did not settle in time; see "
                                      f"`devcluster logs` (state dir {self.state_dir})")
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
        if not data.strip():  # it died before it could say anything (killed, no memory...)
            assert self._proc is not None
            code = self._proc.wait(timeout=30)
            lines = tail(defaults.layout(self.state_dir).daemon_out, 5)
            why = next((ln for ln in reversed(lines) if ln.strip()), "no output")
            raise DevclusterError(f"the supervisor exited ({code}) before it was ready: {why}")
        return json.loads(data)

    def _not_ready_message(self, bad: Mapping[str, Mapping[str, Any]]) -> str:
        parts = []
        for name, s in bad.items():
            why = s.get("last_exit") or ("not answering" if s["state"] == "starting" else "")
            log = tail(defaults.layout(self.state_dir).log(name), 3)
            last = f"; last log: {' / '.join(log)}" if log else ""
            parts.append(f"{name} {s['state']}{f' ({why})' if why else ''}{last}")
        return "not serving: " + "; ".join(parts)

    def down(self, grace: float | None = None) -> None:
        """Stop every instance gracefully and the supervisor; no-op when none runs."""
        try:
            with control_client(self.state_dir) as control:
                control.down(grace)
        except NoClusterError:
            pass
        if self._proc is not None:
            try:
                self._proc.wait(timeout=(self.grace if grace is None else grace) + 10)
            except subprocess.TimeoutExpired:
                self._proc.kill()  # the supervisor hung: PDEATHSIG takes its children
                self._proc.wait()
            self._proc = None
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if self._registry is not None:
            self._registry.close()

    def __enter__(self) -> Cluster:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- looking -----------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = open_registry(self.registry_url or self.state_dir)
        return self._registry

    @property
    def console_url(self) -> str | None:
        """The web console's URL, token included (``console=True``); None when it has none."""
        try:
            return defaults.layout(self.state_dir).console_url.read_text().strip() or None
        except FileNotFoundError:
            return None

    def control(self) -> Any:
        return control_client(self.state_dir)

    def ps(self) -> list[dict[str, Any]]:
        """Every instance as a ``ps --json`` dict."""
        with self.control() as control:
            return [instance_dict(i) for i in control.ps().instances]

    @property
    def instances(self) -> list[InstanceInfo]:
        return [InstanceInfo.from_dict(d) for d in self.ps()]

    def instance(self, name: str) -> InstanceInfo:
        for info in self.instances:
            if info.name == name:
                return info
        from devcluster.errors import UnknownInstanceError

        raise UnknownInstanceError(name, [i.name for i in self.instances])

    def logs(self, name: str | None = None, n: int = 50) -> list[str]:
        """The last ``n`` lines of an instance's log (or of the merged log)."""
        from devcluster.procfile import check_name

        return tail(defaults.layout(self.state_dir).log(check_name(name) if name else None), n)

    def wait_for(self, predicate: Callable[[Snapshot], bool], timeout: float = 10.0) -> Snapshot:
        """Wait on registry changes (not a timer) until ``predicate(snapshot)`` holds."""
        import threading

        stop = threading.Event()
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

    def channel(self, service: str | None = None, *, aio: bool = False, **options: Any) -> Any:
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
        from devcluster.client import BalancedChannel

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

    def _act(self, verb: str, names: Sequence[str] | str, **kw: Any) -> list[dict[str, Any]]:
        names = [names] if isinstance(names, str) else list(names)
        with self.control() as control:
            reply = control.act(verb, names, who=self.asker(), **kw)
        return [instance_dict(i) for i in reply.instances]

    def kill(self, name: str | Sequence[str], signal: str = "SIGKILL") -> list[dict[str, Any]]:
        return self._act("kill", name, signal=signal)

    def stop(self, name: str | Sequence[str]) -> list[dict[str, Any]]:
        return self._act("stop", name)

    def start(self, name: str | Sequence[str], wait: bool = True) -> list[dict[str, Any]]:
        return self._act("start", name, wait=wait)

    def restart(self, name: str | Sequence[str], wait: bool = True) -> list[dict[str, Any]]:
        return self._act("restart", name, wait=wait)

    def pause(self, name: str | Sequence[str]) -> list[dict[str, Any]]:
        return self._act("pause", name)

    def resume(self, name: str | Sequence[str]) -> list[dict[str, Any]]:
        return self._act("resume", name)

    def scale(self, counts: Mapping[str, int] | None = None, /, wait: bool = True,
              **kw: int) -> list[dict[str, Any]]:
        wanted = {**(counts or {}), **kw}
        with self.control() as control:
            reply = control.scale(wanted, wait=wait, who=self.asker())
        return [instance_dict(i) for i in reply.instances]

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
        self._registry_change(name, "enabled", True)

    def disable(self, name: str) -> None:
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

    def meta(self, name: str, **changes: str | None) -> dict[str, str]:
        """Set metadata keys of an instance (``None`` removes one); its metadata now.

        >>> cluster.meta("echo.1", zone="b", canary=None)       # doctest: +SKIP
        {'zone': 'b'}
        """
        return dict(set_metadata(self.registry, name, changes).metadata)


def set_weight(registry: Registry, name: str, weight: str | int) -> None:
    registry.update(name, weight=parse_weight(weight))


def set_metadata(registry: Registry, name: str,
                 changes: Mapping[str, str | None]) -> Record:
    """Set (``"zone": "a"``) or remove (``"zone": None``) keys of ``name``'s metadata in
    one atomic read-modify-write (no concurrent change is lost); the record as stored."""
    def decide(snap: Snapshot) -> dict[str, dict[str, Any]]:
        if name not in snap.records:
            from devcluster.errors import UnknownInstanceError

            raise UnknownInstanceError(name, list(snap.records))
        metadata = dict(snap.records[name].metadata)
        for key, value in changes.items():
            if value is None:
                metadata.pop(key, None)
            else:
                metadata[key] = value
        return {name: {"metadata": metadata}}

    return registry.modify(decide).records[name]



def control_client(state_dir: Path) -> Any:
    """A ControlClient for ``state_dir`` (grpc is imported here, not by this module)."""
    from devcluster.control import ControlClient

    return ControlClient(state_dir)


def instance_dict(inst: Any) -> dict[str, Any]:
    """A control-plane Instance as the ``ps --json`` dict (:class:`InstanceInfo`'s keys)."""
    from devcluster.control import as_dict

    return as_dict(inst)
