"""The timeline's pieces as plain values: events, the JSON-lines log, registry diffs."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from devcluster.defaults import EVENTS_FORMAT_VERSION
from devcluster.events import (
    EVENTS_FILE,
    Event,
    EventKind,
    EventLog,
    diff_snapshots,
    follow_events,
    read_events,
)
from devcluster.registry import Record, Snapshot, State


def _snap(revision: int, *records: Record) -> Snapshot:
    return Snapshot(revision, {r.name: r for r in records})


def _rec(name: str, **kw: object) -> Record:
    kw.setdefault("updated_at", 10.0)
    return Record(name, "server", "127.0.0.1:1", **kw)  # type: ignore[arg-type]


def test_event_round_trips_through_json_with_every_key() -> None:
    e = Event(1.25, EventKind.EXITED, "server2", signal="SIGKILL", who="pid 7")
    d = json.loads(e.to_json())
    assert set(d) == {"version", "time", "kind", "instance", "old", "new", "code", "signal",
                      "who", "source", "detail"}
    assert d["version"] == EVENTS_FORMAT_VERSION
    assert set(e.to_dict()) == set(d) - {"version"}  # the file's field, not the event's
    assert Event.from_json(e.to_json()) == e
    assert Event.from_dict({**d, "future_field": 1}) == e  # a newer writer's extra keys
    del d["version"]
    assert Event.from_dict(d) == e  # a line from before versions reads the same


def test_describe_says_what_happened() -> None:
    assert Event(0, EventKind.EXITED, "s1", code=3).describe() == "s1 exited (exit 3)"
    assert Event(0, EventKind.EXITED, "s1", signal="SIGKILL").describe() == \
        "s1 exited (signal SIGKILL)"
    assert Event(0, EventKind.ASKED, "s2", detail="kill SIGKILL", who="t.py::test").describe() \
        == "s2 kill SIGKILL (asked by t.py::test)"
    assert Event(0, EventKind.FAILOVER, "s2", code="UNAVAILABLE", new="s1",
                 detail="call 7").describe() == \
        "s2 failed UNAVAILABLE, call went on to s1 (call 7)"
    assert Event(0, EventKind.STATE, "s1", new="serving").describe() == "s1 is serving"


def test_log_appends_and_reader_skips_a_torn_last_line(tmp_path: Path) -> None:
    with EventLog(tmp_path) as log:
        log.append(Event(2.0, EventKind.STARTED, "s1", new=10))
        log.append(Event(1.0, EventKind.STATE, "s1", old="starting", new="serving"))
    with open(tmp_path / EVENTS_FILE, "a") as f:
        f.write('{"time": 3.0, "kind": "exi')  # a writer killed mid-line
    events = read_events(tmp_path)
    assert [e.kind for e in events] == [EventKind.STATE, EventKind.STARTED]  # by time
    assert [e.time for e in read_events(tmp_path, since=1.5)] == [2.0]
    assert read_events(tmp_path / "nowhere") == []
    assert oct(os.stat(tmp_path / EVENTS_FILE).st_mode & 0o777) == "0o600"


def test_reader_skips_lines_whose_numbers_json_cannot_carry(tmp_path: Path) -> None:
    """Issue 26 item 11: "time": 1e400 crashed `events`, and `events --json` printed
    Infinity (not JSON). Such a line is not an event: skipped, as a torn one is."""
    with EventLog(tmp_path) as log:
        log.append(Event(2.0, EventKind.STARTED, "s1", new=10))
    with open(tmp_path / EVENTS_FILE, "a") as f:
        for bad in ('"time": 1e400', '"time": NaN', '"time": -Infinity', '"time": 1e300',
                    '"time": -5', '"time": ' + "9" * 400, '"time": 3, "new": 1e400',
                    '"time": 3, "old": NaN'):
            f.write('{"kind": "started", "instance": "s9", ' + bad + '}\n')
    assert [e.instance for e in read_events(tmp_path)] == ["s1"]
    stop = threading.Event()
    stop.set()  # what is there, then return
    assert [e.instance for e in follow_events(tmp_path, stop)] == ["s1"]


def test_lines_of_concurrent_appenders_never_interleave(tmp_path: Path) -> None:
    def write(n: int) -> None:
        with EventLog(tmp_path) as log:
            for i in range(200):
                log.append(Event(float(i), EventKind.ASKED, f"s{n}", detail="x" * 300))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read_events(tmp_path)) == 800


def test_diff_of_a_fresh_registry_reads_as_added_and_started() -> None:
    new = _snap(1, _rec("s1", pid=42, state=State.STARTING))
    kinds = [(e.kind, e.new) for e in diff_snapshots(None, new)]
    assert kinds == [(EventKind.ADDED, None), (EventKind.STARTED, 42),
                     (EventKind.STATE, "starting")]


def test_diff_names_each_registry_change() -> None:
    old = _snap(1, _rec("s1", pid=1, state=State.SERVING), _rec("s2", pid=2))
    new = _snap(2, _rec("s1", pid=5, restarts=1, weight=3, enabled=False, state=State.STARTING,
                        updated_at=11.0))
    got = {(e.kind, e.instance, e.old, e.new) for e in diff_snapshots(old, new, now=12.0)}
    assert got == {
        (EventKind.STARTED, "s1", None, 5),
        (EventKind.RESTARTED, "s1", None, 1),
        (EventKind.STATE, "s1", "serving", "starting"),
        (EventKind.WEIGHT, "s1", 1, 3),
        (EventKind.ENABLED, "s1", True, False),
        (EventKind.REMOVED, "s2", "starting", None),
    }
    assert all(e.source == "registry" for e in diff_snapshots(old, new))


def test_an_unchanged_registry_has_no_events() -> None:
    snap = _snap(3, _rec("s1", pid=1, state=State.SERVING))
    assert diff_snapshots(snap, _snap(4, *snap.records.values())) == []
