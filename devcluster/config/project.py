"""``devcluster.toml``: settings per process type and for the cluster. Pure.

The Procfile stays the list of commands; this optional file beside it adds, per
type, how many instances, when to restart, how to tell it is ready, its weight,
env and metadata, and what it must start after::

    [cluster]
    port = 5000
    grace = 5

    [process.echo]
    scale = 2
    ready = { grpc = "echo.Echo" }

    [process.web]
    depends_on = ["echo"]
    ready = { http = "/" }

Every mistake is a :class:`ProjectError` (a UsageError: exit 2, defined in
:mod:`~devcluster.config.tomlerrors`, public here) of one line that
names the file, the line and the key, and the fix. Flags override the file
(:func:`resolve`); with no file, :func:`resolve` gives exactly today's defaults.

>>> p = parse_project('[process.web]\\nscale = 2\\n', "devcluster.toml")
>>> p.processes["web"].scale
2
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from devcluster import defaults
from devcluster.config import check as check
from devcluster.config import keys, tomlerrors
from devcluster.config.policy import Policy
from devcluster.config.procfile import read_text
from devcluster.config.tomlerrors import Context, did_you_mean
from devcluster.config.tomlerrors import ProjectError as ProjectError  # public here too
from devcluster.config.tomllines import KeyPath, key_lines, line_of
from devcluster.errors import UsageError

#: The file looked for beside the Procfile.
PROJECT_FILE = "devcluster.toml"

#: The kinds of readiness probe, in the order the docs list them.
READY_KINDS = ("grpc", "http", "tcp", "exec", "log")



def _empty() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Ready:
    """A readiness probe: ``kind`` one of READY_KINDS, ``arg`` its argument.

    ``grpc``: the health service name ("" for the whole server); ``http``: the
    path; ``tcp``: ""; ``exec``: the command; ``log``: the regex.
    """

    kind: str
    arg: str


@dataclass(frozen=True)
class ProcessSettings:
    """One ``[process.<type>]`` table; None means "not set in the file"."""

    name: str
    line: int
    scale: int | None = None
    restart: Policy | None = None
    ready: Ready | None = None
    ready_timeout: float | None = None
    grace: float | None = None
    weight: int | None = None
    env: Mapping[str, str] = field(default_factory=_empty)
    metadata: Mapping[str, str] = field(default_factory=_empty)
    depends_on: tuple[str, ...] = ()
    watch: tuple[str, ...] = ()
    preload: tuple[str, ...] = ()
    health_period: float | None = None
    health_failures: int | None = None
    liveness: bool | None = None
    log_max: int | None = None
    log_keep: int | None = None


@dataclass(frozen=True)
class ClusterSettings:
    """The ``[cluster]`` table; None means "not set in the file"."""

    port: int | None = None
    grace: float | None = None
    registry: str | None = None
    log_max: int | None = None
    log_keep: int | None = None


@dataclass(frozen=True)
class XdsGroup:
    """An ``[xds.<name>]`` table: an extra xDS listener (``xds:///<name>``) over the
    instances of ``types`` (all types if empty) whose metadata has every ``where`` pair."""

    name: str
    line: int
    types: tuple[str, ...] = ()
    where: Mapping[str, str] = field(default_factory=_empty)


@dataclass(frozen=True)
class Project:
    """A parsed, checked ``devcluster.toml``."""

    source: str
    cluster: ClusterSettings = ClusterSettings()
    processes: Mapping[str, ProcessSettings] = field(default_factory=dict)
    xds: Mapping[str, XdsGroup] = field(default_factory=dict)
    """The ``[xds.<name>]`` groups (extra xDS listeners), by name."""
    lines: Mapping[KeyPath, int] = field(default_factory=dict, repr=False, compare=False)

    def line(self, *path: str) -> int:
        """The line ``path`` (or its nearest ancestor) is written on."""
        return line_of(self.lines, path)


# -- parsing ---------------------------------------------------------------------------

def parse_project(text: str, source: str) -> Project:
    """Parse and check ``text`` (the contents of ``source``); raise ProjectError."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        where = re.search(r"\(at line (\d+), column \d+\)", str(e))
        reason = re.sub(r"\s*\(at line .*\)|\s*\(at end of document\)", "", str(e))
        line = where.group(1) if where else str(max(1, text.count("\n")))
        raise ProjectError(f"{source}:{line}: not valid TOML ({reason}); fix the syntax "
                           "(strings need quotes, tables are [name])") from None
    except ValueError:  # tomllib's int() of a number over 4,300 digits
        long = re.search(r"[0-9_]{4300,}", text)
        line = text.count("\n", 0, long.start()) + 1 if long else 1
        raise ProjectError(f"{source}:{line}: not valid TOML (a number of over 4300 digits); "
                           "no setting takes a number that long") from None
    ctx = Context(source, key_lines(text))
    check.no_null_bytes(ctx, data, ())
    ctx.known(data, (), ("cluster", "process", "xds"))
    cluster = _cluster(ctx, ctx.table(data.get("cluster", {}), ("cluster",)))
    processes = {}
    for name, table in ctx.table(data.get("process", {}), ("process",)).items():
        processes[name] = _process(ctx, name, table)
    groups = {name: _xds_group(ctx, name, table)
              for name, table in ctx.table(data.get("xds", {}), ("xds",)).items()}
    project = Project(source, cluster, MappingProxyType(processes),
                      xds=MappingProxyType(groups), lines=ctx.lines)
    cycle = check.find_cycle({n: p.depends_on for n, p in processes.items()})
    if cycle:
        raise ctx.error(("process", cycle[0], "depends_on"),
                        f"makes a cycle: {' -> '.join(cycle)}; remove one of these dependencies")
    return project


def load_project(path: str | Path) -> Project:
    """Read and parse the file at ``path``."""
    return parse_project(read_text(Path(path), PROJECT_FILE), str(path))


def find_project(procfile: str | Path, config: str | Path | None = None) -> Project | None:
    """``--config FILE`` (must exist), else ``devcluster.toml`` beside the Procfile, else None."""
    if config is not None:
        return load_project(config)
    beside = Path(procfile).absolute().parent / PROJECT_FILE
    return load_project(beside) if beside.is_file() else None


def _cluster(ctx: Context, table: Mapping[str, Any]) -> ClusterSettings:
    ctx.known(table, ("cluster",), keys.names("cluster"))
    registry = check.string(ctx, table, ("cluster", "registry"))
    if registry is not None and registry != "file" and not registry.startswith("etcd://"):
        raise ctx.error(("cluster", "registry"), f"= {registry!r} is not a registry; use "
                        "\"file\" (the state dir, default) or \"etcd://host:2379[/prefix]\"")
    return ClusterSettings(
        port=check.integer(ctx, table, ("cluster", "port"), 0, 65535),
        grace=check.number(ctx, table, ("cluster", "grace"), minimum=0.0),
        registry=None if registry == "file" else registry,
        log_max=_log_max(ctx, table, ("cluster",)), log_keep=_log_keep(ctx, table, ("cluster",)))


def _log_max(ctx: Context, table: Mapping[str, Any], here: KeyPath) -> int | None:
    return check.size(ctx, table, (*here, "log_max"), defaults.LOG_MAX_MIN, defaults.LOG_MAX_MAX)


def _log_keep(ctx: Context, table: Mapping[str, Any], here: KeyPath) -> int | None:
    return check.integer(ctx, table, (*here, "log_keep"), 0, defaults.LOG_KEEP_MAX)


#: The keys of a ``[process.<type>]`` table (their types and meanings: :mod:`keys`).
_PROCESS_KEYS = keys.names("process.<type>")


def _process(ctx: Context, name: str, value: Any) -> ProcessSettings:
    here = ("process", name)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ctx.error(here, "is not a process type name; use the Procfile's name "
                        "(letters, digits, '-' and '_')")
    table = ctx.table(value, here)
    ctx.known(table, here, _PROCESS_KEYS)
    restart = check.string(ctx, table, (*here, "restart"))
    if restart is not None and restart not in {p.value for p in Policy}:
        raise ctx.error((*here, "restart"), f"= {restart!r} is not a restart policy; use "
                        f"{', '.join(repr(p.value) for p in Policy)}")
    return ProcessSettings(
        name=name, line=line_of(ctx.lines, here),
        scale=check.integer(ctx, table, (*here, "scale"), 0, 1000),
        restart=None if restart is None else Policy(restart),
        ready=_ready(ctx, table, (*here, "ready")),
        ready_timeout=check.number(ctx, table, (*here, "ready_timeout"), minimum=0.0,
                                   strict=True),
        grace=check.number(ctx, table, (*here, "grace"), minimum=0.0),
        weight=check.integer(ctx, table, (*here, "weight"), defaults.MIN_WEIGHT,
                             defaults.MAX_WEIGHT),
        env=check.env(ctx, table, (*here, "env")),
        metadata=check.metadata(ctx, table, (*here, "metadata")),
        depends_on=check.names(ctx, table, (*here, "depends_on"), check.TYPE_NAME,
                               "a process type name"),
        watch=check.names(ctx, table, (*here, "watch"), None, "a glob"),
        preload=check.names(ctx, table, (*here, "preload"), check.MODULE_NAME,
                            "a Python module name"),
        health_period=check.number(ctx, table, (*here, "health_period"), minimum=0.0),
        health_failures=check.integer(ctx, table, (*here, "health_failures"), 1, 1000),
        liveness=check.boolean(ctx, table, (*here, "liveness")),
        log_max=_log_max(ctx, table, here), log_keep=_log_keep(ctx, table, here))


def _xds_group(ctx: Context, name: str, value: Any) -> XdsGroup:
    here = ("xds", name)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ctx.error(here, "is not a listener name; use letters, digits, '-' and '_'")
    table = ctx.table(value, here)
    ctx.known(table, here, keys.names("xds.<name>"))
    group = XdsGroup(name=name, line=line_of(ctx.lines, here),
                     types=check.names(ctx, table, (*here, "types"), check.TYPE_NAME,
                                       "a process type name"),
                     where=check.metadata(ctx, table, (*here, "where")))
    if not group.types and not group.where:
        raise ctx.error(here, 'selects every instance; say types = ["T", ...] and/or '
                        'where = { key = "value" }')
    return group


def _ready(ctx: Context, table: Mapping[str, Any], path: KeyPath) -> Ready | None:
    if "ready" not in table:
        return None
    value = table["ready"]
    example = 'ready = { grpc = "pkg.Service" } (or http = "/healthz", tcp = true, ' \
              'exec = "cmd", log = "regex")'
    if not isinstance(value, dict) or len(value) != 1:
        raise ctx.error(path, f"must be a table of one probe, e.g. {example}")
    ((kind, arg),) = value.items()
    if kind not in READY_KINDS:
        raise ctx.error((*path, kind), "is not a probe; " + did_you_mean(kind, READY_KINDS))
    if kind == "tcp":
        if arg is not True:
            raise ctx.error((*path, kind), "must be true: ready = { tcp = true }")
        return Ready("tcp", "")
    if not isinstance(arg, str):
        raise ctx.error((*path, kind), f"must be a string, not {tomlerrors.kind(arg)}; e.g. {example}")
    problem = check.probe_arg(kind, arg)
    if problem:
        raise ctx.error((*path, kind), problem)
    return Ready(kind, arg)


# -- the Procfile and the command line -------------------------------------------------

def check_types(project: Project, types: Iterable[str]) -> None:
    """Refuse tables and ``depends_on`` entries that name no Procfile type."""
    known = list(types)
    for name, settings in project.processes.items():
        if name not in known:
            raise ProjectError(f"{project.source}:{settings.line}: [process.{name}] names no "
                               f"Procfile type; {_types_hint(name, known)}")
        for dep in settings.depends_on:
            if dep not in known:
                raise ProjectError(
                    f"{project.source}:{project.line('process', name, 'depends_on')}: "
                    f"process.{name}.depends_on names {dep!r}, not a Procfile type; "
                    f"{_types_hint(dep, known)}")
    for group in project.xds.values():
        for ptype in group.types:
            if ptype not in known:
                raise ProjectError(
                    f"{project.source}:{project.line('xds', group.name, 'types')}: "
                    f"xds.{group.name}.types names {ptype!r}, not a Procfile type; "
                    f"{_types_hint(ptype, known)}")


def _types_hint(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    listed = ", ".join(known) or "none"
    return (f"did you mean {close[0]!r}? " if close else "") + f"types: {listed}"


def start_order(project: Project | None, types: Iterable[str]) -> list[list[str]]:
    """The Procfile's types in waves: each wave starts once every earlier one serves.

    Stop in the reverse order. Types keep their Procfile order within a wave.

    >>> start_order(parse_project('[process.web]\\ndepends_on = ["api"]\\n', "t"), ["web", "api"])
    [['api'], ['web']]
    """
    deps = {} if project is None else {n: p.depends_on for n, p in project.processes.items()}
    return check.waves(list(types), deps)


# -- flags over the file ---------------------------------------------------------------

#: Today's defaults, used when neither a flag nor the file sets a value (defaults.py's).
DEFAULT_GRACE = defaults.GRACE
DEFAULT_READY_TIMEOUT = defaults.READY_TIMEOUT
DEFAULT_WEIGHT = defaults.DEFAULT_WEIGHT
DEFAULT_RESTART = Policy.ON_FAILURE


@dataclass(frozen=True)
class Flags:
    """What the command line (or the API's arguments) said; None or empty: not given."""

    port: int | None = None
    grace: float | None = None
    ready_timeout: float | None = None
    registry: str | None = None
    scale: Mapping[str, int] = field(default_factory=dict)
    restart: Mapping[str, Policy] = field(default_factory=dict)


@dataclass(frozen=True)
class TypeSettings:
    """Everything about one process type, flags over file over defaults."""

    restart: Policy = DEFAULT_RESTART
    ready: Ready | None = None
    """None: the default probe (gRPC health of the server, TCP for servers without it)."""
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    grace: float = DEFAULT_GRACE
    weight: int = DEFAULT_WEIGHT
    env: Mapping[str, str] = field(default_factory=_empty)
    metadata: Mapping[str, str] = field(default_factory=_empty)
    depends_on: tuple[str, ...] = ()
    watch: tuple[str, ...] = ()
    preload: tuple[str, ...] = ()
    health_period: float = defaults.HEALTH_PERIOD
    """Seconds between health checks of a serving instance; 0: none."""
    health_failures: int = defaults.HEALTH_FAILURES
    """Missed checks in a row that make it ``unhealthy``."""
    liveness: bool = False
    """Restart an instance that stays unhealthy for as many checks again."""
    log_max: int = defaults.LOG_MAX
    """Bytes an instance's log file may hold before it is rotated."""
    log_keep: int = defaults.LOG_KEEP
    """Rotated files kept (``NAME.log.1`` the newest)."""


@dataclass(frozen=True)
class Resolved:
    """The settings a cluster runs with. ``scale`` and ``restart`` hold only the types
    a flag or the file names (an explicitly scaled type gets dotted instance names)."""

    port: int
    grace: float
    ready_timeout: float
    registry: str | None
    scale: Mapping[str, int]
    restart: Mapping[str, Policy]
    types: Mapping[str, TypeSettings]
    waves: tuple[tuple[str, ...], ...]
    flags: Flags = field(default_factory=lambda: Flags())
    """What the flags said (a reload puts them over the edited file again)."""
    log_max: int = defaults.LOG_MAX
    """``[cluster]``'s (the supervisor's own log, and the types that set none)."""
    log_keep: int = defaults.LOG_KEEP


def resolve(project: Project | None, flags: Flags, types: Iterable[str],
            environ: Mapping[str, str] | None = None) -> Resolved:
    """Flags over the file over the defaults, for the Procfile's ``types``.

    ``registry``: the flag, else ``$DEVCLUSTER_REGISTRY`` (from ``environ``), else the
    file (``environ`` defaults to ``os.environ``). With ``project=None`` this is exactly
    what ``up`` did before the file existed.

    >>> resolve(None, Flags(port=0), ["web"]).port, resolve(None, Flags(), ["web"]).grace
    (0, 5.0)
    """
    names = list(types)
    _check_durations(flags)
    if project is None:
        project = Project("(none)")
    check_types(project, names)
    cluster = project.cluster
    grace = _first(flags.grace, cluster.grace, DEFAULT_GRACE)
    scale = {n: p.scale for n, p in project.processes.items() if p.scale is not None}
    scale.update(flags.scale)
    restart = {n: p.restart for n, p in project.processes.items() if p.restart is not None}
    restart.update(flags.restart)
    per_type = {}
    for name in names:
        p = project.processes.get(name) or ProcessSettings(name, 0)
        per_type[name] = TypeSettings(
            restart=restart.get(name, DEFAULT_RESTART), ready=p.ready,
            ready_timeout=_first(flags.ready_timeout, p.ready_timeout, DEFAULT_READY_TIMEOUT),
            grace=_first(flags.grace, p.grace, grace),
            weight=_first(p.weight, DEFAULT_WEIGHT), env=p.env, metadata=p.metadata,
            depends_on=p.depends_on, watch=p.watch, preload=p.preload,
            health_period=_first(p.health_period, defaults.HEALTH_PERIOD),
            health_failures=_first(p.health_failures, defaults.HEALTH_FAILURES),
            liveness=bool(p.liveness),
            log_max=_first(p.log_max, cluster.log_max, defaults.LOG_MAX),
            log_keep=_first(p.log_keep, cluster.log_keep, defaults.LOG_KEEP))
    environ = os.environ if environ is None else environ
    env_registry = environ.get("DEVCLUSTER_REGISTRY") or None
    return Resolved(
        port=_first(flags.port, cluster.port, defaults.BASE_PORT), grace=grace,
        ready_timeout=_first(flags.ready_timeout, DEFAULT_READY_TIMEOUT),
        registry=flags.registry or env_registry or cluster.registry,
        scale=MappingProxyType(scale), restart=MappingProxyType(restart),
        types=MappingProxyType(per_type),
        waves=tuple(tuple(w) for w in start_order(project, names)), flags=flags,
        log_max=_first(cluster.log_max, defaults.LOG_MAX),
        log_keep=_first(cluster.log_keep, defaults.LOG_KEEP))


def _check_durations(flags: Flags) -> None:
    """The API's ``grace`` and ``ready_timeout`` as the file's (the CLI's flags are checked
    by their parser): ``inf`` would overflow the clocks and ``select()`` it reaches."""
    for name, value, low in (("grace", flags.grace, "0"),
                             ("ready_timeout", flags.ready_timeout, "more than 0")):
        if value is None:
            continue
        if not 0 <= value <= defaults.MAX_SECONDS or (value == 0 and low != "0"):
            raise UsageError(f"{name}={value!r} is out of range; use a number of seconds, "
                             f"{low} to {defaults.MAX_SECONDS:g} ({defaults.MAX_SECONDS_WORDS})")


def _first(*values: Any) -> Any:
    """The first value that is not None (the last is the default)."""
    return next(v for v in values if v is not None)


