# ruff: noqa: E501 - the docstring's table is markdown, one row per line, for the README
"""The state dir: every file devcluster keeps in it, its format and its version, and the
supervisor's lock.

The state dir is ``--state-dir`` > ``$DEVCLUSTER_HOME`` > ``.devcluster`` beside the
Procfile (:func:`state_dir`); it is created 0700 and refused when other users could
replace its files (:func:`prepare`). It holds:

| Path | Written by | Format (version) | What it is |
|---|---|---|---|
| `registry.json` | every registry writer (supervisor, `weight`, `enable`, tests) | JSON `{"version", "revision", "instances"}` (`version` 1; other versions are refused) | the file registry: one record per instance; `revision` grows on every write |
| `registry.lock` | registry writers | empty; `flock`ed, never replaced | serialises registry writers |
| `.registry.json.tmp` | the registry writer holding the lock | as `registry.json` | written, fsynced, then `os.replace`d onto `registry.json` |
| `registry.json.corrupt-YYYYmmdd-HHMMSS[-N]` | a fresh `up` (or `recover()`) finding `registry.json` unreadable | whatever it was | the unreadable registry, moved aside, never deleted |
| `supervisor.lock` | the supervisor (taken by `up -d` and inherited) | its pid as text; `flock`ed | held while a supervisor runs: `running_pid()` |
| `control.sock` | the supervisor | gRPC `devcluster.Control` over a unix socket (0600) | symlink to `control-PID.sock` (or the socket itself) |
| `control-PID.sock` | the supervisor of pid PID | as `control.sock` | the socket actually bound (a path of this run, so a stale one is never reused) |
| `events.jsonl` | the supervisor | JSON lines, one event each (`version` 1; lines without it are from before versions and read the same) | the timeline of the current (or last) run |
| `events.1.jsonl` | the supervisor, at start | as `events.jsonl` | the timeline of the run before (rotated) |
| `clients/<pid>-<n>.json` | each balancing client, at most once a second | JSON `{"version", "pid", "id", "label", "started_at", "updated_at", "interval", "instances"}` (`version` 1; files without it are read the same) | calls/s, failures, p50 and ejections per instance, for `top` and the console; a dead client's file is pruned |
| `clients/.<pid>-<n>.json.tmp` | the client | as above | the temp file of an atomic write |
| `logs/<name>.log` | the supervisor | text lines, each `YYYY-MM-DDTHH:MM:SS.ffffff TEXT` (local time) | one instance's stdout/stderr, each line written once (`devcluster.instance.log` for an instance named `devcluster`) |
| `logs/<name>.log.N` | the supervisor | as `<name>.log` | the rotated files: past `log_max` bytes a log becomes `.1` (`.1` becomes `.2`...), `log_keep` are kept |
| `logs/devcluster.log` | the supervisor | as `<name>.log` | the supervisor's own lines (`devcluster logs` interleaves them with the instances' by their stamps) |
| `logs/supervisor.out` | a background supervisor (`up -d`, the API) | text | its own stdout/stderr (a traceback if it crashed) |
| `console.url` | a supervisor with `--console` | one line: the URL with its token (0600) | where the web console is |
| `xds-bootstrap.json` | the supervisor, once its xDS server listens; removed when it stops | JSON, gRPC's xDS bootstrap (gRFC A27): `xds_servers[0].server_uri` and `node` | what `$GRPC_XDS_BOOTSTRAP` points at: any gRPC client dialling `xds:///SERVICE` follows the cluster |

Every name is a constant here (:data:`REGISTRY_FILE`...), every path a property of
:func:`layout` (``layout(state_dir).registry``...): nothing else spells a file name.
The names are defined in :mod:`devcluster.defaults`, the leaf the registry may import,
and re-exported here, where they are documented; import them from here.

>>> layout(state_dir(Path("/srv/app/Procfile"), None, environ={})).socket
PosixPath('/srv/app/.devcluster/control.sock')
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from devcluster.defaults import (
    CLIENT_STATS_FORMAT_VERSION,
    CLIENTS_DIR,
    CONSOLE_URL_FILE,
    DAEMON_OUT_FILE,
    EVENTS_FILE,
    EVENTS_FORMAT_VERSION,
    EVENTS_PREVIOUS_FILE,
    LOG_DIR,
    REGISTRY_CORRUPT_PREFIX,
    REGISTRY_FILE,
    REGISTRY_FORMAT_VERSION,
    REGISTRY_LOCK_FILE,
    REGISTRY_TMP_FILE,
    SOCKET_FILE,
    STATE_DIR_NAME,
    SUPERVISOR_LOCK_FILE,
    SYSTEM_LOG,
    XDS_BOOTSTRAP_FILE,
    Layout,
    instance_of_log,
    layout,
    log_file_name,
    state_dir,
    temp_beside,
)
from devcluster.errors import ClusterRunningError, DevclusterError

__all__ = [
    "CLIENTS_DIR",
    "CLIENT_STATS_FORMAT_VERSION",
    "CONSOLE_URL_FILE",
    "DAEMON_OUT_FILE",
    "EVENTS_FILE",
    "EVENTS_FORMAT_VERSION",
    "EVENTS_PREVIOUS_FILE",
    "LOG_DIR",
    "REGISTRY_CORRUPT_PREFIX",
    "REGISTRY_FILE",
    "REGISTRY_FORMAT_VERSION",
    "REGISTRY_LOCK_FILE",
    "REGISTRY_TMP_FILE",
    "SOCKET_FILE",
    "STATE_DIR_NAME",
    "SUPERVISOR_LOCK_FILE",
    "SYSTEM_LOG",
    "XDS_BOOTSTRAP_FILE",
    "Claim",
    "Layout",
    "hold_lock",
    "instance_of_log",
    "layout",
    "log_file_name",
    "prepare",
    "running_pid",
    "socket_path",
    "state_dir",
    "take_lock",
    "temp_beside",
]


def socket_path(state_dir: Path) -> Path:
    """The control socket's path in ``state_dir``."""
    return layout(state_dir).socket


def prepare(state_dir: Path) -> bool:
    """Create the state dir (0700) if missing, else check that it is safe; True if created.

    An existing directory's mode is never changed (it may be shared, like /tmp). One
    whose files other users could replace (writable by them without the sticky bit)
    is refused: the control socket and the registry would not be ours to trust.
    """
    try:
        state_dir.parent.mkdir(parents=True, exist_ok=True)
        state_dir.mkdir(mode=0o700)
        return True
    except FileExistsError:
        pass
    except OSError as e:
        raise DevclusterError(f"cannot use {state_dir} as the state dir ({e.strerror}); "
                              "pass --state-dir DIR with a directory you can write") from None
    try:
        st = state_dir.stat()
    except OSError as e:
        raise DevclusterError(f"cannot use {state_dir} as the state dir ({e.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise DevclusterError(f"cannot use {state_dir} as the state dir (not a directory); "
                              "pass --state-dir DIR with a directory")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise DevclusterError(
            f"state dir {state_dir} is writable by other users (mode "
            f"{stat.S_IMODE(st.st_mode):04o}), who could replace its files; pass --state-dir "
            "with a directory only you can write (devcluster creates a missing one 0700)")
    return False


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class Claim:
    """A supervisor's hold on its state dir: the lock file it flocks, by identity.

    ``mine()`` is checked before every write into the state dir: a supervisor whose
    state dir was deleted and taken by a newer run never touches that run's files.
    """

    def __init__(self, state_dir: Path, f: IO[str]) -> None:
        self.state_dir = state_dir
        self._f = f
        self.identity = _identity(os.fstat(f.fileno()))

    def __repr__(self) -> str:
        return f"<Claim {self.state_dir} ino={self.identity[1]}>"

    def mine(self) -> bool:
        """The lock file at the state dir's path is the one we hold."""
        try:
            return _identity(os.stat(layout(self.state_dir).lock)) == self.identity
        except OSError:
            return False

    def retake(self) -> bool:
        """After the state dir or its lock vanished: re-create and lock it. False when
        another supervisor holds it now (then nothing is touched)."""
        try:
            prepare(self.state_dir)
            f = _take(self.state_dir)
        except (DevclusterError, OSError):
            return False
        self._f.close()
        self._f = f
        self.identity = _identity(os.fstat(f.fileno()))
        return True

    def release(self) -> None:
        self._f.close()


def take_lock(state_dir: Path) -> IO[str]:
    """Lock the state dir for a supervisor about to start (``up -d``), who inherits it."""
    try:
        return _take(state_dir)
    except OSError as e:
        raise DevclusterError(f"cannot use {state_dir} as the state dir ({e.strerror}); "
                              "pass --state-dir DIR with a directory you can write") from None


def _take(state_dir: Path, inherited: int | None = None) -> IO[str]:
    """Open (or adopt ``inherited``) and flock the lock file, write our pid;
    ClusterRunningError if another holds it."""
    if inherited is not None:
        f = open(inherited, "a+", encoding="utf-8")  # noqa: SIM115 - held for the run
    else:
        f = open(layout(state_dir).lock, "a+", encoding="utf-8")  # noqa: SIM115
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise ClusterRunningError(
            f"a cluster is already running in {state_dir} (supervisor pid {pid}); "
            "stop it with `devcluster down` or use another --state-dir") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


@contextlib.contextmanager
def hold_lock(state_dir: Path, inherited: int | None = None) -> Iterator[Claim]:
    """Hold ``supervisor.lock`` for the supervisor's life; refuse if another holds it.

    ``inherited``: the lock file, already locked by the process that started us."""
    prepare(state_dir)
    try:
        f = _take(state_dir, inherited)
    except OSError as e:
        raise DevclusterError(f"cannot use {state_dir} as the state dir ({e.strerror}); "
                              "pass --state-dir DIR with a directory you can write") from None
    claim = Claim(state_dir, f)
    try:
        yield claim
    finally:
        claim.release()


def running_pid(state_dir: Path) -> int | None:
    """The pid of the supervisor holding the state dir's lock, else None."""
    path = layout(state_dir).lock
    try:
        with open(path, encoding="utf-8") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = f.read().strip()
                return int(text) if text.isdigit() else -1
            return None
    except (FileNotFoundError, PermissionError):
        return None
    except OSError as e:  # e.g. the state dir is a file
        raise DevclusterError(f"cannot use {state_dir} as the state dir ({e.strerror}); "
                              "pass --state-dir DIR with a directory") from None
