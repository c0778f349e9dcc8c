"""The embedded registry: one JSON file in the state dir, safe across processes.

Writers serialise on ``fcntl.flock`` of ``registry.lock`` and publish with
``os.replace``, so readers never lock and never see a torn file, and concurrent
writers (supervisor, ``devcluster weight``, a test) never lose each other's update.
Watchers follow the *directory* with watchfiles: ``os.replace`` swaps the file's
inode, which would blind a watch on the file itself.

>>> reg = FileRegistry(tmp_path)                                  # doctest: +SKIP
>>> reg.register(Record("server1", "server", "127.0.0.1:5000"))   # doctest: +SKIP
>>> reg.update("server1", weight=3).weight                        # doctest: +SKIP
3
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from devcluster import defaults
from devcluster.errors import CorruptRegistryError, RegistryError, UnknownInstanceError, UsageError
from devcluster.registry import codec
from devcluster.registry.base import Registry
from devcluster.registry.liveness import apply_liveness
from devcluster.registry.record import Record, Snapshot
from devcluster.registry.validate import checked, checked_all

log = logging.getLogger(__name__)

# The state dir's names: devcluster.statedir documents them (the registry may import
# only the defaults leaf, where they are spelled).
REGISTRY_FILE = defaults.REGISTRY_FILE
LOCK_FILE = defaults.REGISTRY_LOCK_FILE
# One fixed temp name (safe: only the lock holder writes it) keeps watchfiles' set of
# changed paths from growing during a burst of writes, so watchers still get a snapshot
# every ~2 steps (measured: every 8 ms under 1200 writes/s) instead of one per debounce
# (58 ms with a fresh temp name per write).
_TMP_FILE = defaults.REGISTRY_TMP_FILE

# watchfiles polls its Rust change set every `step` ms and delivers once the set has
# been stable for one step, so a change is seen 1-2 steps after it lands, and an idle
# watcher wakes 1000/step times a second. Measured with bench/watch_latency.py on a
# 2-core VM (100-300 writes from another process; idle CPU over 10-30 s; ranges over
# 2-5 runs; scheduler hiccups make single p99s jump by several ms):
#   debounce/step      p50 ms    p99 ms     idle CPU
#   1600/50 (default)  81-84     94         0.10-0.20 %
#   50/1               1.7-1.8   2.3-5.5    1.60-1.90 %  over the 1 % budget
#   50/2               3.1-3.4   4.8-6.6    0.80-1.00 %
#   50/3               4.1-4.9   6.2-8.0    0.53-1.00 %  (one run: p99 16.9)
#   50/4  <- chosen    5.8-6.4   8.2-9.8    0.53-0.80 %
#   50/5               5.9-8.1   9.9-10.3   0.40-0.73 %  p99 over 10 ms
#   50/10              14.6-15.8 20.4-22.1  0.20-0.57 %
# Step 4 is the largest step whose p99 stays under 10 ms, which leaves the most CPU
# headroom. The idle cost is the wakeups themselves: a bare `time.sleep(0.004)` loop
# costs ~0.7 % here too. `debounce` only caps how long a set that keeps growing is held
# back (see _TMP_FILE); 50 ms keeps that worst case short.
# That table is the watchfiles fallback (not Linux). On Linux watchers block on inotify
# (registry/filewatch.py): a change is read as soon as the kernel reports it, an idle
# watcher never wakes but to rescan, and `step` only spaces re-reads during a burst of
# writes (at most 1000/step a second); `debounce` is not used there.
DEFAULT_STEP_MS = 4
DEFAULT_DEBOUNCE_MS = 50
# Watchers also re-read this often when nothing happened (watchfiles' rust_timeout with
# yield_on_timeout): it catches a write that landed between the first snapshot and
# watchfiles arming, a process dying without a registry write (liveness), and a state
# dir deleted and re-created. A re-read is ~0.25 ms + ~0.05 ms per running record.
DEFAULT_RESCAN_MS = 1000

MAX_WEIGHT = defaults.MAX_WEIGHT

T = TypeVar("T")
Changes = Mapping[str, Mapping[str, Any]]


class FileRegistry(Registry):
    """Registry kept in ``<state_dir>/registry.json``.

    ``check_liveness`` makes :meth:`snapshot` and :meth:`watch` report running records
    whose process is gone as ``exited``; ``debounce_ms``/``step_ms`` tune watchfiles and
    ``rescan_ms`` is how often an idle watcher re-reads anyway.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        check_liveness: bool = True,
        debounce_ms: int = DEFAULT_DEBOUNCE_MS,
        step_ms: int = DEFAULT_STEP_MS,
        rescan_ms: int = DEFAULT_RESCAN_MS,
    ) -> None:
        self._dir = Path(state_dir)
        self.check_liveness = check_liveness
        self.debounce_ms = debounce_ms
        self.step_ms = step_ms
        self.rescan_ms = rescan_ms

    def __repr__(self) -> str:
        return f"FileRegistry({str(self._dir)!r})"

    @property
    def state_dir(self) -> Path:
        """The directory holding the registry, its lock and its temp file."""
        return self._dir

    @property
    def path(self) -> Path:
        """The registry file."""
        return defaults.layout(self._dir).registry

    @property
    def lock_path(self) -> Path:
        """The file writers ``flock``; never replaced, so every writer locks the same inode."""
        return defaults.layout(self._dir).registry_lock

    # -- reading ------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The registry now (liveness-corrected if ``check_liveness``); missing file = empty."""
        snap = self._read()
        return apply_liveness(snap) if self.check_liveness else snap

    def _read(self) -> Snapshot:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return Snapshot(0)
        except OSError as e:
            raise RegistryError(f"cannot read registry {self.path}: {e.strerror}") from e
        return codec.loads(data, self.path)

    # -- writing ------------------------------------------------------------------

    def register(self, record: Record) -> Record:
        """Insert or replace ``record`` (``updated_at`` set to now); return it as stored."""

        def change(_current: Snapshot, records: dict[str, Record], now: float) -> Record:
            stored = checked(record, updated_at=now)
            records[stored.name] = stored
            return stored

        return self._write(change)[1]

    def update(self, name: str, **fields: Any) -> Record:
        """Change fields of one record in one write; return it as stored.

        Unknown ``name`` -> UnknownInstanceError, a bad value -> UsageError; either
        way nothing is written.
        """
        return self.update_many({name: fields}).records[name]

    def update_many(self, changes: Changes) -> Snapshot:
        """Change several records in one write (one revision); return the stored snapshot."""
        return self.modify(lambda _current: changes)

    def modify(self, decide: Callable[[Snapshot], Changes]) -> Snapshot:
        """Read-modify-write under the lock: ``decide(current)`` returns the changes.

        The way to change a field based on its current value without losing a
        concurrent update, e.g. a counter::

            reg.modify(lambda s: {"server1": {"restarts": s.records["server1"].restarts + 1}})
        """

        def change(current: Snapshot, records: dict[str, Record], now: float) -> None:
            wanted = decide(current)
            unknown = sorted(set(wanted) - set(records))
            if unknown:
                raise UnknownInstanceError(unknown[0], list(records))
            records.update(checked_all(wanted, records, now))

        return self._write(change)[0]

    def deregister(self, name: str) -> None:
        """Remove a record; an absent one is no error and causes no write."""
        if name not in self._read().records:
            return

        def change(_current: Snapshot, records: dict[str, Record], _now: float) -> None:
            records.pop(name, None)

        self._write(change)

    def reset(self, records: Iterable[Record]) -> Snapshot:
        """Replace every record (a fresh ``up``). A corrupt file is moved aside first."""
        fresh = list(records)
        names = [r.name for r in fresh]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise UsageError(f"duplicate instance name(s) {', '.join(dupes)} in registry reset")

        def change(_current: Snapshot, records: dict[str, Record], now: float) -> None:
            records.clear()
            records.update((r.name, checked(r, updated_at=now)) for r in fresh)

        return self._write(change, recover_corrupt=True)[0]

    def recover(self) -> Path | None:
        """Move a corrupt registry file aside so a fresh one can start; never deletes it.

        Returns the new path (``registry.json.corrupt-YYYYmmdd-HHMMSS``), or None when
        the file is missing or sound.
        """
        if not self.path.exists():
            return None
        with self._locked():
            try:
                self._read()
            except CorruptRegistryError:
                return self._move_aside()
            return None

    def _write(
        self,
        change: Callable[[Snapshot, dict[str, Record], float], T],
        *,
        recover_corrupt: bool = False,
    ) -> tuple[Snapshot, T]:
        """Lock, read, ``change(current, records, now)`` edits ``records`` in place, write.

        ``change`` may raise to abort: the file is then untouched.
        """
        self.ensure_state_dir()
        with self._locked() as lock_fd:
            corrupt: CorruptRegistryError | None = None
            try:
                current = self._read()
            except CorruptRegistryError as e:
                if not recover_corrupt:
                    raise
                corrupt, current = e, Snapshot(max(_revision_after([self.path]),
                                                   _remembered(lock_fd)))
            if current.revision == 0 and corrupt is None:
                # No file (deleted, or a corrupt one moved aside): continue past the last
                # revision written, remembered by the lock, or shown by a moved-aside file.
                current = Snapshot(max(_remembered(lock_fd), _revision_after(self._dir.glob(
                    f"{defaults.REGISTRY_CORRUPT_PREFIX}*"))))
            records = dict(current.records)
            result = change(current, records, time.time())
            snap = Snapshot(current.revision + 1, MappingProxyType(dict(sorted(records.items()))))
            text = codec.dumps(snap)
            if corrupt is not None:  # only now: a failed change leaves the user's file be
                log.warning("%s; moved it to %s", corrupt, self._move_aside())
            self._publish(text)
            _remember(lock_fd, snap.revision)
        return snap, result

    def _publish(self, text: str) -> None:
        tmp = defaults.layout(self._dir).registry_tmp
        try:
            fd = _open_tmp(tmp)
            with open(fd, "wb") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                # Data on disk before the rename, or a crash could publish an empty file.
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise RegistryError(f"cannot write registry {self.path}: {e.strerror}") from e

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        # A fresh descriptor per call: flock excludes per open file description, so
        # this also serialises threads of one process.
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise RegistryError(f"cannot open registry lock {self.lock_path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the lock, even if this process is killed

    def _move_aside(self) -> Path:
        """Rename the (corrupt) file to a free ``.corrupt-<stamp>`` name; caller holds the lock."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        where = defaults.layout(self._dir)
        n = 0
        target = where.registry_corrupt(stamp)
        while target.exists():
            n += 1
            target = where.registry_corrupt(stamp, n)
        try:
            os.rename(self.path, target)
        except OSError as e:
            raise RegistryError(f"cannot move corrupt registry {self.path} aside: {e}") from e
        return target

    def ensure_state_dir(self) -> Path:
        """Create the state dir (mode 0700: it will hold the control socket) if missing."""
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise RegistryError(f"cannot create state dir {self._dir}: {e.strerror}") from e
        return self._dir

    # -- watching -----------------------------------------------------------------

    def watch(self, stop: threading.Event | None = None) -> Iterator[Snapshot]:
        """Yield the registry now, then again after every change, until ``stop`` is set.

        Works from any thread (on Linux it blocks on inotify; a
        :class:`~devcluster.registry.inotify.WatchStop` as ``stop`` wakes it at once,
        a plain Event within 50 ms). A snapshot equal to the last one yielded is
        skipped; one whose records changed only by liveness is not. A state dir
        deleted under the watcher is re-created (0700) and watched again.
        """
        from devcluster.registry import filewatch  # only watchers pay for it

        return filewatch.watch(self, stop)

    def awatch(self) -> AsyncIterator[Snapshot]:
        """Async twin of :meth:`watch`; ends when the consumer stops iterating.

        On Linux it waits on the event loop itself (no thread); elsewhere watchfiles
        waits in a worker thread that a cancelled consumer stops within one step.
        """
        from devcluster.registry import filewatch

        return filewatch.awatch(self)


def _open_tmp(tmp: Path) -> int:
    """The temp file, never through a link planted at its name (only the lock holder
    writes it, so a link there is no writer's: it is removed and the file created)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        return os.open(tmp, flags, 0o644)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
    tmp.unlink()
    return os.open(tmp, flags | os.O_EXCL, 0o644)


# The lock file remembers the last revision written (it is never replaced, and a deleted
# or moved-aside registry leaves it), fixed width so it is overwritten in place.
_REMEMBERED_WIDTH = 20


def _remembered(lock_fd: int) -> int:
    """The last revision written, as the lock file remembers it (0: none, or unreadable)."""
    try:
        text = os.pread(lock_fd, _REMEMBERED_WIDTH + 1, 0).strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def _remember(lock_fd: int, revision: int) -> None:
    with contextlib.suppress(OSError):  # an aid: the file itself carries the revision
        os.pwrite(lock_fd, f"{revision:0{_REMEMBERED_WIDTH}d}\n".encode(), 0)


_REVISION = re.compile(rb'"revision"\s*:\s*(\d{1,18})')


def _revision_after(corrupt: Iterable[Path]) -> int:
    """The revision a fresh file continues from after ``corrupt`` files: past the last
    revision each still shows, and past its mtime in seconds (a floor above any revision
    a watcher may remember, when the number is unreadable or was cut short), so a
    watcher that remembers a revision never takes the fresh file for an old one."""
    floor = 0
    for path in corrupt:
        try:
            head = path.read_bytes()[:4096]  # "revision" is the second key: near the top
            mtime = int(path.stat().st_mtime)
        except OSError:
            continue
        found = _REVISION.search(head)
        floor = max(floor, mtime, int(found.group(1)) if found else 0)
    return floor
