"""FileRegistry against real files and real processes: semantics, concurrency, watch,
corruption and liveness."""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from devcluster.errors import CorruptRegistryError, UnknownInstanceError, UsageError
from devcluster.registry import FileRegistry, Record, Snapshot, State, open_registry
from devcluster.registry.codec import loads
from devcluster.registry.liveness import alive

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_registry_worker.py"
# Workers import devcluster from this checkout whatever the caller's PYTHONPATH.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(autouse=True)
def no_child_left() -> Iterator[None]:
    """Every test must end with no child process of ours alive."""
    yield
    children = psutil.Process().children(recursive=True)
    _gone, alive_ = psutil.wait_procs(children, timeout=5)
    for proc in alive_:
        proc.kill()
    assert not alive_, f"test left child processes behind: {alive_}"


@pytest.fixture
def reg(tmp_path: Path) -> FileRegistry:
    return FileRegistry(tmp_path / "state", check_liveness=False)


def rec(name: str, **fields: Any) -> Record:
    return Record(name, name.rstrip("0123456789"), f"127.0.0.1:{5000 + len(name)}", **fields)


def worker(*args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args], env=ENV, text=True,
        stdin=stdin, stdout=subprocess.PIPE,
    )


# -- semantics ---------------------------------------------------------------------


def test_missing_file_is_empty_registry_and_creates_nothing(reg: FileRegistry) -> None:
    assert reg.snapshot() == Snapshot(0)
    assert not reg.state_dir.exists()


def test_first_write_creates_private_state_dir(reg: FileRegistry) -> None:
    reg.register(rec("server1"))
    assert reg.state_dir.stat().st_mode & 0o777 == 0o700
    assert reg.path.read_text().endswith("\n")


def test_register_get_update_deregister(reg: FileRegistry) -> None:
    before = time.time()
    stored = reg.register(rec("server1", state="starting"))
    assert stored.state is State.STARTING and stored.updated_at >= before
    assert reg.get("server1") == stored
    assert reg.snapshot().revision == 1

    updated = reg.update("server1", weight=5, state="serving", pid=123)
    assert (updated.weight, updated.state, updated.pid) == (5, State.SERVING, 123)
    assert updated.updated_at >= stored.updated_at
    assert reg.get("server1") == updated
    assert reg.snapshot().revision == 2

    reg.register(rec("server2"))
    reg.deregister("server1")
    assert list(reg.snapshot().records) == ["server2"]
    assert reg.snapshot().revision == 4
    reg.deregister("server1")  # absent: no error, no write
    assert reg.snapshot().revision == 4
    with pytest.raises(UnknownInstanceError, match="known instances: server2"):
        reg.get("server1")


def test_update_many_is_one_write_and_touches_only_named(reg: FileRegistry) -> None:
    reg.reset([rec("a1"), rec("b1"), rec("c1")])
    untouched = reg.get("c1")
    snap = reg.update_many({"a1": {"weight": 0}, "b1": {"enabled": False}})
    assert snap.revision == 2 == reg.snapshot().revision
    assert snap.records["a1"].weight == 0 and not snap.records["b1"].enabled
    assert reg.get("c1") == untouched


def test_reset_replaces_everything_and_keeps_revision_growing(reg: FileRegistry) -> None:
    reg.reset([rec("zeta1"), rec("alpha1")])
    assert list(reg.snapshot().records) == ["alpha1", "zeta1"]  # sorted by name
    reg.update("zeta1", weight=2)
    snap = reg.reset([rec("new1")])
    assert list(snap.records) == ["new1"] and snap.revision == 3
    assert reg.snapshot() == snap
    with pytest.raises(UsageError, match="duplicate instance name"):
        reg.reset([rec("x1"), rec("x1")])


def test_unknown_name_writes_nothing(reg: FileRegistry) -> None:
    reg.reset([rec("server1"), rec("server2")])
    before = reg.path.read_bytes()
    with pytest.raises(UnknownInstanceError) as info:
        reg.update("server9", weight=3)
    assert info.value.name == "server9" and info.value.known == ["server1", "server2"]
    with pytest.raises(UnknownInstanceError):
        reg.update_many({"server1": {"weight": 3}, "server9": {"weight": 3}})
    assert reg.path.read_bytes() == before


@pytest.mark.parametrize("weight", ["abc", -1, 1001, True, 1.5, None])
def test_bad_weight_rejected_file_untouched(reg: FileRegistry, weight: Any) -> None:
    reg.register(rec("server1"))
    before = reg.path.read_bytes()
    with pytest.raises(UsageError) as info:
        reg.update("server1", weight=weight)
    assert str(info.value) == f"weight must be an integer 0..1000, got {weight!r}"
    assert reg.path.read_bytes() == before


@pytest.mark.parametrize("weight", [0, 1000])
def test_weight_bounds_accepted(reg: FileRegistry, weight: int) -> None:
    reg.register(rec("server1"))
    assert reg.update("server1", weight=weight).weight == weight


@pytest.mark.parametrize(
    "fields, error",
    [
        ({"state": "zombie"}, UsageError),
        ({"pid": "12"}, UsageError),
        ({"restarts": -1}, UsageError),
        ({"name": "other"}, TypeError),
        ({"colour": "red"}, TypeError),
    ],
)
def test_bad_fields_rejected_file_untouched(
    reg: FileRegistry, fields: dict[str, Any], error: type[Exception]
) -> None:
    reg.register(rec("server1"))
    before = reg.path.read_bytes()
    with pytest.raises(error):
        reg.update("server1", **fields)
    assert reg.path.read_bytes() == before


def test_open_registry(tmp_path: Path) -> None:
    assert isinstance(open_registry(tmp_path), FileRegistry)


# -- corruption --------------------------------------------------------------------

GARBAGE = b'{"version": 1, "revision": 3, "instances": {"server1": {"weight": "heavy"'


def test_corrupt_file_is_named_and_never_overwritten(reg: FileRegistry) -> None:
    reg.state_dir.mkdir()
    reg.path.write_bytes(GARBAGE)
    with pytest.raises(CorruptRegistryError, match=str(reg.path)):
        reg.snapshot()
    with pytest.raises(CorruptRegistryError):
        reg.register(rec("server1"))
    assert reg.path.read_bytes() == GARBAGE


def test_recover_moves_corrupt_file_aside(reg: FileRegistry) -> None:
    assert reg.recover() is None  # no file
    reg.state_dir.mkdir()
    reg.path.write_bytes(GARBAGE)
    moved = reg.recover()
    assert moved is not None and moved.parent == reg.state_dir
    assert moved.name.startswith("registry.json.corrupt-")
    assert moved.read_bytes() == GARBAGE
    assert not reg.path.exists() and reg.snapshot() == Snapshot(0)
    reg.register(rec("server1"))
    assert reg.recover() is None  # sound file stays
    # A second corruption in the same second gets its own name.
    reg.path.write_bytes(b"nonsense")
    second = reg.recover()
    assert second is not None and second != moved and second.read_bytes() == b"nonsense"
    assert moved.read_bytes() == GARBAGE


def test_reset_preserves_corrupt_file(reg: FileRegistry) -> None:
    reg.state_dir.mkdir()
    reg.path.write_bytes(GARBAGE)
    with pytest.raises(UsageError):  # a failed reset leaves the corrupt file in place
        reg.reset([rec("server1", weight=-1)])
    assert reg.path.read_bytes() == GARBAGE
    snap = reg.reset([rec("server1")])
    assert list(snap.records) == ["server1"]
    kept = list(reg.state_dir.glob("registry.json.corrupt-*"))
    assert [p.read_bytes() for p in kept] == [GARBAGE]


def test_revision_continues_past_a_corrupt_file(reg: FileRegistry) -> None:
    """A watcher remembers revisions: a fresh file after a corrupt one must not start
    again at 1 (issue 26), whether reset() moves it aside or recover() did before."""
    reg.reset([rec("server1")])
    for weight in range(2, 7):
        reg.update("server1", weight=weight)
    last = reg.snapshot().revision
    assert last == 6
    text = reg.path.read_bytes()
    reg.path.write_bytes(text[: len(text) // 2])  # cut short: unreadable, revision still there
    os.utime(reg.path, (1, 1))  # so only the readable revision can lift the floor
    assert reg.reset([rec("server1")]).revision == last + 1

    reg.path.write_bytes(b"nonsense")  # no readable revision: its mtime is the floor
    before = time.time()
    assert reg.recover() is not None
    revision = reg.reset([rec("server1")]).revision
    assert revision > max(last + 1, int(before) - 1)
    reg.update("server1", weight=3)
    assert reg.snapshot().revision == revision + 1


def test_revision_continues_past_a_deleted_file(reg: FileRegistry) -> None:
    """A registry deleted (by hand, or a corrupt one moved aside and then deleted) must
    not start again at 1 either: a watcher that remembers revision N would take
    revisions 1..N of the fresh file for old ones and skip them (issue 26 item 15)."""
    reg.reset([rec("server1")])
    for weight in range(2, 7):
        reg.update("server1", weight=weight)
    last = reg.snapshot().revision
    reg.path.unlink()
    assert reg.reset([rec("server1")]).revision == last + 1
    reg.path.write_bytes(b"nonsense")
    moved = reg.recover()
    assert moved is not None
    moved.unlink()  # nothing left to read a revision from but the lock
    reg.register(rec("server2"))
    assert reg.snapshot().revision == last + 2
    assert reg.lock_path.read_text().strip().lstrip("0") == str(last + 2)


# -- concurrency -------------------------------------------------------------------

WORKERS, INCREMENTS = 8, 250


def test_concurrent_writers_lose_nothing_and_readers_never_see_torn_files(
    reg: FileRegistry,
) -> None:
    own = [f"w{i}" for i in range(WORKERS)]
    reg.reset([rec("shared"), *(rec(n) for n in own)])  # revision 1
    reads, problems = [0], []
    done = threading.Event()

    def read_loop() -> None:
        last = 0
        while not done.is_set():
            try:
                snap = loads(reg.path.read_bytes(), reg.path)
                # Every write adds one to "shared" and to one worker's own record.
                assert snap.revision >= last, "revision went backwards"
                assert snap.records["shared"].restarts == snap.revision - 1
                assert sum(snap.records[n].restarts for n in own) == snap.revision - 1
                last = snap.revision
                reads[0] += 1
            except Exception as e:  # reported by the main thread
                problems.append(e)
                return
            time.sleep(0.001)  # leave the 2 CPUs to the writers

    procs = [worker("stress", str(reg.state_dir), n, str(INCREMENTS), stdin=subprocess.PIPE)
             for n in own]
    reader = threading.Thread(target=read_loop)
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        reader.start()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.close()
        codes = [p.wait(timeout=60) for p in procs]
    finally:
        done.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            assert p.stdout is not None
            p.stdout.close()
        if reader.is_alive():
            reader.join()
    assert codes == [0] * WORKERS
    assert not problems, problems[0]
    assert reads[0] > 0
    final = reg.snapshot()
    assert final.revision == 1 + WORKERS * INCREMENTS
    assert final.records["shared"].restarts == WORKERS * INCREMENTS
    assert all(final.records[n].restarts == INCREMENTS for n in own)


# -- watch -------------------------------------------------------------------------


class Watcher:
    """FileRegistry.watch() running in a background thread, as the client runs it."""

    def __init__(self, registry: FileRegistry) -> None:
        self.stop = threading.Event()
        self.seen: queue.Queue[Snapshot] = queue.Queue()
        self.errors: list[BaseException] = []
        self._registry = registry
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            for snap in self._registry.watch(self.stop):
                self.seen.put(snap)
        except BaseException as e:
            self.errors.append(e)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=5)
        assert not self._thread.is_alive(), "watch() did not end after stop was set"
        assert not self.errors, self.errors

    def wait_for(self, ok: Any, timeout: float = 2.0) -> Snapshot:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                snap = self.seen.get(timeout=left)
            except queue.Empty:
                break
            if ok(snap):
                return snap
        raise AssertionError(f"no matching snapshot within {timeout} s; errors={self.errors}")


def test_watch_in_thread_sees_write_from_another_process(reg: FileRegistry) -> None:
    reg.reset([rec("server1")])
    with Watcher(reg) as w:
        assert w.wait_for(lambda s: True).revision == 1  # current snapshot first
        # (The watcher arms watchfiles only after its first yield; a write racing that
        # is caught by the periodic rescan, still well inside the deadline.)
        proc = worker("bump", str(reg.state_dir), "server1")
        out, _ = proc.communicate(timeout=30)
        revision = int(out)
        snap = w.wait_for(lambda s: s.revision >= revision)
        assert snap.revision == revision == 2
        assert snap.records["server1"].restarts == 1
        started = time.monotonic()
    assert time.monotonic() - started < 1.0  # stop ends the watch within a few steps


def test_watch_yields_each_revision_once(reg: FileRegistry) -> None:
    reg.reset([rec("server1")])
    with Watcher(reg) as w:
        w.wait_for(lambda s: s.revision == 1)
        for n in range(1, 4):
            reg.update("server1", restarts=n)
            w.wait_for(lambda s, n=n: s.records["server1"].restarts == n)
        with pytest.raises(AssertionError):
            w.wait_for(lambda s: True, timeout=1.5)  # spans a rescan: nothing new


def test_watch_creates_missing_state_dir(tmp_path: Path) -> None:
    reg = FileRegistry(tmp_path / "later" / "state")
    with Watcher(reg) as w:
        assert w.wait_for(lambda s: True) == Snapshot(0)
        assert reg.state_dir.stat().st_mode & 0o777 == 0o700
        reg.register(rec("server1"))
        assert "server1" in w.wait_for(lambda s: s.revision == 1).records


def test_watch_follows_a_deleted_and_recreated_state_dir(reg: FileRegistry) -> None:
    reg.reset([rec("server1")])
    with Watcher(reg) as w:
        w.wait_for(lambda s: s.revision == 1)
        shutil.rmtree(reg.state_dir)
        assert w.wait_for(lambda s: True, timeout=3) == Snapshot(0)  # seen by the rescan
        reg.register(rec("server2"))
        assert "server2" in w.wait_for(lambda s: s.revision == 1).records


def test_watch_outlives_a_corrupt_file(reg: FileRegistry) -> None:
    reg.reset([rec("server1")])
    with Watcher(reg) as w:
        w.wait_for(lambda s: s.revision == 1)
        reg.path.write_bytes(GARBAGE)
        reg.reset([rec("server2")])  # moves the garbage aside, starts over
        assert list(w.wait_for(lambda s: "server2" in s.records).records) == ["server2"]


def test_awatch_sees_a_write(reg: FileRegistry) -> None:
    reg.reset([rec("server1")])

    async def follow() -> list[int]:
        revisions = []
        agen = reg.awatch()
        try:
            async for snap in agen:
                revisions.append(snap.revision)
                if snap.revision == 1:
                    # Off the loop: the write must not wait for the watcher.
                    await asyncio.to_thread(reg.update, "server1", weight=7)
                if snap.revision == 2:
                    assert snap.records["server1"].weight == 7
                    break
        finally:
            await agen.aclose()
        return revisions

    async def main() -> list[int]:
        return await asyncio.wait_for(follow(), timeout=5)

    assert asyncio.run(main()) == [1, 2]


# -- liveness ----------------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_alive_checks_existence_zombies_and_start_time() -> None:
    me = psutil.Process()
    assert alive(me.pid, me.create_time())
    assert alive(me.pid, None)
    assert not alive(me.pid, me.create_time() - 10)  # same pid, another process
    assert not alive(dead_pid(), None)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Wait for the exit but leave the child unreaped (WNOWAIT): a zombie.
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)
        assert psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE
        assert not alive(zombie.pid, psutil.Process(zombie.pid).create_time())
    finally:
        zombie.wait()


def test_alive_after_a_confirmed_check_still_sees_death_and_zombies() -> None:
    # The second check of a (pid, started_at) takes the fast path (one read of
    # /proc/<pid>/stat against what psutil confirmed): it must see the same things.
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        created = psutil.Process(child.pid).create_time()
        assert alive(child.pid, created)
        assert alive(child.pid, created)
        assert not alive(child.pid, created - 10)  # another process's start time
        assert alive(child.pid, created)
        assert child.stdin is not None
        child.stdin.close()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # a zombie, unreaped
        assert not alive(child.pid, created)
    finally:
        child.wait()
    assert not alive(child.pid, created)  # reaped: gone


@pytest.mark.parametrize("state", ["serving", "starting", "draining", "paused"])
def test_running_record_with_dead_pid_reads_exited(tmp_path: Path, state: str) -> None:
    reg = FileRegistry(tmp_path)
    reg.register(rec("server1", state=state, pid=dead_pid(), started_at=time.time()))
    assert reg.get("server1").state is State.EXITED
    assert FileRegistry(tmp_path, check_liveness=False).get("server1").state == state


def test_live_pid_with_wrong_start_time_reads_exited(tmp_path: Path) -> None:
    me = psutil.Process()
    reg = FileRegistry(tmp_path)
    reg.register(rec("server1", state="serving", pid=me.pid, started_at=me.create_time() - 60))
    assert reg.get("server1").state is State.EXITED


def test_live_pid_with_right_start_time_stays(tmp_path: Path) -> None:
    me = psutil.Process()
    reg = FileRegistry(tmp_path)
    stored = reg.register(rec("server1", state="serving", pid=me.pid,
                              started_at=me.create_time()))
    assert reg.get("server1") == stored


def test_down_states_are_not_checked(tmp_path: Path) -> None:
    reg = FileRegistry(tmp_path)
    stored = reg.register(rec("server1", state="killed", pid=dead_pid(), started_at=1.0))
    assert reg.get("server1") == stored


def test_watch_reports_a_process_that_dies_without_a_write(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        reg = FileRegistry(tmp_path)
        reg.register(rec("server1", state="serving", pid=child.pid,
                         started_at=psutil.Process(child.pid).create_time()))
        with Watcher(reg) as w:
            assert w.wait_for(lambda s: True).records["server1"].state is State.SERVING
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=10)
            # No registry write: the watcher's periodic rescan (1 s) must notice.
            snap = w.wait_for(lambda s: s.records["server1"].state is State.EXITED, timeout=3)
            assert snap.revision == 1
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
