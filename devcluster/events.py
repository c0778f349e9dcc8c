"""The cluster's timeline: events, their JSON-lines log, and events read off the registry.

An :class:`Event` is one thing that happened to a cluster: an instance started or
exited (with its code or signal), changed state, was reweighted, enabled or
disabled; a client ejected an instance or failed a call over; a user asked for a
kill. The supervisor appends events to ``<state_dir>/events.jsonl`` with an
:class:`EventLog`; ``Cluster.events()``, the pytest failure report, ``top`` and the
console read them back with :func:`read_events`.

Changes written straight to the registry (``devcluster weight``, ``enable``; a test
calling ``cluster.weight``) never pass through the supervisor: :func:`diff_snapshots`
derives their events from two registry snapshots, as a pure function.

>>> e = Event(1.5, EventKind.STATE, "server2", old="serving", new="killed", who="pid 42")
>>> Event.from_json(e.to_json()) == e
True
>>> e.describe()
'server2 serving -> killed (asked by pid 42)'

This module is a leaf: it imports nothing of ours at run time but the defaults.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devcluster.defaults import EVENTS_FILE, EVENTS_FORMAT_VERSION, EVENTS_PREVIOUS_FILE
from devcluster.statedir import open_nofollow

if TYPE_CHECKING:
    import threading

    from devcluster.registry import Record, Registry, Snapshot

__all__ = ["EVENTS_FILE", "Event", "EventKind", "EventLog", "bad_lines", "diff_snapshots",
           "follow_events", "follow_registry", "fresh_log", "read_events"]


class EventKind(enum.StrEnum):
    """What an event says happened."""

    STARTED = "started"
    """A process of the instance was spawned (``new``: its pid)."""
    EXITED = "exited"
    """The instance's process ended (``code`` or ``signal``)."""
    RESTARTED = "restarted"
    """The instance was started again (``new``: its restart count)."""
    STATE = "state"
    """The instance's state changed from ``old`` to ``new``."""
    WEIGHT = "weight"
    """The registry weight changed from ``old`` to ``new``."""
    ENABLED = "enabled"
    """The instance was enabled (``new`` True) or disabled (``new`` False)."""
    METADATA = "metadata"
    """The instance's registry metadata changed from ``old`` to ``new``."""
    FAULT = "fault"
    """A fault was set on the instance (``new``: what it does) or cleared (``new`` None)."""
    ADDED = "added"
    """The instance appeared in the registry (``up``, ``scale``, ``reload``)."""
    REMOVED = "removed"
    """The instance left the registry (``scale`` down, ``reload``)."""
    ASKED = "asked"
    """Someone (``who``) asked for a verb (``detail``, e.g. ``kill SIGKILL``)."""
    EJECTED = "ejected"
    """A balancing channel stopped sending calls to the instance (``detail``: why)."""
    READMITTED = "readmitted"
    """A balancing channel sends calls to an ejected instance again."""
    FAILOVER = "failover"
    """A call failed on the instance (``code``) and went on to ``new``."""
    FORKSERVER = "forkserver"
    """A preloaded type's fork server died and a new one started (``old``/``new``: pids)."""


#: Seconds since the epoch of 10000-01-01, the first time ``datetime`` cannot show.
_YEAR_10000 = 253_402_300_800.0


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _no_constant(text: str) -> float:
    raise ValueError(f"{text} is not JSON")


@dataclass(frozen=True)
class Event:
    """One thing that happened to a cluster, at ``time`` (seconds since the epoch).

    ``source`` says who saw it: ``supervisor``, ``registry``, ``channel`` or ``test``.
    ``code`` is an exit code (EXITED) or a gRPC status name (FAILOVER); ``signal``
    the signal name that ended a process; ``who`` who asked for it, when known.
    """

    time: float
    kind: EventKind
    instance: str | None = None
    old: Any = None
    new: Any = None
    code: int | str | None = None
    signal: str | None = None
    who: str | None = None
    source: str = "supervisor"
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; every key always present (unknown values are null)."""
        out = asdict(self)
        out["kind"] = self.kind.value
        return out

    def to_json(self) -> str:
        """One line of ``events.jsonl`` (no newline), with the format's ``version``
        first (readers ignore it: a line without one, from before versions, reads the same)."""
        line = {"version": EVENTS_FORMAT_VERSION, **self.to_dict()}
        return json.dumps(line, separators=(",", ":"), default=str)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Event:
        """The event a dict describes; unknown keys (a newer writer) are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["kind"] = EventKind(values["kind"])
        try:
            values["time"] = float(values["time"])
        except OverflowError:  # a 400-digit integer
            raise ValueError(f"time {values['time']!r} is not a time") from None
        if not 0 <= values["time"] < _YEAR_10000:  # what datetime can show; not inf or nan
            raise ValueError(f"time {values['time']!r} is not a time")
        return cls(**values)

    @classmethod
    def from_json(cls, line: str) -> Event:
        """The event of one line; ValueError for a line that is not one, or that holds a
        number JSON cannot carry back out (``1e400``, ``NaN``, ``Infinity``)."""
        return cls.from_dict(json.loads(line, parse_float=_finite, parse_constant=_no_constant))

    def describe(self) -> str:
        """One line for people, without the time: ``server2 exited (signal SIGKILL)``."""
        what = _DESCRIBE.get(self.kind, "{kind}")
        if self.kind is EventKind.STATE and self.old is None:
            what = "is {new}"
        text = what.format(old=self.old, new=self.new, code=self.code, kind=self.kind.value,
                           detail=self.detail, exit=self._exit())
        subject = self.instance or self.source
        text = f"{subject} {text}".rstrip()
        if self.detail and "{detail}" not in what:
            text += f" ({self.detail})"
        if self.who:
            text += f" (asked by {self.who})"
        return text

    def _exit(self) -> str:
        if self.signal:
            return f"signal {self.signal}"
        return f"exit {self.code}" if self.code is not None else "exit unknown"


_DESCRIBE: dict[EventKind, str] = {
    EventKind.STARTED: "started (pid {new})",
    EventKind.EXITED: "exited ({exit})",
    EventKind.RESTARTED: "restarted (restart #{new})",
    EventKind.STATE: "{old} -> {new}",
    EventKind.WEIGHT: "weight {old} -> {new}",
    EventKind.ENABLED: "enabled {old} -> {new}",
    EventKind.METADATA: "metadata {old} -> {new}",
    EventKind.FAULT: "fault {new}",
    EventKind.ADDED: "added",
    EventKind.REMOVED: "removed",
    EventKind.ASKED: "{detail}",
    EventKind.EJECTED: "ejected by a channel",
    EventKind.READMITTED: "readmitted by a channel",
    EventKind.FAILOVER: "failed {code}, call went on to {new}",
    EventKind.FORKSERVER: "{detail}",
}


#: How the timeline is opened: appended to, never through a link (open_nofollow).
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT


class EventLog:
    """Appends events to ``<state_dir>/events.jsonl``, one JSON object per line.

    Each event is one ``write(2)`` on a descriptor opened with ``O_APPEND``: lines of
    one writer never interleave, and a reader sees at worst a torn last line (a
    writer killed mid-write), which :func:`read_events` skips.

    >>> with EventLog(tmp_path) as log:                              # doctest: +SKIP
    ...     log.append(Event(time.time(), EventKind.STARTED, "server1", new=1234))
    """

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / EVENTS_FILE
        self._fd: int | None = open_nofollow(self.path, _APPEND, 0o600)

    def __repr__(self) -> str:
        return f"EventLog({str(self.path)!r})"

    def append(self, event: Event) -> None:
        """Write one event; a closed log drops it (a late event at shutdown), and so does
        a failed write (a full disk): the timeline is an aid, never a reason to fail."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._fd, (event.to_json() + "\n").encode())

    def reopen(self) -> None:
        """Open the path again (the state dir was deleted and re-created under us)."""
        if self._fd is not None:
            old, self._fd = self._fd, open_nofollow(self.path, _APPEND, 0o600)
            with contextlib.suppress(OSError):
                os.close(old)

    def extend(self, events: Iterable[Event]) -> None:
        for event in events:
            self.append(event)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fresh_log(state_dir: str | os.PathLike[str]) -> EventLog:
    """The timeline of a new run: the previous run's log is kept as ``events.1.jsonl``
    (one generation: a state dir must not grow without end)."""
    path = Path(state_dir) / EVENTS_FILE
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, path.with_name(EVENTS_PREVIOUS_FILE))
    return EventLog(state_dir)


def read_events(state_dir: str | os.PathLike[str], since: float | None = None) -> list[Event]:
    """Every event logged in ``state_dir`` (at or after ``since``), oldest first.

    No log yet gives ``[]``. A line that does not parse (the torn last line of a
    writer killed mid-write) is skipped.
    """
    try:
        text = (Path(state_dir) / EVENTS_FILE).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            event = Event.from_json(line)
        except (ValueError, KeyError, TypeError):
            continue
        if since is None or event.time >= since:
            out.append(event)
    out.sort(key=lambda e: e.time)
    return out


def bad_lines(state_dir: str | os.PathLike[str]) -> list[int]:
    """The numbers of the lines of ``state_dir``'s log that :func:`read_events` skips
    (blank lines aside): a torn line, or one that someone edited into something else."""
    try:
        text = (Path(state_dir) / EVENTS_FILE).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            if line.strip():
                Event.from_json(line)
        except (ValueError, KeyError, TypeError):
            out.append(number)
    return out


def follow_events(state_dir: str | os.PathLike[str], stop: threading.Event,
                  since: float | None = None) -> Iterator[Event]:
    """Every event logged (at or after ``since``), then each new one as it is written,
    until ``stop``. A new ``up`` starts a fresh log: it is followed from its first line.
    Waits on file events (watchfiles), not a timer."""
    import watchfiles

    path = Path(state_dir) / EVENTS_FILE
    seen: tuple[int, int] | None = None  # (inode, offset) of what we have read
    pending = ""
    while True:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                inode = os.fstat(f.fileno()).st_ino
                if seen is not None and seen[0] == inode:
                    f.seek(seen[1])
                else:
                    pending = ""
                *lines, pending = (pending + f.read()).split("\n")
                seen = (inode, f.tell())
        except FileNotFoundError:
            lines = []
        for line in lines:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                event = Event.from_json(line)
                if since is None or event.time >= since:
                    yield event
        if stop.is_set():
            return
        for _ in watchfiles.watch(Path(state_dir), stop_event=stop, debounce=20, step=20,
                                  watch_filter=lambda _c, p: Path(p).name == EVENTS_FILE,
                                  rust_timeout=1000,
                                  yield_on_timeout=True):
            break  # read what changed (a timeout re-reads: a dir re-created under us)


# -- events read off the registry ---------------------------------------------------------

def diff_snapshots(old: Snapshot | None, new: Snapshot, now: float | None = None,
                   source: str = "registry") -> list[Event]:
    """The events that turn registry snapshot ``old`` into ``new`` (pure).

    ``old=None`` is an empty registry: every record then reads as added (and started,
    if it has a pid). Times are the records' ``updated_at``, else ``now``. States read
    off the registry never say *why* (no exit code, no asker): the supervisor's do.

    >>> from devcluster.registry import Record, Snapshot
    >>> a = Snapshot(1, {"s1": Record("s1", "s", "127.0.0.1:1", state="serving")})
    >>> b = Snapshot(2, {"s1": Record("s1", "s", "127.0.0.1:1", weight=5, state="serving")})
    >>> [e.describe() for e in diff_snapshots(a, b, now=0.0)]
    ['s1 weight 1 -> 5']
    """
    now = time.time() if now is None else now
    before: Mapping[str, Record] = old.records if old is not None else {}
    events: list[Event] = []
    for name, rec in new.records.items():
        events.extend(_record_events(before.get(name), rec, now, source))
    for name, rec in before.items():
        if name not in new.records:
            events.append(Event(now, EventKind.REMOVED, name, old=_state(rec), source=source))
    events.sort(key=lambda e: e.time)
    return events


def _state(rec: Record) -> str:
    return str(getattr(rec.state, "value", rec.state))


def _record_events(prev: Record | None, rec: Record, now: float, source: str) -> list[Event]:
    at = rec.updated_at or now
    out: list[Event] = []

    def add(kind: EventKind, when: float = at, **kw: Any) -> None:
        out.append(Event(when, kind, rec.name, source=source, **kw))

    if prev is None:
        add(EventKind.ADDED, detail=rec.address)
    # Not started_at: it is the process's create time as psutil computes it from the boot
    # time, which can be off the wall clock by seconds (VMs, containers).
    if rec.pid and (prev is None or rec.pid != prev.pid):
        add(EventKind.STARTED, new=rec.pid)
        if prev is not None and rec.restarts > prev.restarts:
            add(EventKind.RESTARTED, new=rec.restarts)
    if prev is None or _state(prev) != _state(rec):
        add(EventKind.STATE, old=None if prev is None else _state(prev), new=_state(rec))
    if prev is None:
        return out
    if prev.weight != rec.weight:
        add(EventKind.WEIGHT, old=prev.weight, new=rec.weight)
    if prev.enabled != rec.enabled:
        add(EventKind.ENABLED, old=prev.enabled, new=rec.enabled)
    before_meta, after_meta = getattr(prev, "metadata", None), getattr(rec, "metadata", None)
    if before_meta != after_meta:
        add(EventKind.METADATA, old=_plain(before_meta), new=_plain(after_meta))
    before_fault, after_fault = getattr(prev, "fault", None), getattr(rec, "fault", None)
    if before_fault != after_fault:
        add(EventKind.FAULT, new=after_fault.describe() if after_fault else "cleared")
    return out


def _plain(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else value


#: Kinds only the registry can tell: anyone may write them, not only the supervisor.
REGISTRY_KINDS = frozenset({EventKind.WEIGHT, EventKind.ENABLED, EventKind.METADATA,
                            EventKind.FAULT})


def follow_registry(registry: Registry, log: EventLog, stop: threading.Event) -> None:
    """Append the weight, enable, metadata and fault changes of ``registry`` to ``log`` until
    ``stop`` (blocking: run it in a thread). Starts from the registry as it is now."""
    seen: Snapshot | None = None
    for snap in registry.watch(stop):
        if seen is not None:
            log.extend(e for e in diff_snapshots(seen, snap, source="registry")
                       if e.kind in REGISTRY_KINDS)
        seen = snap
