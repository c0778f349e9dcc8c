"""The file registry's inotify watch: what wakes it, how fast, and the watchfiles fallback."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from devcluster.registry import FileRegistry, Record, filewatch, inotify
from devcluster.registry.inotify import DirWatch, Wake, WatchStop

pytestmark = pytest.mark.skipif(not inotify.available(), reason="inotify is Linux-only")


def rec(name: str, **fields: object) -> Record:
    return Record(name, "server", "127.0.0.1:5000", **fields)  # type: ignore[arg-type]


def test_a_replace_of_the_named_file_wakes_at_once(tmp_path: Path) -> None:
    with DirWatch(tmp_path, "registry.json") as watch:
        (tmp_path / ".tmp").write_text("{}")
        started = time.monotonic()
        os.replace(tmp_path / ".tmp", tmp_path / "registry.json")
        assert watch.wait(5.0) is Wake.CHANGED
        assert time.monotonic() - started < 0.5  # no polling step in between


def test_other_files_do_not_wake_it(tmp_path: Path) -> None:
    with DirWatch(tmp_path, "registry.json") as watch:
        (tmp_path / "events.jsonl").write_text("x")
        (tmp_path / "registry.lock").touch()
        assert watch.wait(0.2) is Wake.TIMEOUT


def test_the_directory_going_away_is_reported(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with DirWatch(state, "registry.json") as watch:
        shutil.rmtree(state)
        assert watch.wait(5.0) is Wake.GONE


def test_watch_stop_wakes_a_blocked_wait(tmp_path: Path) -> None:
    stop = WatchStop()
    with DirWatch(tmp_path, "registry.json", stop) as watch:
        threading.Timer(0.1, stop.set).start()
        started = time.monotonic()
        assert watch.wait(30.0) is Wake.STOPPED
        assert time.monotonic() - started < 2.0


def test_a_watch_stop_ends_a_registry_watch_at_once(tmp_path: Path) -> None:
    reg = FileRegistry(tmp_path / "state", check_liveness=False)
    reg.reset([rec("server1")])
    stop = WatchStop()
    seen: list[int] = []

    def follow() -> None:
        seen.extend(snap.revision for snap in reg.watch(stop))

    thread = threading.Thread(target=follow)
    thread.start()
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)  # polled: the watcher thread has no event of its own
    reg.update("server1", weight=3)
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    stopped = time.monotonic()
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - stopped < 0.5
    assert seen == [1, 2]


def test_the_watchfiles_fallback_still_follows_writes(tmp_path: Path) -> None:
    reg = FileRegistry(tmp_path / "state", check_liveness=False)
    reg.reset([rec("server1")])
    stop = threading.Event()
    follow = filewatch._Follower(reg)
    assert follow.first().revision == 1
    batches = filewatch._watchfiles_watch(reg, follow, stop)
    threading.Timer(0.3, reg.update, ("server1",), {"weight": 5}).start()
    try:
        snap = next(batches)
    finally:
        stop.set()
        batches.close()
    assert snap.records["server1"].weight == 5


def test_a_burst_of_writes_is_read_at_most_once_a_step_and_ends_on_the_last(tmp_path: Path) -> None:
    reg = FileRegistry(tmp_path / "state", check_liveness=False, step_ms=100)
    reg.reset([rec("server1")])
    stop = WatchStop()
    seen: list[int] = []

    def follow() -> None:
        seen.extend(snap.revision for snap in reg.watch(stop))

    thread = threading.Thread(target=follow)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)  # polled: the watcher thread has no event of its own
        began = time.monotonic()
        for n in range(30):
            reg.update("server1", restarts=n + 1)
        last = reg.snapshot().revision
        while (not seen or seen[-1] != last) and time.monotonic() < deadline:
            time.sleep(0.01)
        took = time.monotonic() - began
    finally:
        stop.set()
        thread.join(timeout=5)
    assert seen[-1] == last == 31
    # One read per 100 ms step at most, plus the first change read at once.
    assert len(seen) - 1 <= 2 + took / 0.1
