"""Rolling reload: replace instances one at a time and lose no call (issue 19).

For each instance, :func:`replace`: start its replacement (same name, new pid) outside
the registry; wait for readiness; switch the registry record of the name to it in one
write; let watchers see it (the drain); stop the old process gracefully. The next
instance goes only when the previous one is done, so capacity never drops.

*Ports.* If the old process's socket allows SO_REUSEPORT (:func:`port_shareable`
asks the kernel), the replacement binds the same port: a client dialling the port
directly moves to it on the old server's GOAWAY (with no failed call when the server
hands over as :mod:`devcluster.handoff` does). Otherwise a
``$PORT`` command gets a spare port (``PORT=0``; ``ps`` shows the new one).

*A broken replacement* (it exits, or does not answer within the ready timeout) is
stopped; the old instance keeps serving and the reload stops there.

*Edits* to the Procfile, ``.env`` and ``devcluster.toml`` apply as a diff on every
reload (:func:`diff`): changed types reload rolling, new types start, removed types
stop, the rest is left alone. Naming instances (or ``--all``) also replaces those.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from devcluster.config import procfile
from devcluster.config.policy import Policy
from devcluster.errors import DevclusterError, UsageError
from devcluster.registry import State
from devcluster.supervisor import core
from devcluster.supervisor.instance import Instance
from devcluster.supervisor.recorder import landed

if TYPE_CHECKING:
    from devcluster.config.project import Resolved
    from devcluster.supervisor.crew import Crew
    from devcluster.supervisor.request import UpRequest

#: Lines of a failed replacement's own output the report carries.
FAILED_LOG_LINES = 10


@dataclass(frozen=True)
class Step:
    """One instance replaced: old and new process, and how long each part took."""

    name: str
    old_pid: int | None
    new_pid: int | None
    old_address: str
    new_address: str
    same_port: bool
    ready_ms: float
    """Spawn of the replacement to its readiness answer."""
    total_ms: float
    """Spawn of the replacement to the old process gone."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ReloadResult:
    """What a reload did. ``failed`` names the instance whose replacement did not serve
    (the reload stopped there); ``error`` says why nothing was done (a bad Procfile)."""

    reloaded: list[Step] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: str | None = None
    error: str | None = None
    usage_error: bool = False
    """``error`` is the user's mistake (exit 2), not the world's (exit 1)."""
    log: list[str] = field(default_factory=list)
    """The failed replacement's last lines of output."""

    @property
    def ok(self) -> bool:
        return self.failed is None and self.error is None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ok"] = self.ok
        return data


@dataclass(frozen=True)
class Progress:
    """One line of progress: ``kind`` is plan, start, ready, switch, stopped, added,
    removed, failed or done; ``instance`` what it is about ("" for the whole)."""

    kind: str
    instance: str
    text: str


Emit = Callable[[Progress], None]


class ReplacementFailedError(DevclusterError):
    """A replacement did not serve; the old instance keeps serving (exit 1)."""


# -- what the files say now, and how it differs ------------------------------------------

@dataclass(frozen=True)
class Desired:
    """The Procfile, ``.env`` and ``devcluster.toml`` as they are now."""

    types: tuple[procfile.ProcessType, ...]
    env: dict[str, str]
    specs: dict[str, procfile.InstanceSpec]
    tables: Mapping[str, Any]
    """Per type, its ``[process.<type>]`` table (line numbers left out), for the diff."""
    resolved: Resolved | None = None
    """The flags of ``up`` over the edited file (None: the flags are not known)."""
    counts: Mapping[str, int] = field(default_factory=dict)
    """What the files and the flags give each type (before a runtime ``scale``)."""


def load_desired(st: UpRequest, counts_before: Mapping[str, int],
                 running: Mapping[str, Collection[str]]) -> Desired:
    """Read every file a reload applies; raise (and change nothing) when one is bad.

    ``counts_before``: what the files gave each type at the last load; ``running``: the
    names of each type's instances now. A type keeps its running count unless the
    files changed it (:func:`~devcluster.supervisor.core.reload_counts`)."""
    from devcluster.config.plan import plan

    resolved = None if st.flags is None else plan(st.procfile, st.flags, st.config)
    explicit = resolved.scale if resolved is not None else st.scale
    names = procfile.parse_procfile(procfile.read_text(st.procfile, "Procfile"),
                                    str(st.procfile))
    files = {t.name: explicit.get(t.name, 1) for t in names}
    counts = core.reload_counts(counts_before, files, {t: len(n) for t, n in running.items()})
    dotted = {t for t, members in running.items() if any("." in n for n in members)}
    scale = {t: n for t, n in counts.items() if t in explicit or t in dotted or n != 1}
    types, env, specs = procfile.load(st.procfile, st.env_files, scale, st.base_port)
    return Desired(types, env, {s.name: s for s in specs}, project_tables(st.procfile),
                   resolved, files)


def project_tables(path: Path) -> Mapping[str, Any]:
    """``devcluster.toml``'s per-type tables beside ``path`` (empty without the file), less
    what a reload applies without replacing an instance (``scale``, ``weight``)."""
    from devcluster.config.project import find_project

    project = find_project(path)
    if project is None:
        return MappingProxyType({})
    return MappingProxyType({n: dataclasses.replace(p, line=0, scale=None, weight=None)
                             for n, p in project.processes.items()})


@dataclass(frozen=True)
class Diff:
    """Instance names by what a reload does to them."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()


def _config(spec: procfile.InstanceSpec) -> tuple[str, dict[str, str]]:
    # PORT moves when a type is inserted above (+100 per type): not a change of its own.
    return spec.command, {k: v for k, v in spec.env.items() if k != "PORT"}


def diff(current: Mapping[str, procfile.InstanceSpec], wanted: Mapping[str, procfile.InstanceSpec],
         changed_types: Collection[str] = ()) -> Diff:
    """Compare running specs with wanted ones; ``changed_types`` changed in the toml.

    >>> a = procfile.InstanceSpec("a", "a", "run a", 5000)
    >>> diff({"a": a}, {"a": dataclasses.replace(a, command="run a2")}).changed
    ('a',)
    """
    changed = tuple(n for n, s in current.items() if n in wanted and (
        _config(s) != _config(wanted[n]) or s.process_type in changed_types))
    return Diff(
        added=tuple(n for n in wanted if n not in current),
        removed=tuple(n for n in current if n not in wanted),
        changed=changed,
        unchanged=tuple(n for n in current if n in wanted and n not in changed))


def changed_tables(before: Mapping[str, Any], after: Mapping[str, Any]) -> set[str]:
    """Types whose ``[process.<type>]`` table was added, removed or edited."""
    return {n for n in set(before) | set(after) if before.get(n) != after.get(n)}


# -- ports ------------------------------------------------------------------------------

def port_shareable(port: int, host: str = "127.0.0.1") -> bool:
    """Does the socket listening on ``port`` allow SO_REUSEPORT (for our uid)?

    Linux lets a socket bind a port in use only if every socket on it set
    SO_REUSEPORT (same user). Binding, never listening, asks exactly that: a bound
    socket that does not listen receives no connection.
    """
    if not port or not hasattr(socket, "SO_REUSEPORT"):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def replacement_spec(old: Instance, spec: procfile.InstanceSpec) -> tuple[procfile.InstanceSpec, bool]:
    """The spec to start ``old``'s replacement with, and whether it shares the port."""
    uses_port = "PORT" in spec.command
    if old.running and old.port and port_shareable(old.port):
        # $PORT in the environment too: a server that reads it rather than its command
        # line (`python inventory.py` under `-p 0` got PORT=0) binds the same port.
        return _with_port(spec, old.port), True
    if old.running and uses_port:
        return _with_port(spec, 0), False  # a spare port: the server picks, we find it
    return spec, False


def _with_port(spec: procfile.InstanceSpec, port: int) -> procfile.InstanceSpec:
    env = MappingProxyType({**spec.env, "PORT": str(port)})
    return dataclasses.replace(spec, port=port, env=env)


# -- one instance ---------------------------------------------------------------------

async def replace(sup: Crew, old: Instance, spec: procfile.InstanceSpec,
                  emit: Emit) -> Step:
    """Replace the running ``old`` by a process of ``spec``; raise ReplacementFailedError
    (after stopping the replacement) if it does not serve: ``old`` is then untouched."""
    name, began = old.name, time.monotonic()
    new_spec, same = replacement_spec(old, spec)
    new = sup.make_instance(new_spec)
    new.registered, new.shared_port, new.restarts = False, same, old.restarts + 1
    policy, new.policy = new.policy, Policy.NO  # a crash is a failed reload, not a restart
    sup.outside.add(new)
    where = f"the same port {old.port}" if same else ("a spare port" if new_spec.port == 0
                                                      else "its port")
    emit(Progress("start", name, f"{name}: starting a replacement on {where}"))
    try:
        new.start()
        await new.wait_until(lambda i: i.settled, sup.settings.ready_timeout + 5)
        if sup.stopping.is_set():
            raise _interrupted(old)
        if new.state is not State.SERVING:
            raise _failure(old, new, same, began)
    except BaseException:
        await new.stop(announce=False)
        sup.outside.discard(new)
        raise
    ready_ms = 1000 * (time.monotonic() - began)
    new.policy = policy
    old.registered = False  # from here on the record is the replacement's
    sup.instances[name] = new
    sup.outside.discard(new)
    sup.outside.add(old)
    emit(Progress("switch", name, f"{name}: pid {new.pid} serving on {new.address} in "
                  f"{ready_ms:.0f} ms; switching the registry, stopping pid {old.pid}"))
    written = new.publish()
    if written is not None:
        await landed(written, sup.settings.grace)
    try:
        await old.stop(drain=True, announce=False)
    finally:
        sup.outside.discard(old)
    step = Step(name, old.pid, new.pid, old.address, new.address, same, round(ready_ms, 1),
                round(1000 * (time.monotonic() - began), 1))
    emit(Progress("stopped", name, f"{name}: replaced pid {old.pid} by {new.pid} in "
                  f"{step.total_ms:.0f} ms ({new.address})"))
    return step


def _interrupted(old: Instance) -> ReplacementFailedError:
    """The cluster began shutting down during a replacement: nobody keeps serving."""
    error = ReplacementFailedError(f"reload stopped at {old.name}: the cluster is shutting "
                                   "down (`devcluster down` or a signal); nothing was replaced")
    error.instance, error.log = old.name, ()
    return error


def _failure(old: Instance, new: Instance, same: bool, began: float) -> ReplacementFailedError:
    seconds = time.monotonic() - began
    if new.state is State.STARTING:
        why = f"did not answer within {seconds:.1f} s"
    else:
        why = f"{new.state.value} ({new.last_exit or 'no exit status'})"
    hint = ""
    if not same and "PORT" not in new.spec.command and old.port:
        hint = (f"; it listens on the fixed port {old.port}, which the running server does "
                "not share (SO_REUSEPORT): use $PORT, or allow SO_REUSEPORT when "
                "DEVCLUSTER_REUSEPORT=1, or `devcluster restart` (drops calls)")
    error = ReplacementFailedError(
        f"reload stopped at {old.name}: its replacement {why}; {old.name} keeps serving "
        f"(pid {old.pid}){hint}")
    error.instance = old.name
    error.log = tuple(list(new.recent)[-FAILED_LOG_LINES:])
    return error


async def restart_stopped(sup: Crew, old: Instance, spec: procfile.InstanceSpec,
                          emit: Emit) -> str | None:
    """An instance that does not run: give it the new spec and start it (nothing to
    protect). Returns why it does not serve, None when it does."""
    await old.stop(announce=False)  # a pending backoff
    new = sup.make_instance(spec)
    new.restarts = old.restarts
    sup.instances[old.name] = new
    emit(Progress("start", old.name, f"{old.name}: was {old.state.value}; starting it"))
    new.start()
    await new.wait_until(lambda i: i.settled, sup.settings.ready_timeout + 5)
    return None if new.state is State.SERVING else new.state.value


# -- a whole reload -------------------------------------------------------------------

async def run(sup: Crew, targets: Collection[str], emit: Emit) -> ReloadResult:
    """Apply the files' diff and replace ``targets`` (instance names) too, rolling."""
    result = ReloadResult()
    try:
        desired = await asyncio.to_thread(load_desired, sup.settings, sup.file_counts,
                                          _members(sup))
    except DevclusterError as e:
        result.error, result.usage_error = str(e), isinstance(e, UsageError)
        emit(Progress("failed", "", f"reload refused: {e}; the cluster keeps running as it was"))
        return result
    change = diff({n: i.spec for n, i in sup.instances.items()}, desired.specs,
                  changed_tables(sup.tables, desired.tables))
    _adopt(sup, desired, emit)
    await sup.preload.refresh()  # preloaded code may have changed: import it afresh
    emit(Progress("plan", "", f"reload: {len(change.added)} added, {len(change.removed)} "
                  f"removed, {len(change.changed)} changed"))
    for name in change.added:
        sup.add_instance(desired.specs[name]).start()
        result.started.append(name)
        emit(Progress("added", name, f"{name}: new in the Procfile; starting"))
    todo = [n for n in sup.instances if n in change.changed or (n in targets and n in desired.specs)]
    result.unchanged = [n for n in change.unchanged if n not in todo]
    for name in todo:
        if sup.stopping.is_set():
            break
        if not await _one(sup, name, desired.specs[name], result, emit):
            return result
    for name in change.removed:
        why = _why_removed(desired, sup.instances[name].spec.process_type)
        await sup.remove_instance(name)
        result.stopped.append(name)
        emit(Progress("removed", name, f"{name}: {why}; stopped"))
    emit(Progress("done", "", _summary(result)))
    return result


def _members(sup: Crew) -> dict[str, list[str]]:
    """Each process type's instance names now (a type scaled to 0 has none)."""
    members: dict[str, list[str]] = {t: [] for t in sup.types}
    for name, inst in sup.instances.items():
        members.setdefault(inst.spec.process_type, []).append(name)
    return members


def _why_removed(desired: Desired, ptype: str) -> str:
    return "gone from the Procfile" if ptype not in desired.counts else "scaled down in the files"


def _adopt(sup: Crew, desired: Desired, emit: Emit) -> None:
    """Take the files' settings; a changed ``weight`` reaches the registry at once (the
    instances keep running: a weight needs no restart)."""
    sup.adopt_config(desired.types, desired.env, desired.tables)
    sup.file_counts = dict(desired.counts)
    if desired.resolved is None:
        return
    before, r = sup.settings.types, desired.resolved
    sup.settings = dataclasses.replace(sup.settings, types=r.types, scale=r.scale,
                                       restart=r.restart, waves=r.waves)
    changes: dict[str, dict[str, Any]] = {}
    for ptype, conf in r.types.items():
        old = before.get(ptype)
        if old is None or old.weight == conf.weight:
            continue
        for inst in sup.of_types([ptype]):
            changes[inst.name] = {"weight": conf.weight}
        emit(Progress("weight", ptype, f"{ptype}: weight {old.weight} -> {conf.weight} "
                      "(devcluster.toml)"))
    if changes:
        sup.records.update_many(changes)


async def _one(sup: Crew, name: str, spec: procfile.InstanceSpec, result: ReloadResult,
               emit: Emit) -> bool:
    """Reload one instance; False (and the result says why) if the reload must stop."""
    old = sup.instances[name]
    if not old.running:
        why = await restart_stopped(sup, old, spec, emit)
        if why is None:
            result.started.append(name)
            return True
        result.failed, result.error = name, f"{name} was not running; started again, it is {why}"
        result.log = list(sup.instances[name].recent)[-FAILED_LOG_LINES:]
        emit(Progress("failed", name, result.error))
        return False
    try:
        result.reloaded.append(await replace(sup, old, spec, emit))
    except ReplacementFailedError as e:
        result.failed, result.error, result.log = name, str(e), list(e.log)
        emit(Progress("failed", name, str(e)))
        return False
    return True


def _summary(result: ReloadResult) -> str:
    parts = [f"{len(result.reloaded)} replaced"]
    if result.started:
        parts.append(f"{len(result.started)} started")
    if result.stopped:
        parts.append(f"{len(result.stopped)} stopped")
    if result.unchanged:
        parts.append(f"{len(result.unchanged)} unchanged")
    return "reload done: " + ", ".join(parts)
