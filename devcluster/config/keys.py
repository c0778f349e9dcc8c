"""Every key of ``devcluster.toml``: its table, type, default and meaning. Pure data.

:mod:`devcluster.config.project` accepts exactly these keys (an unknown one is refused
with a did-you-mean from this list), and the reference (``docs/reference/config.md``,
written by ``python -m devcluster._docs``) is generated from this table, so the two
cannot drift. The checks themselves (ranges, shapes) stay in :mod:`project` and
:mod:`check`; ``type`` says in words what they accept.

>>> names("xds.<name>")
('types', 'where')
"""

from __future__ import annotations

from dataclasses import dataclass

from devcluster import defaults
from devcluster.config.policy import Policy

SECONDS = f"number of seconds, 0 to {defaults.MAX_SECONDS:g}"
SIZE = 'bytes: a whole number, or a string with a unit ("10MiB"; KiB, MiB, GiB; KB, MB, GB)'
_SIZE_RANGE = f"{SIZE}, {defaults.LOG_MAX_MIN >> 10} KiB to {defaults.LOG_MAX_MAX >> 40} TiB"


@dataclass(frozen=True)
class Key:
    """One key: ``table`` is ``cluster``, ``process.<type>`` or ``xds.<name>``."""

    table: str
    name: str
    type: str
    default: str
    meaning: str


_LOG_MAX = ("a log file past this many bytes becomes `NAME.log.1`, so a flood of output "
            "takes at most `log_max × (log_keep + 1)`")  # noqa: RUF001 - as the docs write it
_LOG_KEEP = "rotated log files kept (`NAME.log.1` the newest)"

KEYS: tuple[Key, ...] = (
    Key("cluster", "port", "integer, 0 to 65535", f"{defaults.BASE_PORT}",
        "base port: `$PORT` is the base +100 per process type, +1 per instance; 0: every "
        "server picks a free port (`up -p` wins)"),
    Key("cluster", "grace", SECONDS, f"{defaults.GRACE:g}",
        "seconds a stopping instance gets after SIGINT before SIGKILL; every type's "
        "default (`up --grace` wins)"),
    Key("cluster", "registry", '"file" or "etcd://host:2379[/prefix]"', '"file"',
        "where instances are registered: the state dir's `registry.json`, or etcd "
        "(`--registry` and `$DEVCLUSTER_REGISTRY` win)"),
    Key("cluster", "log_max", _SIZE_RANGE, f"{defaults.LOG_MAX >> 20} MiB",
        f"{_LOG_MAX}; for the supervisor's own log and the types that set none"),
    Key("cluster", "log_keep", f"integer, 0 to {defaults.LOG_KEEP_MAX}", f"{defaults.LOG_KEEP}",
        f"{_LOG_KEEP}; for the supervisor's own log and the types that set none"),
    Key("process.<type>", "scale", "integer, 0 to 1000", "1",
        "instances of the type (`up -c TYPE=N` wins)"),
    Key("process.<type>", "restart", " or ".join(f'"{p.value}"' for p in Policy),
        f'"{Policy.ON_FAILURE.value}"',
        "what to do when an instance exits by itself (`up --restart TYPE=POLICY` wins)"),
    Key("process.<type>", "ready",
        'a table of one probe: { grpc = "pkg.Service" }, { http = "/healthz" }, '
        '{ tcp = true }, { exec = "cmd" } or { log = "regex" }',
        "`grpc.health.v1` for the whole server, else a TCP connect",
        "how to tell an instance serves: SERVING for the named gRPC service, any 2xx on "
        "`127.0.0.1:$PORT`, a connect, a command that exits 0 (run with the instance's "
        "environment), a line of its output that matches"),
    Key("process.<type>", "ready_timeout", f"number of seconds, more than 0 to "
        f"{defaults.MAX_SECONDS:g}", f"{defaults.READY_TIMEOUT:g}",
        "seconds an instance may take to be ready (`up --ready-timeout` wins)"),
    Key("process.<type>", "grace", SECONDS, "`[cluster]`'s grace",
        "seconds an instance of the type gets after SIGINT before SIGKILL (`up --grace` wins)"),
    Key("process.<type>", "weight", f"integer, {defaults.MIN_WEIGHT} to {defaults.MAX_WEIGHT}",
        f"{defaults.DEFAULT_WEIGHT}", "the initial registry weight of each instance"),
    Key("process.<type>", "env", "a table of strings", "{}",
        "environment variables of each instance"),
    Key("process.<type>", "metadata", "a table of strings", "{}",
        "registry labels of each instance; `client`/`call --where KEY=VALUE` select by them"),
    Key("process.<type>", "depends_on", "a list of process type names", "[]",
        "the type starts once every instance of these serves, and stops first"),
    Key("process.<type>", "watch", "a list of globs (`**` spans directories)",
        "[] (any change)", "under `up --watch`, the files whose change reloads the type"),
    Key("process.<type>", "preload", "a list of Python module names", "[]",
        "Linux: start the instances by forking a fork server that imported these modules "
        "once; the command must be `python -m MODULE ...` or `python FILE.py ...`"),
    Key("process.<type>", "health_period", SECONDS, f"{defaults.HEALTH_PERIOD:g}",
        "seconds between health checks of a serving instance; 0: none"),
    Key("process.<type>", "health_failures", "integer, 1 to 1000", f"{defaults.HEALTH_FAILURES}",
        "missed checks in a row that make an instance `unhealthy`"),
    Key("process.<type>", "liveness", "boolean", "false",
        "restart an instance that stays unhealthy for as many checks again"),
    Key("process.<type>", "log_max", _SIZE_RANGE, "`[cluster]`'s log_max",
        _LOG_MAX),
    Key("process.<type>", "log_keep", f"integer, 0 to {defaults.LOG_KEEP_MAX}",
        "`[cluster]`'s log_keep", _LOG_KEEP),
    Key("xds.<name>", "types", "a list of process type names", "[] (every type)",
        "an extra xDS listener, `xds:///<name>`, over the instances of these types"),
    Key("xds.<name>", "where", "a table of strings", "{} (every instance)",
        "only the instances whose metadata has every pair (`types` and/or `where` is needed)"),
)


def names(table: str) -> tuple[str, ...]:
    """The keys of ``table`` (``cluster``, ``process.<type>``, ``xds.<name>``), in order."""
    return tuple(key.name for key in KEYS if key.table == table)
