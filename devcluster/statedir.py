# ruff: noqa: E501 - the docstring's table is markdown, one row per line, for the docs (docs/how-it-works.md)
"""The state dir: every file devcluster keeps in it, its format and its version, and the
supervisor's lock.

The state dir is ``--state-dir`` > ``$DEVCLUSTER_HOME`` > ``.devcluster`` beside the
Procfile (:func:`state_dir`); it is created 0700 and refused when other users could
replace its files, or when it (or its ``logs/`` or ``private/``) is another user's
(:func:`prepare`). What no one else may touch (the lock, the control socket, the console
URL, the xDS bootstrap) is in ``private/``, 0700. Every file devcluster writes in place
is opened with ``O_NOFOLLOW`` (:func:`open_nofollow`); the others are published by
rename, which replaces a planted link. It holds:

| Path | Written by | Format (version) | What it is |
|---|---|---|---|
| `registry.json` | every registry writer (supervisor, `weight`, `enable`, tests) | JSON `{"version", "revision", "instances"}` (`version` 1; other versions are refused) | the file registry: one record per instance; `revision` grows on every write |
| `registry.lock` | registry writers | the last revision written (20 digits); `flock`ed, never replaced | serialises registry writers; a registry deleted or moved aside continues past that revision |
| `.registry.json.tmp` | the registry writer holding the lock | as `registry.json` | written, fsynced, then `os.replace`d onto `registry.json` |
| `registry.json.corrupt-YYYYmmdd-HHMMSS[-N]` | a fresh `up` (or `recover()`) finding `registry.json` unreadable | whatever it was | the unreadable registry, moved aside, never deleted |
| `private/` | `up` (and the API), before anything else | a directory of yours, 0700 (made 0700 again if its mode was opened up) | holds what no other user may read, replace or plant a link at; refused if it is a symbolic link or another user's |
| `private/supervisor.lock` | the supervisor (taken by `up -d` and inherited) | its pid as text; `flock`ed | held while a supervisor runs: `running_pid()` |
| `private/control.sock` | the supervisor | gRPC `devcluster.Control` over a unix socket (0600) | symlink to `control-PID.sock` (or the socket itself) |
| `private/control-PID.sock` | the supervisor of pid PID | as `control.sock` | the socket actually bound (a path of this run, so a stale one is never reused) |
| `events.jsonl` | the supervisor | JSON lines, one event each (`version` 1; lines without it are from before versions and read the same) | the timeline of the current (or last) run |
| `events.1.jsonl` | the supervisor, at start | as `events.jsonl` | the timeline of the run before (rotated) |
| `clients/<pid>-<n>.json` | each balancing client, at most once a second, and at once when it applies a registry revision | JSON `{"version", "pid", "id", "label", "started_at", "updated_at", "interval", "revision", "instances"}` (`version` 1; files without `version` or `revision` are read the same) | calls/s, failures, p50 and ejections per instance, for `top` and the console; `revision`: the registry revision the client has applied, which a stop waits for (a file without it: at most 100 ms); a dead client's file is pruned |
| `clients/.<pid>-<n>.json.tmp` | the client | as above | the temp file of an atomic write |
| `logs/` | `up` (and the API) | a directory of yours (or a link to one), 0755 | refused if another user's or writable by others without the sticky bit |
| `logs/<name>.log` | the supervisor | text lines, each `YYYY-MM-DDTHH:MM:SS.ffffff TEXT` (local time) | one instance's stdout/stderr, each line written once (`devcluster.instance.log` for an instance named `devcluster`) |
| `logs/<name>.log.N` | the supervisor | as `<name>.log` | the rotated files: past `log_max` bytes a log becomes `.1` (`.1` becomes `.2`...), `log_keep` are kept |
| `logs/devcluster.log` | the supervisor | as `<name>.log` | the supervisor's own lines (`devcluster logs` interleaves them with the instances' by their stamps) |
| `logs/supervisor.out` | a background supervisor (`up -d`, the API) | text | its own stdout/stderr (a traceback if it crashed) |
| `private/console.url` | a supervisor with `--console` | one line: the URL with its token (0600; written as `.console.url.tmp`, then renamed) | where the web console is |
| `private/xds-bootstrap.json` | the supervisor, once its xDS server listens; removed when it stops | JSON, gRPC's xDS bootstrap (gRFC A27): `xds_servers[0].server_uri` and `node` | what `$GRPC_XDS_BOOTSTRAP` points at: any gRPC client dialling `xds:///SERVICE` follows the cluster |

Every name is a constant here (:data:`REGISTRY_FILE`...), every path a property of
:func:`layout` (``layout(state_dir).registry``...): nothing else spells a file name.
The names are defined in :mod:`devcluster.defaults`, the leaf the registry may import,
and re-exported here, where they are documented; import them from here.

>>> layout(state_dir(Path("/srv/app/Procfile"), None, environ={})).socket
PosixPath('/srv/app/.devcluster/private/control.sock')
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from devcluster.defaults import (
    CLIENT_STATS_FORMAT_VERSION,
    CLIENT_STATS_STALE_AFTER,
    CLIENTS_DIR,
    CONSOLE_URL_FILE,
    DAEMON_OUT_FILE,
    EVENTS_FILE,
    EVENTS_FORMAT_VERSION,
    EVENTS_PREVIOUS_FILE,
    LOG_DIR,
    PRIVATE_DIR,
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
    "CLIENT_STATS_STALE_AFTER",
    "CONSOLE_URL_FILE",
    "DAEMON_OUT_FILE",
    "EVENTS_FILE",
    "EVENTS_FORMAT_VERSION",
    "EVENTS_PREVIOUS_FILE",
    "LOG_DIR",
    "PRIVATE_DIR",
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
    "client_revisions",
    "hold_lock",
    "instance_of_log",
    "layout",
    "log_file_name",
    "open_nofollow",
    "pid_alive",
    "prepare",
    "running_pid",
    "socket_path",
    "state_dir",
    "take_lock",
    "temp_beside",
    "write_replacing",
]


def socket_path(state_dir: Path) -> Path:
    """The control socket's path in ``state_dir``."""
    return layout(state_dir).socket


def prepare(state_dir: Path) -> bool:
    """Create the state dir (0700) if missing, else check that it is safe; True if created.

    Then its ``private/`` (0700) and ``logs/`` subdirectories. An existing state dir's
    mode is never changed (it may be shared, like /tmp). A state dir, ``logs/`` or
    ``private/`` that another user owns, or whose files other users could replace
    (writable by them without the sticky bit), is refused in one line; so is a symbolic
    link planted where devcluster writes a file in place (the lock, the logs).
    """
    created = _make_root(state_dir)
    where = layout(state_dir)
    _own_dir(where.private, private=True)
    _own_dir(where.logs, private=False)
    _refuse_links(where)
    return created


#: The fix named by every refusal of a directory that is not the user's own.
_OWN = "use your own --state-dir (devcluster creates a missing one 0700)"


def _make_root(state_dir: Path) -> bool:
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
    _refuse_foreign(state_dir, st, "state dir")
    return False


def _refuse_foreign(path: Path, st: os.stat_result, what: str) -> None:
    """Refuse a directory another user owns, or whose files other users could replace."""
    if st.st_uid != os.getuid():
        raise DevclusterError(
            f"{what} {path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}): its "
            f"owner could read or replace what devcluster keeps there; {_OWN}")
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise DevclusterError(
            f"{what} {path} is writable by other users (mode "
            f"{stat.S_IMODE(st.st_mode):04o}), who could replace its files; {_OWN}")


def _own_dir(path: Path, *, private: bool) -> None:
    """Create ``path`` (0700 if ``private``) or check an existing one: ours, not open to
    others' writes; ``private/`` must be a real directory, and is made 0700 again if its
    mode was opened up (it is ours). ``logs/`` may be a link to a directory of ours."""
    try:
        path.mkdir(mode=0o700 if private else 0o755)
    except FileExistsError:
        pass
    except OSError as e:
        raise DevclusterError(f"cannot create {path} ({e.strerror}); "
                              "pass --state-dir DIR with a directory you can write") from None
    try:
        st = path.lstat() if private else path.stat()
    except OSError as e:
        raise DevclusterError(f"cannot use {path} ({e.strerror}); {_OWN}") from None
    if not stat.S_ISDIR(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise DevclusterError(f"cannot use {path} ({kind}); remove it or {_OWN}")
    what = "private dir" if private else "log dir"
    if private and st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.chmod(path, 0o700)  # ours: closed again rather than refused
        return
    _refuse_foreign(path, st, what)


def _refuse_links(where: Layout) -> None:
    """One line for a symbolic link where a file is written in place (open_nofollow would
    refuse it later, with less to say). Files published by rename replace a link."""
    fixed = [where.lock, where.registry_lock, where.daemon_out]
    try:
        logs = [p for p in where.logs.iterdir() if p.name.endswith(".log")]
    except OSError:
        logs = []
    for path in [*fixed, *logs]:
        if path.is_symlink():
            raise DevclusterError(f"{path} is a symbolic link, which devcluster never writes "
                                  f"through; remove it, or {_OWN}")


def open_nofollow(path: str | os.PathLike[str], flags: int, mode: int = 0o644) -> int:
    """``os.open`` that never follows a symbolic link at ``path`` itself (``O_NOFOLLOW``,
    ``O_CLOEXEC``): every file devcluster writes in place in the state dir is opened so.
    It fits ``open(path, "a", opener=open_nofollow)``. A link there raises OSError
    (ELOOP) whose ``strerror`` says so and how to fix it."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise OSError(errno.ELOOP, "a symbolic link, which devcluster never writes through; "
                      "remove it", os.fspath(path)) from None


def write_replacing(path: Path, text: str, mode: int = 0o600) -> None:
    """Publish ``text`` at ``path`` by writing a temp file beside it and renaming it over:
    a link planted at ``path`` is replaced, never written through; readers see the old
    file or the new one."""
    tmp = temp_beside(path)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


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
            return _identity(os.lstat(layout(self.state_dir).lock)) == self.identity
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
        raise _cannot_use(state_dir, e) from None


def _cannot_use(state_dir: Path, e: OSError) -> DevclusterError:
    if e.errno == errno.ELOOP:
        return DevclusterError(f"{e.filename} is {e.strerror}, or {_OWN}")
    return DevclusterError(f"cannot use {state_dir} as the state dir ({e.strerror}); "
                           "pass --state-dir DIR with a directory you can write")


def _lock_opener(path: str, flags: int) -> int:
    return open_nofollow(path, flags, 0o600)


def _take(state_dir: Path, inherited: int | None = None) -> IO[str]:
    """Open (or adopt ``inherited``) and flock the lock file, write our pid;
    ClusterRunningError if another holds it."""
    if inherited is not None:
        f = open(inherited, "a+", encoding="utf-8")  # noqa: SIM115 - held for the run
    else:
        f = open(layout(state_dir).lock, "a+", encoding="utf-8", opener=_lock_opener)  # noqa: SIM115
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
        raise _cannot_use(state_dir, e) from None
    claim = Claim(state_dir, f)
    try:
        yield claim
    finally:
        claim.release()


def running_pid(state_dir: Path) -> int | None:
    """The pid of the supervisor holding the state dir's lock, else None."""
    path = layout(state_dir).lock
    try:
        with open(path, encoding="utf-8", opener=open_nofollow) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = f.read().strip()
                return int(text) if text.isdigit() else -1
            return None
    except (FileNotFoundError, PermissionError):
        return None
    except OSError as e:  # e.g. the state dir is a file
        raise _cannot_use(state_dir, e) from None


def pid_alive(pid: int) -> bool:
    """True while a process ``pid`` exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def client_revisions(state_dir: Path, now: float | None = None) -> list[int | None]:
    """The registry revision each live balancing client says it has applied (its file's
    ``revision``; None for a client that does not say). Live: its pid exists and its
    file is fresher than :data:`CLIENT_STATS_STALE_AFTER`. What a stop waits on
    (:mod:`devcluster.supervisor.drain`); here so that the supervisor reads the files
    the client writes without importing the client."""
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(layout(state_dir).clients))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found: list[int | None] = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(".json"):
            continue
        try:
            with open(entry.path, encoding="utf-8") as f:
                doc = json.load(f)
            pid, updated = int(doc["pid"]), float(doc.get("updated_at", 0))
            revision = doc.get("revision")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # vanished between listing and reading, or not one of ours
        if now - updated <= CLIENT_STATS_STALE_AFTER and pid_alive(pid):
            found.append(revision if isinstance(revision, int) else None)
    return found
