"""Every default and every path of devcluster, defined once (a leaf: imports nothing of ours).

The CLI's option defaults, the Python API's keyword defaults, the daemon and the
supervisor all read them here, so ``--grace`` means the same 5 s on every path.

The state dir (``--state-dir`` > ``$DEVCLUSTER_HOME`` > ``.devcluster`` beside the
Procfile): what it holds, in what format and version, is described in
:mod:`devcluster.statedir`, the module to import it from. The names are spelled here
only because the registry may import nothing of ours but this leaf and the errors.

>>> layout(state_dir(Path("/srv/app/Procfile"), None, environ={})).socket
PosixPath('/srv/app/.devcluster/private/control.sock')
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: Seconds an instance gets between SIGINT and SIGKILL (``--grace``).
GRACE = 5.0
#: Seconds an instance gets to answer its readiness probe (``--ready-timeout``).
READY_TIMEOUT = 30.0
#: Continuous health checks of a serving instance (``health_period``, ``health_failures``
#: per type in devcluster.toml): its readiness probe every HEALTH_PERIOD seconds (0: no
#: checks); HEALTH_FAILURES misses in a row make it ``unhealthy``, one success serving
#: again. Each check waits at most HEALTH_TIMEOUT (or the period, if shorter).
HEALTH_PERIOD = 1.0
HEALTH_FAILURES = 2
HEALTH_TIMEOUT = 0.5
#: Foreman's base port: ``$PORT`` of the first instance (``--port``).
BASE_PORT = 5000
#: The lowest and highest port an instance may be given.
MIN_PORT, MAX_PORT = 1, 65535
#: Weights a registry record may carry; a fresh record gets DEFAULT_WEIGHT.
MIN_WEIGHT, MAX_WEIGHT, DEFAULT_WEIGHT = 0, 1000, 1
#: Seconds the supervisor waits for an instance that ignores ``$PORT`` to open a port
#: that speaks HTTP/2 (a gRPC server) when the ports it listens on do not: a server
#: may open its metrics or admin listener before its gRPC port.
GRPC_PORT_WAIT = 2.0
#: The longest duration a setting or flag may give (a day): a longer one is a typo, and
#: ``inf`` or ``1e20`` would overflow the clocks, deadlines and ``select()`` it reaches.
MAX_SECONDS, MAX_SECONDS_WORDS = 86400.0, "a day"
#: Seconds a control client waits for a change it asked for (``start --wait``...).
CONTROL_WAIT = 30.0
#: How long `up` waits for its xDS server to listen before it reports ready without it.
XDS_START_WAIT = 10.0
#: The control server starts once every instance settled, or after this many seconds of a
#: slow start (`down` must reach a cluster still starting).
CONTROL_START_LATEST = 1.0

#: Environment variables devcluster reads.
ENV_HOME = "DEVCLUSTER_HOME"
"""The state dir itself (relative paths: to the working directory)."""
ENV_REGISTRY = "DEVCLUSTER_REGISTRY"
"""``etcd://host:port[/prefix]``: register into etcd instead of the state dir's file."""
ENV_ADVERTISE_HOST = "DEVCLUSTER_ADVERTISE_HOST"
"""The host part of every address the supervisor registers (default ADVERTISE_HOST):
this machine's address as other machines reach it, when they share an etcd registry.
The instances must then listen on it (or on 0.0.0.0)."""
#: The host of a registered address when ``$DEVCLUSTER_ADVERTISE_HOST`` is unset.
ADVERTISE_HOST = "127.0.0.1"
#: Environment variables devcluster sets for every instance.
ENV_INSTANCE = "DEVCLUSTER_INSTANCE"
ENV_SUPERVISOR = "DEVCLUSTER_SUPERVISOR"
"""``<supervisor pid>.<its start, ns>``: which supervisor started the process. Its
descendants inherit it, so the orphan watchdog finds them all after a SIGKILL of the
supervisor, even those in a session of their own (``setsid``)."""
ENV_GRACE = "DEVCLUSTER_GRACE"
ENV_REUSEPORT = "DEVCLUSTER_REUSEPORT"
"""``1``: a reload may start this instance's replacement on the same port while it still
serves; a server that allows it sets SO_REUSEPORT on its listening socket."""
#: A server sharing its port (``DEVCLUSTER_REUSEPORT=1``) ends each connection after
#: this age with a GOAWAY that cancels nothing, so a plain client moves to the
#: replacement within it during a reload (see devcluster.handoff).
HANDOFF_CONNECTION_AGE_MS = 500

#: ``up --watch``: how long a burst of saves is gathered into one reload (ms without a
#: further change), and the longest a burst may be gathered for.
WATCH_STEP_MS, WATCH_DEBOUNCE_MS = 50, 1600
#: ``up --watch`` never watches directories of these names (beyond watchfiles' own
#: list: .git, .venv, __pycache__, node_modules...), nor files whose names match these
#: globs: a log written by a reload would change and so reload again, forever. The
#: state dir (any dir named like it), virtualenvs and the supervisor's own stdout and
#: stderr files are ignored too, whatever their names.
WATCH_IGNORE_DIRS = ("venv", ".nox", ".ruff_cache", "site-packages")
WATCH_IGNORE_NAMES = ("*.log",)
#: Seconds between ``up --watch``'s looks at what it watches: a directory deleted and
#: re-created (or a new one beside the Procfile) is watched again within this
#: (inotify forgets a deleted directory, and says nothing of one made anew).
WATCH_RECHECK_S = 1.0

# The state dir's names (documented in devcluster.statedir, which re-exports them).
STATE_DIR_NAME = ".devcluster"
REGISTRY_FILE = "registry.json"
REGISTRY_LOCK_FILE = "registry.lock"
#: One fixed temp name, beside the registry (see devcluster.registry.file).
REGISTRY_TMP_FILE = f".{REGISTRY_FILE}.tmp"
#: A corrupt registry file moved aside: ``registry.json.corrupt-YYYYmmdd-HHMMSS[-N]``.
REGISTRY_CORRUPT_PREFIX = f"{REGISTRY_FILE}.corrupt-"
#: The user's own 0700 subdirectory: the lock, the control socket, the console URL, the
#: xDS bootstrap (what another user must never replace, read or plant a link at).
PRIVATE_DIR = "private"
SUPERVISOR_LOCK_FILE = "supervisor.lock"
SOCKET_FILE = "control.sock"
EVENTS_FILE = "events.jsonl"
EVENTS_PREVIOUS_FILE = "events.1.jsonl"
CONSOLE_URL_FILE = "console.url"
#: The bootstrap file gRPC clients read ($GRPC_XDS_BOOTSTRAP) to find the cluster's xDS server.
XDS_BOOTSTRAP_FILE = "xds-bootstrap.json"
LOG_DIR = "logs"
DAEMON_OUT_FILE = "supervisor.out"
CLIENTS_DIR = "clients"
#: Format versions: what each versioned file says in its ``version`` field.
REGISTRY_FORMAT_VERSION = 1
EVENTS_FORMAT_VERSION = 1
CLIENT_STATS_FORMAT_VERSION = 1
#: A client statistics file untouched this long is ignored (a live client rewrites it
#: at least every 20 s): its client is hung or gone.
CLIENT_STATS_STALE_AFTER = 60.0
#: The name of the supervisor's own log (also its name in the merged view of the logs).
SYSTEM_LOG = "devcluster"
#: Each log file is rotated past LOG_MAX bytes, keeping LOG_KEEP older files
#: (``NAME.log.1`` the newest): at most LOG_MAX x (LOG_KEEP + 1) bytes a log
#: (``log_max``, ``log_keep`` in devcluster.toml).
LOG_MAX, LOG_KEEP = 10 * 1024 * 1024, 3
#: The bounds devcluster.toml may set them to.
LOG_MAX_MIN, LOG_MAX_MAX, LOG_KEEP_MAX = 4096, 1 << 40, 100
#: The supervisor reads an instance's output this many bytes at a time, and breaks a
#: line longer than LOG_LINE_MAX (its memory is bounded by the two).
LOG_CHUNK, LOG_LINE_MAX = 1 << 16, 1 << 20
#: ``Cluster.logs()`` waits at most this long for the supervisor to read what the
#: instances already wrote (their output pipes empty), so a test sees its own calls.
LOG_READ_WAIT = 1.0


def state_dir(procfile: Path | None = None, explicit: str | os.PathLike[str] | None = None,
              environ: Mapping[str, str] | None = None) -> Path:
    """``explicit`` > ``$DEVCLUSTER_HOME`` > ``.devcluster`` beside ``procfile``.

    Every reader of the state dir (CLI, API, pytest plugin, balancing client) resolves
    it here, so ``DEVCLUSTER_HOME`` means one thing. Without a Procfile (a client in a
    script) the default is beside ``./Procfile``: ``./.devcluster``. Always absolute.
    """
    env = os.environ if environ is None else environ
    if explicit:
        return Path(explicit).absolute()
    if env.get(ENV_HOME):
        return Path(env[ENV_HOME]).absolute()
    return (procfile or Path("Procfile")).absolute().parent / STATE_DIR_NAME


def registry_url(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """``explicit`` > ``$DEVCLUSTER_REGISTRY`` > None (the state dir's file)."""
    env = os.environ if environ is None else environ
    return explicit or env.get(ENV_REGISTRY) or None


def advertise_host(environ: Mapping[str, str] | None = None) -> str:
    """``$DEVCLUSTER_ADVERTISE_HOST`` (stripped; IPv6 in brackets), else ADVERTISE_HOST.

    ValueError (naming the variable and the fix) when it is no host name or IP address.

    >>> advertise_host({}), advertise_host({ENV_ADVERTISE_HOST: "fd00::5"})
    ('127.0.0.1', '[fd00::5]')
    """
    env = os.environ if environ is None else environ
    host = env.get(ENV_ADVERTISE_HOST, "").strip()
    if not host:
        return ADVERTISE_HOST
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host):
            raise ValueError(f"${ENV_ADVERTISE_HOST} is {host!r}, not a host name or IP "
                             f"address; set it to this machine's address as others reach "
                             f"it, e.g. 10.0.0.5") from None
        return host
    return f"[{ip}]" if ip.version == 6 else str(ip)


@dataclass(frozen=True)
class Layout:
    """The files of one state dir."""

    root: Path

    @property
    def registry(self) -> Path:
        return self.root / REGISTRY_FILE

    @property
    def registry_lock(self) -> Path:
        """The file registry writers ``flock``."""
        return self.root / REGISTRY_LOCK_FILE

    @property
    def registry_tmp(self) -> Path:
        """Where the registry is written before ``os.replace`` publishes it."""
        return self.root / REGISTRY_TMP_FILE

    def registry_corrupt(self, stamp: str, n: int = 0) -> Path:
        """A corrupt registry moved aside at ``stamp`` (``n``: the n-th that second)."""
        return self.root / f"{REGISTRY_CORRUPT_PREFIX}{stamp}{f'-{n}' if n else ''}"

    @property
    def private(self) -> Path:
        """The user's own subdirectory (0700): lock, socket, console URL, xDS bootstrap."""
        return self.root / PRIVATE_DIR

    @property
    def lock(self) -> Path:
        """The supervisor's lock (its pid inside)."""
        return self.private / SUPERVISOR_LOCK_FILE

    @property
    def socket(self) -> Path:
        """The control plane's socket (a symlink to :meth:`bound_socket`, or the socket)."""
        return self.private / SOCKET_FILE

    def bound_socket(self, pid: int) -> Path:
        """The socket a supervisor of pid ``pid`` binds: ``control-PID.sock``."""
        sock = self.socket
        return sock.with_name(f"{sock.stem}-{pid}{sock.suffix}")

    @property
    def events(self) -> Path:
        """The timeline of the running (or last) cluster; the run before: ``events.1.jsonl``."""
        return self.root / EVENTS_FILE

    @property
    def events_previous(self) -> Path:
        """The timeline of the run before (moved there when a new run starts)."""
        return self.root / EVENTS_PREVIOUS_FILE

    @property
    def clients(self) -> Path:
        """Balancing clients' statistics, one ``<pid>-<n>.json`` per client."""
        return self.root / CLIENTS_DIR

    def client_stats(self, client_id: str) -> Path:
        """The statistics file of client ``client_id`` (``<pid>-<n>``)."""
        return self.clients / f"{client_id}.json"

    @property
    def console_url(self) -> Path:
        """The URL (token included, so 0600) of a background cluster's web console."""
        return self.private / CONSOLE_URL_FILE

    @property
    def xds_bootstrap(self) -> Path:
        """The running cluster's xDS bootstrap (gRFC A27): where its ADS server listens."""
        return self.private / XDS_BOOTSTRAP_FILE

    @property
    def logs(self) -> Path:
        return self.root / LOG_DIR

    def log(self, name: str | None = None) -> Path:
        """The log of instance ``name``; None: the supervisor's own log."""
        return self.logs / log_file_name(name)

    @property
    def daemon_out(self) -> Path:
        """stdout/stderr of a background supervisor."""
        return self.logs / DAEMON_OUT_FILE


def log_file_name(name: str | None) -> str:
    """``greeter.2.log``; the supervisor's is ``devcluster.log``, so an instance named
    ``devcluster`` gets ``devcluster.supervisor.instance.log`` (no instance name contains
    ``.instance``: the only dot in a name is before its number)."""
    if name is None:
        return f"{SYSTEM_LOG}.log"
    return f"{name}.instance.log" if name == SYSTEM_LOG else f"{name}.log"


def instance_of_log(file_name: str) -> str | None:
    """The instance whose log ``file_name`` is (None: the supervisor's log or not a log)."""
    stem = file_name.removesuffix(".log")
    if stem in (file_name, SYSTEM_LOG):
        return None
    return stem.removesuffix(".instance") if stem == f"{SYSTEM_LOG}.instance" else stem


def layout(root: Path) -> Layout:
    """The files of the state dir ``root``."""
    return Layout(root)


def temp_beside(path: Path) -> Path:
    """The hidden temp name a file is written to before ``os.replace`` publishes it
    (``.registry.json.tmp``, ``clients/.123-1.json.tmp``)."""
    return path.with_name(f".{path.name}.tmp")
