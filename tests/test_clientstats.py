"""Client statistics: what a client publishes, and how the views sum live clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from devcluster.client import CallInfo
from devcluster.client.stats import (
    CLIENTS_DIR,
    ENV_SWITCH,
    FILE_STALE_AFTER,
    RATE_STALE_AFTER,
    StatsPublisher,
    enabled_by_env,
    read_traffic,
    stats_on_call,
)
from devcluster.statedir import CLIENT_STATS_FORMAT_VERSION


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def call(instance: str, ok: bool = True, code: str = "OK", ms: float = 1.0,
         retried: list[tuple[str, str]] | None = None) -> CallInfo:
    return CallInfo(1, instance, "127.0.0.1:1", ok, code, ms, retried or [])


def publisher(tmp_path: Path, clock: Clock, **kw: Any) -> StatsPublisher:
    # interval far away: the tests flush by hand, the timer thread never writes.
    return StatsPublisher(tmp_path, clock=clock, interval=3600, **kw)


def test_counts_rates_p50_and_file_removed_on_close(tmp_path: Path) -> None:
    clock = Clock()
    stats = publisher(tmp_path, clock)
    for ms in (1.0, 2.0, 3.0, 10.0, 20.0):
        stats.on_call(call("server1", ms=ms))
    stats.on_call(call("server2", ok=False, code="INTERNAL"))
    clock.now += 2.0
    stats.flush()
    doc = json.loads(stats.path.read_text())
    assert doc["version"] == CLIENT_STATS_FORMAT_VERSION
    assert doc["pid"] == os.getpid()
    assert doc["instances"]["server1"] == {"ok": 5, "failed": 0, "ok_per_s": 2.5,
                                           "failed_per_s": 0.0, "p50_ms": 3.0, "ejected": False}
    assert doc["instances"]["server2"]["failed_per_s"] == 0.5
    assert stats.path.parent == tmp_path / CLIENTS_DIR
    stats.close()
    assert not stats.path.exists()
    assert read_traffic(tmp_path) == {}


def test_reader_sums_live_clients(tmp_path: Path) -> None:
    clock = Clock()
    a, b = publisher(tmp_path, clock), publisher(tmp_path, clock)
    for _ in range(4):
        a.on_call(call("server1"))
    for _ in range(2):
        b.on_call(call("server1"))
    b.on_call(call("server2", ok=False, code="UNAVAILABLE"))
    clock.now += 1.0
    a.flush()
    b.flush()
    traffic = read_traffic(tmp_path, now=clock.now)
    assert traffic["server1"].calls_per_s == 6.0
    assert traffic["server1"].clients == 2
    assert traffic["server2"].calls_per_s == 1.0
    assert traffic["server2"].failed_per_s == 1.0
    a.close()
    b.close()


def test_idle_client_publishes_zero_rates_once_then_stops_writing(tmp_path: Path) -> None:
    clock = Clock()
    stats = publisher(tmp_path, clock)
    stats.on_call(call("server1"))
    clock.now += 1.0
    stats.flush(force=False)
    assert read_traffic(tmp_path, now=clock.now)["server1"].calls_per_s == 1.0
    clock.now += 1.0
    stats.flush(force=False)  # no calls in this window: the zero rate goes out
    assert read_traffic(tmp_path, now=clock.now)["server1"].calls_per_s == 0.0
    written = stats.path.stat().st_mtime_ns
    clock.now += 1.0
    stats.flush(force=False)  # still idle: nothing to write
    assert stats.path.stat().st_mtime_ns == written
    stats.close()


def test_dead_and_stale_clients_are_ignored(tmp_path: Path) -> None:
    directory = tmp_path / CLIENTS_DIR
    directory.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    now = 5000.0

    def write(name: str, pid: int, updated_at: float) -> Path:
        # No "version": files from before versions are read the same.
        path = directory / name
        path.write_text(json.dumps({"pid": pid, "updated_at": updated_at, "instances": {
            "server1": {"ok": 10, "failed": 0, "ok_per_s": 7.0, "failed_per_s": 0.0,
                        "p50_ms": 1.0, "ejected": True}}}))
        return path

    gone = write("dead.json", int(dead.stdout), now)
    write("hung.json", os.getpid(), now - RATE_STALE_AFTER - 1)
    write("ancient.json", os.getpid(), now - FILE_STALE_AFTER - 1)
    (directory / "garbage.json").write_text("{not json")
    traffic = read_traffic(tmp_path, now=now)
    # the hung client counts as a client (with its totals) but not in the rates
    assert traffic["server1"].calls_per_s == 0.0
    assert traffic["server1"].ok == 10
    assert traffic["server1"].ejected_by == 1
    assert not gone.exists()  # a dead client's file is pruned


def test_ejected_as_the_channel_would(tmp_path: Path) -> None:
    clock = Clock()
    stats = publisher(tmp_path, clock)
    stats.on_call(call("server2", retried=[("server1", "UNAVAILABLE")]))
    stats.on_call(call("server3", ok=False, code="DEADLINE_EXCEEDED"))
    stats.on_call(call("server3", ok=False, code="DEADLINE_EXCEEDED"))
    doc = stats.snapshot()["instances"]
    assert doc["server1"]["ejected"] and doc["server1"]["failed"] == 1
    assert doc["server3"]["ejected"]
    assert not doc["server2"]["ejected"]
    stats.on_call(call("server1"))  # back in rotation: a call succeeded
    stats.set_ejected("server2", True)
    doc = stats.snapshot()["instances"]
    assert not doc["server1"]["ejected"] and doc["server2"]["ejected"]
    stats.close()


def test_count_ok_is_on_call_for_a_first_attempt_success_in_the_same_order(
        tmp_path: Path) -> None:
    # count_ok queues (no lock on the per-call path); every other event, and every
    # reader, counts the queue first, so a success before a failure stays before it.
    clock = Clock()
    stats = publisher(tmp_path, clock)
    stats.on_call(call("server1", ok=False, code="DEADLINE_EXCEEDED"))
    stats.count_ok(("server1", 4.0))  # ends the deadline streak
    stats.on_call(call("server1", ok=False, code="DEADLINE_EXCEEDED"))
    stats.count_ok(("server2", 2.0))
    stats.set_ejected("server2", True)  # after its success: stays ejected
    doc = stats.snapshot()["instances"]
    assert doc["server1"] == {"ok": 1, "failed": 2, "ok_per_s": doc["server1"]["ok_per_s"],
                              "failed_per_s": doc["server1"]["failed_per_s"], "p50_ms": 1.0,
                              "ejected": False}  # one deadline in a row, not two
    assert doc["server2"]["ok"] == 1 and doc["server2"]["ejected"]
    stats.count_ok(("server2", 3.0))  # a success readmits, as on_call's would
    clock.now += 1.0
    stats.flush(force=False)  # a queued call alone makes the client busy: it writes
    assert json.loads(stats.path.read_text())["instances"]["server2"]["ejected"] is False
    stats.close()
    off = StatsPublisher(tmp_path, enabled=False)
    off.count_ok(("server1", 1.0))
    assert off.snapshot()["instances"] == {}


def test_off_by_env_or_flag_costs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert enabled_by_env({ENV_SWITCH: "0"}) is False
    assert enabled_by_env({ENV_SWITCH: "off"}) is False
    assert enabled_by_env({}) is True
    monkeypatch.setenv(ENV_SWITCH, "0")
    stats = StatsPublisher(tmp_path)
    mine = [].append
    assert stats_on_call(stats, mine) is mine
    assert stats_on_call(None, None) is None
    stats.on_call(call("server1"))
    stats.flush()
    assert not (tmp_path / CLIENTS_DIR).exists()
    stats.close()
    assert StatsPublisher(tmp_path, enabled=False).enabled is False


def test_chained_on_call_and_threads(tmp_path: Path) -> None:
    clock = Clock()
    stats = publisher(tmp_path, clock)
    seen: list[CallInfo] = []
    on_call = stats_on_call(stats, seen.append)
    assert on_call is not None

    def hammer() -> None:
        for _ in range(1000):
            on_call(call("server1"))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 4000
    assert stats.snapshot()["instances"]["server1"]["ok"] == 4000
    stats.close()


def test_timer_thread_writes_by_itself(tmp_path: Path, wait_until: Any) -> None:
    with StatsPublisher(tmp_path, interval=0.05) as stats:
        stats.on_call(call("server1"))
        wait_until(stats.path.exists, 5, "the timer thread's first write")
        assert read_traffic(tmp_path)["server1"].ok == 1
    assert not stats.path.exists()
