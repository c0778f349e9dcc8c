"""The drain's wait (devcluster.supervisor.drain) on real client files in a state dir.

No watcher: no wait. Watchers that say they applied the revision: no wait. A watcher
behind: the wait ends when its file says it caught up. Watchers that say nothing
(no ``revision`` field), or never catch up: the bound, and not longer.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from devcluster.statedir import client_revisions, layout
from devcluster.supervisor.drain import DRAIN_BOUND, Watchers

BOUND = 0.3  # the tests' own bound: long enough to tell "waited it" from "did not wait"


def _write(state_dir: Path, name: str, revision: int | None, pid: int | None = None,
           updated_at: float | None = None) -> Path:
    path = layout(state_dir).client_stats(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"version": 1, "pid": os.getpid() if pid is None else pid, "id": name,
           "updated_at": time.time() if updated_at is None else updated_at, "instances": {}}
    if revision is not None:
        doc["revision"] = revision
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_bound_is_todays_fixed_delay() -> None:
    assert DRAIN_BOUND == 0.1


def test_no_watcher_no_wait(tmp_path: Path) -> None:
    drained = asyncio.run(Watchers(tmp_path, bound=BOUND).until_applied(7))
    assert drained.watchers == 0 and drained.behind == 0
    assert drained.waited_s < BOUND / 2


def test_clients_that_applied_the_revision_do_not_hold_the_stop(tmp_path: Path) -> None:
    _write(tmp_path, "1-1", 7)
    _write(tmp_path, "1-2", 9)
    drained = asyncio.run(Watchers(tmp_path, bound=BOUND).until_applied(7))
    assert (drained.watchers, drained.behind) == (2, 0)
    assert drained.waited_s < BOUND / 2


def test_the_wait_ends_when_a_client_behind_catches_up(tmp_path: Path) -> None:
    _write(tmp_path, "1-1", 6)
    catch_up = threading.Timer(0.05, _write, (tmp_path, "1-1", 7))
    catch_up.start()
    began = time.monotonic()
    drained = asyncio.run(Watchers(tmp_path, bound=2.0).until_applied(7))
    catch_up.join()
    assert drained.behind == 0 and drained.watchers == 1
    assert 0.04 <= time.monotonic() - began < 0.5


def test_a_client_that_says_nothing_is_waited_for_the_bound_only(tmp_path: Path) -> None:
    _write(tmp_path, "1-1", None)  # an older client: no revision field
    _write(tmp_path, "1-2", 3)  # one that never catches up
    drained = asyncio.run(Watchers(tmp_path, bound=BOUND).until_applied(7))
    assert (drained.watchers, drained.behind) == (2, 2)
    assert BOUND <= drained.waited_s < BOUND + 0.1


def test_an_unknown_revision_waits_the_bound_if_anyone_watches(tmp_path: Path) -> None:
    assert asyncio.run(Watchers(tmp_path, bound=BOUND).until_applied(None)).waited_s < BOUND / 2
    _write(tmp_path, "1-1", 9)
    assert asyncio.run(Watchers(tmp_path, bound=BOUND).until_applied(None)).waited_s >= BOUND


def test_dead_stale_and_foreign_files_are_no_watchers(tmp_path: Path) -> None:
    _write(tmp_path, "1-1", 1, pid=_dead_pid())
    _write(tmp_path, "1-2", 1, updated_at=time.time() - 3600)
    clients = layout(tmp_path).clients
    (clients / "garbage.json").write_text("{not json")
    (clients / ".1-3.json.tmp").write_text("{}")
    assert client_revisions(tmp_path) == []
    assert asyncio.run(Watchers(tmp_path, bound=BOUND).until_applied(7)).waited_s < BOUND / 2


class _Acks:
    """An AckSource: ``streams`` connected, those below ``applied`` lagging."""

    def __init__(self, streams: int, applied: int) -> None:
        self.streams, self.applied = streams, applied

    def lagging(self, revision: int | None) -> tuple[int, int]:
        behind = revision is None or self.applied < revision
        return self.streams, self.streams if behind else 0


def test_ack_sources_count_as_watchers(tmp_path: Path) -> None:
    acks = _Acks(streams=2, applied=6)
    watchers = Watchers(tmp_path, bound=2.0)
    watchers.add(acks)

    async def main() -> float:
        asyncio.get_running_loop().call_later(0.05, setattr, acks, "applied", 7)
        began = time.monotonic()
        drained = await watchers.until_applied(7)
        assert (drained.watchers, drained.behind) == (2, 0)
        return time.monotonic() - began

    assert 0.04 <= asyncio.run(main()) < 0.5
    watchers.remove(acks)
    assert asyncio.run(Watchers(tmp_path, bound=BOUND).until_applied(99)).waited_s < BOUND / 2
