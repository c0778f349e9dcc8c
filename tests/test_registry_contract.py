"""The registry contract, one suite run against every backend: the file and etcd.

What a supervisor, the CLI and the balancing client rely on, whatever stores the
records: semantics of each call, validation that writes nothing, a revision that grows
by one per write, watches that see other processes' writes, and concurrent writers
in several processes that lose nothing. The etcd runs use a real etcd (tests/_etcd.py);
each test gets its own key prefix.

This file is also the worker those cross-process tests start::

    python tests/test_registry_contract.py stress SPEC NAME COUNT
        print "ready", wait for a line on stdin, then COUNT times add 1 (one atomic
        read-modify-write each) to ``restarts`` of record ``shared`` and of NAME.
    python tests/test_registry_contract.py bump SPEC NAME
        add 1 to ``restarts`` of NAME once; print the new revision.

SPEC is what ``open_registry`` takes: a state dir or an ``etcd://`` URL.
"""

from __future__ import annotations

import asyncio
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import pytest
from _etcd import EtcdServer, children_except_etcd, require_etcd, running_etcd

from devcluster.errors import UnknownInstanceError, UsageError
from devcluster.registry import FileRegistry, Record, Registry, Snapshot, State, open_registry

ROOT = Path(__file__).resolve().parent.parent
# Workers import devcluster from this checkout whatever the caller's PYTHONPATH.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

Changes = Mapping[str, Mapping[str, Any]]


class Modifiable(Protocol):
    """Both backends offer an atomic read-modify-write (not yet on the base class)."""

    def modify(self, decide: Callable[[Snapshot], Changes]) -> Snapshot: ...


def increments(*names: str) -> Callable[[Snapshot], Changes]:
    """A ``modify`` callback adding 1 to ``restarts`` of each of ``names``."""

    def decide(current: Snapshot) -> Changes:
        return {n: {"restarts": current.records[n].restarts + 1} for n in names}

    return decide


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_child_left() -> Iterator[None]:
    """Every test must end with no child process of ours alive (the etcd server aside)."""
    import psutil

    yield
    _gone, alive_ = psutil.wait_procs(children_except_etcd(), timeout=5)
    for proc in alive_:
        proc.kill()
    assert not alive_, f"test left child processes behind: {alive_}"


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    require_etcd()
    with running_etcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@dataclass
class Backend:
    """One backend under test: a spec other processes can open, and a factory."""

    kind: str
    spec: str
    make: Callable[[], Registry]
    opened: list[Registry] = field(default_factory=list)

    def open(self) -> Registry:
        """A new registry object on this backend's store (another "supervisor")."""
        reg = self.make()
        self.opened.append(reg)
        return reg


@pytest.fixture(params=["file", "etcd"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "etcd":
        server: EtcdServer = request.getfixturevalue("etcd_server")
        from devcluster.registry.etcd import EtcdRegistry

        spec = server.url(f"/test-{uuid.uuid4().hex[:12]}")

        def make() -> Registry:
            # A short resync so the quiet-period checks below span several re-reads.
            return EtcdRegistry(spec, resync_every=0.5)
    else:
        spec = str(tmp_path / "state")

        def make() -> Registry:
            return FileRegistry(spec, check_liveness=False)

    b = Backend(request.param, spec, make)
    yield b
    for reg in b.opened:
        reg.close()


@pytest.fixture
def reg(backend: Backend) -> Registry:
    return backend.open()


def rec(name: str, **fields: Any) -> Record:
    return Record(name, name.rstrip("0123456789"), f"127.0.0.1:{5000 + len(name)}", **fields)


def worker(*args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, *args], env=ENV, text=True, stdin=stdin,
        stdout=subprocess.PIPE,
    )


# -- semantics ---------------------------------------------------------------------


def test_empty_registry_has_no_records(reg: Registry) -> None:
    assert dict(reg.snapshot().records) == {}
    with pytest.raises(UnknownInstanceError, match="known instances: none"):
        reg.get("server1")


def test_register_get_update_deregister(reg: Registry) -> None:
    start = reg.snapshot().revision
    before = time.time()
    stored = reg.register(rec("server1", state="starting"))
    assert stored.state is State.STARTING and stored.updated_at >= before
    assert reg.get("server1") == stored
    assert reg.snapshot().revision == start + 1

    updated = reg.update("server1", weight=5, state="serving", pid=123)
    assert (updated.weight, updated.state, updated.pid) == (5, State.SERVING, 123)
    assert updated.updated_at >= stored.updated_at
    assert reg.get("server1") == updated
    assert reg.snapshot().revision == start + 2

    reg.register(rec("server2"))
    reg.deregister("server1")
    assert list(reg.snapshot().records) == ["server2"]
    assert reg.snapshot().revision == start + 4
    reg.deregister("server1")  # absent: no error, no write
    assert reg.snapshot().revision == start + 4
    with pytest.raises(UnknownInstanceError, match="known instances: server2"):
        reg.get("server1")


def test_register_replaces_a_record(reg: Registry) -> None:
    reg.register(rec("server1", weight=3))
    again = reg.register(rec("server1", weight=7, state="serving"))
    assert reg.get("server1") == again and again.weight == 7
    assert list(reg.snapshot().records) == ["server1"]


def test_update_many_is_one_write_and_touches_only_named(reg: Registry) -> None:
    start = reg.reset([rec("a1"), rec("b1"), rec("c1")]).revision
    untouched = reg.get("c1")
    snap = reg.update_many({"a1": {"weight": 0}, "b1": {"enabled": False}})
    assert snap.revision == start + 1 == reg.snapshot().revision
    assert snap.records["a1"].weight == 0 and not snap.records["b1"].enabled
    assert snap == reg.snapshot()  # what the write returns is what is stored
    assert reg.get("c1") == untouched


def test_reset_replaces_everything_and_keeps_revision_growing(reg: Registry) -> None:
    first = reg.reset([rec("zeta1"), rec("alpha1")])
    assert list(reg.snapshot().records) == ["alpha1", "zeta1"]  # sorted by name
    reg.update("zeta1", weight=2)
    snap = reg.reset([rec("new1")])
    assert list(snap.records) == ["new1"] and snap.revision == first.revision + 2
    assert reg.snapshot() == snap
    with pytest.raises(UsageError, match="duplicate instance name"):
        reg.reset([rec("x1"), rec("x1")])
    assert reg.snapshot() == snap


def test_reset_is_all_or_nothing(reg: Registry) -> None:
    snap = reg.reset([rec("server1")])
    with pytest.raises(UsageError, match="weight"):
        reg.reset([rec("server2"), rec("server3", weight=-1)])
    assert reg.snapshot() == snap


def test_unknown_name_writes_nothing(reg: Registry) -> None:
    reg.reset([rec("server1"), rec("server2")])
    before = reg.snapshot()
    with pytest.raises(UnknownInstanceError) as info:
        reg.update("server9", weight=3)
    assert info.value.name == "server9" and info.value.known == ["server1", "server2"]
    with pytest.raises(UnknownInstanceError):
        reg.update_many({"server1": {"weight": 3}, "server9": {"weight": 3}})
    assert reg.snapshot() == before


@pytest.mark.parametrize("weight", ["abc", -1, 1001, True, 1.5, None])
def test_bad_weight_rejected_nothing_written(reg: Registry, weight: Any) -> None:
    reg.register(rec("server1"))
    before = reg.snapshot()
    with pytest.raises(UsageError) as info:
        reg.update("server1", weight=weight)
    assert str(info.value) == f"weight must be an integer 0..1000, got {weight!r}"
    with pytest.raises(UsageError):
        reg.register(rec("server2", weight=weight))
    assert reg.snapshot() == before


@pytest.mark.parametrize("weight", [0, 1000])
def test_weight_bounds_accepted(reg: Registry, weight: int) -> None:
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
        ({"metadata": {"zone": 1}}, UsageError),
        ({"metadata": {"a=b": "c"}}, UsageError),
        ({"metadata": ["zone"]}, UsageError),
    ],
)
def test_bad_fields_rejected_nothing_written(
    reg: Registry, fields: dict[str, Any], error: type[Exception]
) -> None:
    reg.register(rec("server1"))
    before = reg.snapshot()
    with pytest.raises(error):
        reg.update("server1", **fields)
    assert reg.snapshot() == before


def test_records_round_trip_every_field(reg: Registry) -> None:
    full = rec("server1", weight=9, enabled=False, state=State.DRAINING, pid=4242,
               restarts=3, started_at=1700000000.25, metadata={"zone": "a", "tier": ""})
    stored = reg.register(full)
    assert stored == full.with_(updated_at=stored.updated_at)
    assert reg.get("server1") == stored


def test_metadata_defaults_to_empty_and_is_set_replaced_and_seen_by_others(
        backend: Backend, reg: Registry) -> None:
    assert reg.register(rec("server1")).metadata == {}
    reg.update("server1", metadata={"zone": "a"})
    other = backend.open()
    assert other.get("server1").metadata == {"zone": "a"}
    # A read-modify-write keeps what another writer set meanwhile.
    other.modify(lambda s: {"server1": {"metadata": {**s.records["server1"].metadata,
                                                     "tier": "gold"}}})
    reg.update("server1", weight=3)  # other fields leave metadata alone
    assert reg.get("server1").metadata == {"zone": "a", "tier": "gold"}
    reg.update("server1", metadata={})
    assert reg.get("server1").metadata == {}


def test_a_second_registry_sees_the_same_records(backend: Backend) -> None:
    one, two = backend.open(), backend.open()
    one.register(rec("a1"))
    two.register(rec("b1"))
    two.update("a1", weight=4)
    assert one.snapshot() == two.snapshot()
    assert list(one.snapshot().records) == ["a1", "b1"]
    assert one.get("a1").weight == 4


def test_open_registry_picks_the_backend(backend: Backend) -> None:
    reg = open_registry(backend.spec)
    try:
        assert type(reg) is type(backend.open())
    finally:
        reg.close()


# -- concurrency -------------------------------------------------------------------

WORKERS, INCREMENTS = 4, 50


def test_concurrent_writers_in_several_processes_lose_nothing(
    backend: Backend, reg: Registry
) -> None:
    own = [f"w{i}" for i in range(WORKERS)]
    start = reg.reset([rec("shared"), *(rec(n) for n in own)]).revision
    reads, problems = [0], []
    done = threading.Event()

    def read_loop() -> None:
        # Every write adds one to "shared" and one to a worker's record, atomically:
        # no reader may ever see the two disagree.
        last = 0
        while not done.is_set():
            try:
                snap = reg.snapshot()
                assert snap.revision >= last, "revision went backwards"
                assert snap.records["shared"].restarts == sum(
                    snap.records[n].restarts for n in own)
                last = snap.revision
                reads[0] += 1
            except Exception as e:  # reported by the main thread
                problems.append(e)
                return
            time.sleep(0.002)  # leave the 2 CPUs to the writers

    procs = [worker("stress", backend.spec, n, str(INCREMENTS), stdin=subprocess.PIPE)
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
    assert final.records["shared"].restarts == WORKERS * INCREMENTS
    assert all(final.records[n].restarts == INCREMENTS for n in own)
    # One revision per write; etcd's store-wide revision also counts nothing else here.
    assert final.revision == start + WORKERS * INCREMENTS


# -- watch -------------------------------------------------------------------------


class Watcher:
    """Registry.watch() running in a background thread, as the client runs it."""

    def __init__(self, registry: Registry) -> None:
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

    def wait_for(self, ok: Callable[[Snapshot], bool], timeout: float = 2.0) -> Snapshot:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                snap = self.seen.get(timeout=left)
            except queue.Empty:
                break
            if ok(snap):
                return snap
        raise AssertionError(f"no matching snapshot within {timeout} s; errors={self.errors}")


def test_watch_in_thread_sees_write_from_another_process(backend: Backend, reg: Registry) -> None:
    first = reg.reset([rec("server1")])
    with Watcher(reg) as w:
        assert w.wait_for(lambda s: True) == first  # the current snapshot first
        proc = worker("bump", backend.spec, "server1")
        out, _ = proc.communicate(timeout=30)
        revision = int(out)
        snap = w.wait_for(lambda s: s.revision >= revision)
        assert snap.revision == revision == first.revision + 1
        assert snap.records["server1"].restarts == 1
        started = time.monotonic()
    assert time.monotonic() - started < 1.0  # stop ends the watch promptly


def restarts_are(name: str, n: int) -> Callable[[Snapshot], bool]:
    """A snapshot predicate: record ``name`` has ``n`` restarts."""
    return lambda snap: snap.records[name].restarts == n


def test_watch_yields_each_change_once_and_whole(reg: Registry) -> None:
    reg.reset([rec("a1"), rec("b1")])
    with Watcher(reg) as w:
        w.wait_for(lambda s: "a1" in s.records)
        for n in range(1, 4):
            reg.update("a1", restarts=n)
            w.wait_for(restarts_are("a1", n))
        # One write of two records: never seen half done.
        reg.update_many({"a1": {"weight": 5}, "b1": {"weight": 5}})
        snap = w.wait_for(lambda s: s.records["a1"].weight == 5 or s.records["b1"].weight == 5)
        assert snap.records["a1"].weight == snap.records["b1"].weight == 5
        with pytest.raises(AssertionError):
            w.wait_for(lambda s: True, timeout=1.5)  # spans re-reads: nothing new


def test_watch_sees_registrations_and_removals(backend: Backend, reg: Registry) -> None:
    other = backend.open()
    with Watcher(reg) as w:
        w.wait_for(lambda s: True)
        other.register(rec("server1"))
        w.wait_for(lambda s: "server1" in s.records)
        other.deregister("server1")
        assert dict(w.wait_for(lambda s: "server1" not in s.records).records) == {}


def test_awatch_sees_a_write(reg: Registry) -> None:
    first = reg.reset([rec("server1")])

    async def follow() -> list[int]:
        revisions = []
        agen = cast(AsyncGenerator[Snapshot, None], reg.awatch())
        try:
            async for snap in agen:
                revisions.append(snap.revision - first.revision)
                if snap.revision == first.revision:
                    # Off the loop: the write must not wait for the watcher.
                    await asyncio.to_thread(reg.update, "server1", weight=7)
                else:
                    assert snap.records["server1"].weight == 7
                    break
        finally:
            await agen.aclose()
        return revisions

    async def main() -> list[int]:
        return await asyncio.wait_for(follow(), timeout=5)

    assert asyncio.run(main()) == [0, 1]


# -- worker ------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """The worker process (see the module docstring)."""
    mode, spec, name, *rest = argv
    reg = open_registry(spec)
    try:
        rmw = cast(Modifiable, reg)
        if mode == "stress":
            count = int(rest[0])
            print("ready", flush=True)
            sys.stdin.readline()  # start together with the other workers
            bump = increments("shared", name)
            for _ in range(count):
                rmw.modify(bump)
            return 0
        if mode == "bump":
            print(rmw.modify(increments(name)).revision, flush=True)
            return 0
    finally:
        reg.close()
    print(f"unknown mode {mode!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
