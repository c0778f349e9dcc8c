"""Client statistics shared through the state dir: who serves how much, seen by the clients.

A balancing channel counts, per instance, the calls that went well and badly, their
latency and whether it ejected the instance; :class:`StatsPublisher` writes that to
``<state_dir>/clients/<pid>-<id>.json`` at most once a second (atomically: temp file,
``os.replace``) and removes the file on close. The file also says which registry
revision the channel has applied (:meth:`StatsPublisher.applied`), rewritten at once
when that changes: a stopping instance waits for it rather than a fixed delay
(devcluster.supervisor.drain). :func:`read_traffic` sums the files of
the live clients into calls/s and failed/s per instance, for ``top`` and the console.

>>> stats = StatsPublisher(".devcluster")                              # doctest: +SKIP
>>> channel = BalancedChannel("server", ".devcluster", on_call=stats.on_call)  # doctest: +SKIP
>>> read_traffic(".devcluster")["server1"].calls_per_s                 # doctest: +SKIP
41.0

Publishing is off with ``DEVCLUSTER_CLIENT_STATS=0`` (or ``enabled=False``): then
:func:`stats_on_call` hands back the caller's own ``on_call`` and costs nothing.
This module is a leaf: it imports nothing of ours (a call is read by its attributes).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from devcluster import statedir
from devcluster.statedir import CLIENT_STATS_FORMAT_VERSION, layout, temp_beside

#: Environment switch: ``0``/``false``/``no``/``off`` turns publishing off.
ENV_SWITCH = "DEVCLUSTER_CLIENT_STATS"
#: Seconds between two writes of one client's file (the issue's "at most once a second").
PUBLISH_INTERVAL = 1.0
#: A file untouched this long is a hung or vanished client: its rates count as 0.
RATE_STALE_AFTER = 3.0
#: A file untouched this long is ignored altogether (a live client rewrites it sooner).
FILE_STALE_AFTER = statedir.CLIENT_STATS_STALE_AFTER
#: An idle client still rewrites its file this often, so readers know it is alive.
HEARTBEAT = 20.0
#: Latency samples kept per instance and window for the p50 (bounded memory per call).
SAMPLES = 256
#: Deadlines in a row after which the channel ejects an instance (its ``eject_after``).
EJECT_AFTER = 2
#: The state dir's clients/ (named in devcluster.statedir; kept here for importers).
CLIENTS_DIR = statedir.CLIENTS_DIR

_ids = itertools.count(1)
_FAILOVER_CODES = frozenset({"UNAVAILABLE"})


class CallLike(Protocol):
    """What a :class:`devcluster.client.CallInfo` gives: the fields used here."""

    instance: str
    ok: bool
    code: str
    latency_ms: float
    retried: list[tuple[str, str]]


def enabled_by_env(environ: dict[str, str] | None = None) -> bool:
    """False when ``$DEVCLUSTER_CLIENT_STATS`` says off (0, false, no, off)."""
    value = (environ if environ is not None else os.environ).get(ENV_SWITCH, "1")
    return value.strip().lower() not in {"0", "false", "no", "off"}


class _Counts:
    """One instance as one client sees it; changed under the publisher's lock."""

    __slots__ = ("deadlines", "ejected", "failed", "ok", "p50_ms", "samples")

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.deadlines = 0
        self.ejected = False
        self.p50_ms: float | None = None
        self.samples: deque[float] = deque(maxlen=SAMPLES)


class StatsPublisher:
    """Per-instance counters of one client, written to the state dir once a second.

    Thread-safe: ``on_call`` may be called from any thread (the sync channel calls it
    in the caller's thread, the asyncio one in the loop's). A daemon thread writes the
    file; :meth:`flush` writes it now; :meth:`close` stops the thread and removes it.

    >>> with StatsPublisher(tmp_path, label="my test") as stats:   # doctest: +SKIP
    ...     channel = BalancedChannel("server", tmp_path, on_call=stats.on_call)
    """

    def __init__(self, state_dir: str | os.PathLike[str], *, enabled: bool | None = None,
                 label: str = "", interval: float = PUBLISH_INTERVAL,
                 clock: Callable[[], float] = time.time) -> None:
        self.enabled = enabled_by_env() if enabled is None else enabled
        self.label = label
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        #: One writer at a time (the timer thread and an explicit flush share a temp file).
        self._write_lock = threading.Lock()
        self._counts: dict[str, _Counts] = {}
        #: Calls answered at the first attempt and not counted yet, (instance, latency
        #: ms). A deque: appending is thread-safe without the lock, and the channel's
        #: per-call path appends through ``count_ok`` with no Python frame (bench
        #: scenario 20). Whatever reads or changes the counts folds them in first,
        #: under the lock, so every event keeps its order.
        self._oks: deque[tuple[str, float]] = deque()
        #: ``count_ok((instance, latency_ms))``: count one call that ``instance``
        #: answered at the first attempt. What :meth:`on_call` does for such a call,
        #: without a CallInfo to build: a balanced channel whose only ``on_call`` is this
        #: publisher calls it directly. (Counts nothing when publishing is off.)
        self.count_ok: Callable[[tuple[str, float]], None] = (
            self._oks.append if self.enabled else _ignore)
        self._changed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.id = f"{os.getpid()}-{next(_ids)}"
        self.path = layout(Path(state_dir)).client_stats(self.id)
        self._started_at = clock()
        self._last_tick = self._started_at
        self._last_write = 0.0
        self._base: dict[str, tuple[int, int]] = {}
        self._rates: dict[str, tuple[float, float]] = {}
        #: The registry revision the channel has applied (None: not told), and what was
        #: last written: a new revision is written at once, with that document's counts.
        self._revision: int | None = None
        self._doc: dict[str, Any] | None = None
        #: Set by :meth:`applied` (and by close): wakes the writer thread before its tick.
        self._wake = threading.Event()
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"devcluster-clientstats-{self.id}")
            self._thread.start()
            atexit.register(self.close)

    def __repr__(self) -> str:
        return f"<StatsPublisher {self.path if self.enabled else 'off'} " \
               f"instances={sorted(self._counts)}>"

    def __enter__(self) -> StatsPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- counting (the hot path: one lock, a few increments) ------------------------

    def on_call(self, info: CallLike) -> None:
        """Count one call (give this, or :func:`stats_on_call`, as a channel's on_call)."""
        if not self.enabled:
            return
        with self._lock:
            self._fold_oks()
            self._changed = True
            for name, code in info.retried:
                self._failed(self._get(name), code, retried=True)
            if info.instance == "-":
                return  # no instance took it (none usable): nobody to count it for
            counts = self._get(info.instance)
            counts.samples.append(info.latency_ms)
            if info.ok:
                counts.ok += 1
                counts.deadlines = 0
                counts.ejected = False
            else:
                self._failed(counts, info.code, retried=False)

    def _fold_oks(self) -> None:
        """Count the calls queued by ``count_ok`` (the lock is held)."""
        oks = self._oks
        while oks:  # only appends can race with this, and popleft takes what is there
            instance, latency_ms = oks.popleft()
            counts = self._counts.get(instance) or self._get(instance)
            counts.samples.append(latency_ms)
            counts.ok += 1
            counts.deadlines = 0
            counts.ejected = False
            self._changed = True

    def _get(self, name: str) -> _Counts:
        counts = self._counts.get(name)
        if counts is None:
            counts = self._counts[name] = _Counts()
        return counts

    @staticmethod
    def _failed(counts: _Counts, code: str, *, retried: bool) -> None:
        # The channel's own rule, seen from outside: one UNAVAILABLE it failed over
        # from, or EJECT_AFTER deadlines in a row, eject; a call that succeeds readmits.
        counts.failed += 1
        if code == "DEADLINE_EXCEEDED":
            counts.deadlines += 1
            if counts.deadlines >= EJECT_AFTER:
                counts.ejected = True
        elif retried and code in _FAILOVER_CODES:
            counts.ejected = True

    def set_ejected(self, instance: str, ejected: bool) -> None:
        """Say exactly when the channel ejects or readmits (a hook for the channel core)."""
        if self.enabled:
            with self._lock:
                self._fold_oks()
                self._get(instance).ejected = ejected
                self._changed = True

    def applied(self, revision: int | None) -> None:
        """The channel now routes by registry ``revision``: have it published at once
        (a stopping instance waits until its watchers say they applied its ``draining``).

        Cheap for the caller (the registry watch thread, or the event loop): the writer
        thread writes. An unchanged revision costs nothing."""
        if self.enabled and revision is not None and revision != self._revision:
            self._revision = revision
            self._wake.set()

    # -- publishing ------------------------------------------------------------------

    def _run(self) -> None:
        # A timer, not a per-call write: the hot path never touches the disk. A revision
        # applied wakes it at once; that write leaves the rate window alone.
        next_tick = time.monotonic() + self.interval
        while True:
            self._wake.wait(max(0.0, next_tick - time.monotonic()))
            if self._stop.is_set():
                return
            # A state dir gone (cluster removed): try again at the next tick.
            with contextlib.suppress(OSError):
                if self._wake.is_set():
                    self._wake.clear()
                    self._publish_revision()
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.interval
                    self.flush(force=False)

    def _publish_revision(self) -> None:
        """Write the last document again with the revision now applied (its counts and
        rates stay those of the last tick); the first document is a full one."""
        with self._write_lock:
            if self._stop.is_set():
                return
            if self._doc is None:
                self._write(self.snapshot())
            else:
                self._write({**self._doc, "revision": self._revision, "updated_at": self._clock()})

    def _write(self, doc: dict[str, Any]) -> None:
        """Publish ``doc`` (the write lock held)."""
        _write_atomic(self.path, doc)
        self._doc, self._last_write = doc, doc["updated_at"]

    def snapshot(self) -> dict[str, Any]:
        """The JSON document this client publishes now (rates over the last tick)."""
        now = self._clock()
        with self._lock:
            self._fold_oks()
            elapsed = max(now - self._last_tick, 1e-6)
            self._last_tick = now
            self._changed = False
            instances = {}
            for name, c in self._counts.items():
                ok0, failed0 = self._base.get(name, (0, 0))
                self._base[name] = (c.ok, c.failed)
                if c.samples:
                    c.p50_ms = _median(c.samples)
                    c.samples.clear()
                instances[name] = {
                    "ok": c.ok, "failed": c.failed,
                    "ok_per_s": round((c.ok - ok0) / elapsed, 3),
                    "failed_per_s": round((c.failed - failed0) / elapsed, 3),
                    "p50_ms": None if c.p50_ms is None else round(c.p50_ms, 3),
                    "ejected": c.ejected,
                }
        return {"version": CLIENT_STATS_FORMAT_VERSION, "pid": os.getpid(), "id": self.id,
                "label": self.label,
                "started_at": self._started_at, "updated_at": now,
                "interval": self.interval, "revision": self._revision, "instances": instances}

    def flush(self, force: bool = True) -> None:
        """Write the file now (``force``), or only if something changed since the last."""
        if not self.enabled or self._stop.is_set():
            return
        with self._write_lock:
            with self._lock:
                self._fold_oks()
                busy = self._changed or any(r != (0.0, 0.0) for r in self._rates.values())
                if not (force or busy or self._clock() - self._last_write >= HEARTBEAT):
                    self._last_tick = self._clock()  # idle: move the rate window on, no write
                    return
            doc = self.snapshot()
            self._rates = {n: (i["ok_per_s"], i["failed_per_s"])
                           for n, i in doc["instances"].items()}
            self._write(doc)

    def close(self) -> None:
        """Stop publishing and remove this client's file (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        atexit.unregister(self.close)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        with self._write_lock, contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _ignore(_call: tuple[str, float]) -> None:
    """``count_ok`` of a publisher that is off."""


def stats_on_call(publisher: StatsPublisher | None,
                  on_call: Callable[[Any], None] | None = None) -> Callable[[Any], None] | None:
    """The ``on_call`` to give a channel: the publisher's, then the caller's own.

    With no publisher, or one switched off, this is ``on_call`` itself: no cost at all.
    """
    if publisher is None or not publisher.enabled:
        return on_call
    if on_call is None:
        return publisher.on_call
    count = publisher.on_call

    def both(info: Any) -> None:
        count(info)
        on_call(info)

    return both


def _median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _write_atomic(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = temp_beside(path)
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a link planted at the temp name is removed, never written through
    fd = statedir.open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, path)  # readers see the old file or the new one, never half of one


# -- reading ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Traffic:
    """One instance's traffic summed over the live clients."""

    calls_per_s: float = 0.0
    failed_per_s: float = 0.0
    ok: int = 0
    failed: int = 0
    p50_ms: float | None = None
    #: How many clients have ejected it right now.
    ejected_by: int = 0
    clients: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"calls_per_s": round(self.calls_per_s, 2),
                "failed_per_s": round(self.failed_per_s, 2), "ok": self.ok,
                "failed": self.failed, "p50_ms": self.p50_ms, "ejected_by": self.ejected_by,
                "clients": self.clients}


#: True while a process exists (defined in devcluster.statedir, which the supervisor reads).
pid_alive = statedir.pid_alive


def live_client_docs(state_dir: str | os.PathLike[str], now: float | None = None,
                     prune: bool = True) -> list[dict[str, Any]]:
    """The documents of live clients; with ``prune``, dead clients' files are removed."""
    directory = layout(Path(state_dir)).clients
    now = time.time() if now is None else now
    docs = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(".json"):
            continue
        try:
            doc = json.loads(Path(entry.path).read_text(encoding="utf-8"))
            pid = int(doc["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # vanished between listing and reading, or not one of ours
        if not pid_alive(pid):
            if prune:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            continue
        if now - float(doc.get("updated_at", 0)) <= FILE_STALE_AFTER:
            docs.append(doc)
    return docs


def read_traffic(state_dir: str | os.PathLike[str], now: float | None = None) -> dict[str, Traffic]:
    """Per instance: calls/s and failed/s summed over every live client of ``state_dir``."""
    now = time.time() if now is None else now
    sums: dict[str, dict[str, Any]] = {}
    for doc in live_client_docs(state_dir, now):
        fresh = now - float(doc.get("updated_at", 0)) <= RATE_STALE_AFTER
        for name, inst in (doc.get("instances") or {}).items():
            s = sums.setdefault(name, {"ok_s": 0.0, "failed_s": 0.0, "ok": 0, "failed": 0,
                                       "p50": [], "ejected": 0, "clients": 0})
            if fresh:
                s["ok_s"] += float(inst.get("ok_per_s", 0))
                s["failed_s"] += float(inst.get("failed_per_s", 0))
            s["ok"] += int(inst.get("ok", 0))
            s["failed"] += int(inst.get("failed", 0))
            if inst.get("p50_ms") is not None:
                s["p50"].append(float(inst["p50_ms"]))
            s["ejected"] += bool(inst.get("ejected"))
            s["clients"] += 1
    return {name: Traffic(calls_per_s=s["ok_s"] + s["failed_s"], failed_per_s=s["failed_s"],
                          ok=s["ok"], failed=s["failed"],
                          p50_ms=round(_median(s["p50"]), 3) if s["p50"] else None,
                          ejected_by=s["ejected"], clients=s["clients"])
            for name, s in sorted(sums.items())}
