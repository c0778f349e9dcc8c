"""What only the etcd backend has: leases (liveness across machines), transactions that
retry on conflict, ownership of records per supervisor, its URL, and a watch that
survives etcd restarting. Against a real etcd (tests/_etcd.py).

This file is also the worker that stands in for a supervisor on another machine::

    python tests/test_registry_etcd.py hold URL TTL NAME...
        register NAME... on a lease of TTL seconds kept alive every TTL/4 seconds,
        print "ready", then wait (for SIGKILL) until stdin closes.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _etcd import EtcdServer, children_except_etcd, require_etcd, running_etcd

from devcluster.errors import CorruptRegistryError, RegistryError, UnknownInstanceError, UsageError
from devcluster.registry import Record, Snapshot, open_registry

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}

try:
    import etcd3gw
    from etcd3gw.lease import Lease

    from devcluster.registry.etcd import EtcdRegistry, EtcdTarget
except ImportError:  # every test calls require_etcd() first: fails in CI, skips elsewhere
    pass


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_child_left() -> Iterator[None]:
    """Every test must end with no child process of ours alive (the etcd servers aside)."""
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


@pytest.fixture
def url(etcd_server: EtcdServer) -> str:
    """A registry URL with a prefix of this test's own."""
    return etcd_server.url(f"/test-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def open_reg(url: str) -> Iterator[Callable[..., EtcdRegistry]]:
    """``open_reg(**kwargs)``: an EtcdRegistry on this test's prefix, closed at teardown."""
    opened: list[EtcdRegistry] = []

    def make(**kwargs: Any) -> EtcdRegistry:
        kwargs.setdefault("resync_every", 0.5)
        reg = EtcdRegistry(url, **kwargs)
        opened.append(reg)
        return reg

    yield make
    for reg in opened:
        reg.close()


@pytest.fixture
def raw(etcd_server: EtcdServer) -> etcd3gw.Etcd3Client:
    """A plain etcd client, to look at and tamper with what the registry stored."""
    return etcd3gw.Etcd3Client(host="127.0.0.1", port=etcd_server.client_port, timeout=5)


def rec(name: str, **fields: Any) -> Record:
    return Record(name, name.rstrip("0123456789"), f"127.0.0.1:{5000 + len(name)}", **fields)


def restarts_are(n: int) -> Callable[[Snapshot], bool]:
    """A snapshot predicate: ``server1`` has ``n`` restarts."""
    return lambda snap: snap.records["server1"].restarts == n


def lease_threads() -> set[str]:
    """Names of the live keep-alive threads (one per registry holding a lease)."""
    return {t.name for t in threading.enumerate() if t.name.startswith("devcluster-etcd-lease-")}


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)
    return value


class Watcher:
    """EtcdRegistry.watch() in a background thread, recording when it saw what."""

    def __init__(self, registry: EtcdRegistry) -> None:
        self.stop = threading.Event()
        self.seen: queue.Queue[tuple[float, Snapshot]] = queue.Queue()
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(registry,), daemon=True)

    def _run(self, registry: EtcdRegistry) -> None:
        try:
            for snap in registry.watch(self.stop):
                self.seen.put((time.monotonic(), snap))
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

    def wait_for(self, ok: Callable[[Snapshot], bool], timeout: float = 2.0) -> tuple[float, Snapshot]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                at, snap = self.seen.get(timeout=left)
            except queue.Empty:
                break
            if ok(snap):
                return at, snap
        raise AssertionError(f"no matching snapshot within {timeout} s; errors={self.errors}")


# -- URL and errors ------------------------------------------------------------------


@pytest.mark.parametrize("url, host, port, prefix", [
    ("etcd://127.0.0.1:2379", "127.0.0.1", 2379, "/devcluster"),
    ("etcd://etcd.lan", "etcd.lan", 2379, "/devcluster"),
    ("etcd://10.1.2.3:23790/team-a/", "10.1.2.3", 23790, "/team-a"),
    ("etcd://[::1]:2379/x/y", "::1", 2379, "/x/y"),
])
def test_url_parsing(url: str, host: str, port: int, prefix: str) -> None:
    require_etcd()
    assert EtcdTarget.parse(url) == EtcdTarget(host, port, prefix)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:2379", "etcd://", "etcd://h:notaport", "etcd://h:2379/a b",
    "etcd://h:2379/caf\u00e9", "etcd://user@h:2379", "etcd://h:2379?x=1",
])
def test_bad_urls_are_usage_errors(url: str) -> None:
    require_etcd()
    with pytest.raises(UsageError, match=r"use etcd://HOST:PORT\[/PREFIX\]"):
        EtcdRegistry(url)


def test_open_registry_returns_an_etcd_registry(url: str) -> None:
    reg = open_registry(url)
    try:
        assert isinstance(reg, EtcdRegistry) and reg.url == url
        assert (reg.lease_ttl, reg.keepalive_every) == (10, 3)
    finally:
        reg.close()


def test_keepalive_must_beat_within_the_ttl() -> None:
    require_etcd()
    with pytest.raises(UsageError, match="keepalive_every"):
        EtcdRegistry("etcd://127.0.0.1:2379", lease_ttl=2, keepalive_every=2)


def test_unreachable_etcd_is_a_one_line_registry_error() -> None:
    require_etcd()
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reg = EtcdRegistry(f"etcd://127.0.0.1:{port}/x", timeout=2)
    calls: list[Callable[[], Any]] = [
        reg.snapshot, lambda: reg.register(rec("a1")), lambda: reg.update("a1", weight=2),
        lambda: reg.deregister("a1"), lambda: next(iter(reg.watch())),
    ]
    for call in calls:
        with pytest.raises(RegistryError) as info:
            call()
        message = str(info.value)
        assert f"etcd://127.0.0.1:{port}/x" in message
        assert f"is etcd running at 127.0.0.1:{port}?" in message
        assert "connection refused" in message and "\n" not in message
    reg.close()


def test_corrupt_record_is_named_with_the_fix(open_reg: Callable[..., EtcdRegistry],
                                              raw: etcd3gw.Etcd3Client) -> None:
    reg = open_reg()
    raw.put(reg.key("server1"), '{"name": "server1", "weight": "heavy"}')
    with pytest.raises(CorruptRegistryError) as info:
        reg.snapshot()
    assert reg.key("server1") in str(info.value)
    assert f"etcdctl del {reg.key('server1')}" in str(info.value)


# -- storage and leases --------------------------------------------------------------


def test_record_is_the_file_backends_json_on_our_lease(
    open_reg: Callable[..., EtcdRegistry], raw: etcd3gw.Etcd3Client
) -> None:
    reg = open_reg()
    assert reg.lease_id is None  # no lease until something is registered
    stored = reg.register(rec("server1", pid=77))
    [(value, meta)] = raw.get(reg.key("server1"), metadata=True)
    assert reg.key("server1").startswith(reg.target.prefix + "/instances/")
    assert json.loads(value) == stored.to_dict()
    assert list(json.loads(value)) == list(stored.to_dict())  # the file's field order
    assert reg.lease_id is not None and int(meta["lease"]) == reg.lease_id
    assert 0 < Lease(reg.lease_id, raw).ttl() <= 10


def test_reads_and_updates_take_no_lease(open_reg: Callable[..., EtcdRegistry]) -> None:
    owner, cli = open_reg(), open_reg()
    owner.register(rec("server1"))
    before = lease_threads()
    cli.update("server1", weight=3)
    cli.deregister("nothing")
    cli.snapshot()
    assert cli.lease_id is None  # `devcluster weight` leaves no lease and no thread behind
    assert lease_threads() == before


def test_update_keeps_the_owners_lease(
    open_reg: Callable[..., EtcdRegistry], raw: etcd3gw.Etcd3Client
) -> None:
    owner, cli = open_reg(), open_reg()
    owner.register(rec("server1"))
    cli.update("server1", weight=9)
    [(_value, meta)] = raw.get(owner.key("server1"), metadata=True)
    assert int(meta["lease"]) == owner.lease_id
    owner.close()
    assert dict(cli.snapshot().records) == {}


def test_keepalive_holds_records_past_the_ttl(open_reg: Callable[..., EtcdRegistry]) -> None:
    reg = open_reg(lease_ttl=2, keepalive_every=0.5)
    reg.register(rec("server1"))
    time.sleep(3)  # 1.5 TTLs
    assert "server1" in open_reg().snapshot().records


def test_sigkilled_owner_loses_its_records_within_the_ttl(
    url: str, open_reg: Callable[..., EtcdRegistry]
) -> None:
    ttl = 2
    survivor, viewer = open_reg(), open_reg()
    survivor.register(rec("local1"))
    holder = subprocess.Popen(
        [sys.executable, __file__, "hold", url, str(ttl), "remote1", "remote2"],
        env=ENV, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with Watcher(viewer) as w:
            w.wait_for(lambda s: list(s.records) == ["local1", "remote1", "remote2"])
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=5)
            killed = time.monotonic()
            at, snap = w.wait_for(lambda s: "remote1" not in s.records, timeout=ttl + 3)
        # etcd checks expiry every 500 ms; the last beat was at most TTL/4 before the kill.
        assert ttl * 0.5 <= at - killed <= ttl + 1.0, at - killed
        assert list(snap.records) == ["local1"]  # the other supervisor's record stays
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
        for pipe in (holder.stdin, holder.stdout):
            if pipe is not None:
                pipe.close()


def test_close_revokes_the_lease_at_once(open_reg: Callable[..., EtcdRegistry],
                                         raw: etcd3gw.Etcd3Client) -> None:
    reg, viewer = open_reg(), open_reg()
    reg.reset([rec("a1"), rec("b1")])
    lease = reg.lease_id
    assert lease is not None
    reg.close()
    assert dict(viewer.snapshot().records) == {}
    assert Lease(lease, raw).ttl() == -1  # gone, not merely left to expire
    assert f"devcluster-etcd-lease-{lease:x}" not in lease_threads()
    reg.close()  # idempotent
    with pytest.raises(RegistryError, match="closed"):
        reg.register(rec("c1"))


def test_a_lost_lease_is_renewed_and_the_records_put_back(
    open_reg: Callable[..., EtcdRegistry], raw: etcd3gw.Etcd3Client
) -> None:
    reg, viewer = open_reg(lease_ttl=2, keepalive_every=0.3), open_reg()
    reg.reset([rec("a1"), rec("b1")])
    reg.update("a1", weight=4)
    lost = reg.lease_id
    assert lost is not None
    Lease(lost, raw).revoke()  # as if etcd had been out of reach for longer than the TTL
    assert dict(viewer.snapshot().records) == {}

    def both_back() -> Snapshot | None:
        snap = viewer.snapshot()
        return snap if len(snap.records) == 2 else None

    snap = wait_until(both_back, timeout=3, what="records put back on a new lease")
    assert reg.lease_id not in (None, lost)
    assert snap.records["a1"].weight == 4  # as this supervisor last wrote it
    reg.register(rec("c1"))  # and writes carry on, on the new lease
    reg.close()
    assert dict(viewer.snapshot().records) == {}


def test_the_keepalive_tries_again_soon_after_etcd_was_unreachable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A supervisor cut off from etcd (a partition, etcd restarting) must not wait a
    # whole beat once etcd answers again: records are kept, or put back, at once.
    require_etcd()
    with running_etcd(tmp_path / "etcd") as server, caplog.at_level(
            logging.WARNING, logger="devcluster.registry.etcd"):
        reg = EtcdRegistry(server.url("/retry"), lease_ttl=10, keepalive_every=4)
        try:
            reg.register(rec("a1"))
            server.stop()
            wait_until(lambda: "keep-alive failed" in caplog.text, timeout=8,
                       what="the keep-alive to fail")
            server.restart()
            back = time.monotonic()
            wait_until(lambda: "keep-alive works again" in caplog.text, timeout=8,
                       what="the keep-alive to work again")
            assert time.monotonic() - back < 1.5  # not the 4 s beat
            assert list(reg.snapshot().records) == ["a1"]
        finally:
            reg.close()


# -- ownership -----------------------------------------------------------------------


def test_reset_replaces_only_this_supervisors_records(
    open_reg: Callable[..., EtcdRegistry],
) -> None:
    one, two = open_reg(), open_reg()
    one.reset([rec("a1"), rec("a2")])
    two.reset([rec("b1")])
    assert list(one.reset([rec("a1")]).records) == ["a1", "b1"]
    assert list(two.reset([rec("b2")]).records) == ["a1", "b2"]
    two.close()
    assert list(one.snapshot().records) == ["a1"]


def test_register_takes_a_name_over(open_reg: Callable[..., EtcdRegistry]) -> None:
    one, two = open_reg(), open_reg()
    one.register(rec("x1"))
    two.register(rec("x1", weight=2))
    one.reset([])  # x1 is no longer one's: not removed
    assert one.get("x1").weight == 2
    one.close()
    assert "x1" in two.snapshot().records
    two.close()
    assert dict(open_reg().snapshot().records) == {}


# -- transactions --------------------------------------------------------------------


def test_update_retries_when_another_writer_commits_in_between(
    open_reg: Callable[..., EtcdRegistry],
) -> None:
    reg, other = open_reg(), open_reg()
    reg.register(rec("server1"))
    calls = []

    def decide(current: Snapshot) -> dict[str, dict[str, Any]]:
        calls.append(current.records["server1"].restarts)
        if len(calls) == 1:  # another writer commits between our read and our commit
            other.update("server1", restarts=10)
        return {"server1": {"restarts": current.records["server1"].restarts + 1}}

    snap = reg.modify(decide)
    assert calls == [0, 10]  # the first commit failed its mod_revision compare
    assert snap.records["server1"].restarts == 11 == reg.get("server1").restarts


def test_update_of_a_record_removed_in_between_writes_nothing(
    open_reg: Callable[..., EtcdRegistry],
) -> None:
    reg, other = open_reg(), open_reg()
    reg.reset([rec("server1"), rec("server2")])

    def decide(current: Snapshot) -> dict[str, dict[str, Any]]:
        if "server1" in current.records:
            other.deregister("server1")
        return {"server1": {"weight": 5}, "server2": {"weight": 5}}

    with pytest.raises(UnknownInstanceError, match="known instances: server2"):
        reg.modify(decide)
    assert reg.get("server2").weight == 1


# -- watch ---------------------------------------------------------------------------


def test_watch_survives_etcd_restarting(tmp_path: Path) -> None:
    require_etcd()
    with running_etcd(tmp_path / "own-etcd") as server:
        reg = EtcdRegistry(server.url("/restart"), resync_every=0.3)
        writer = EtcdRegistry(server.url("/restart"))
        try:
            reg.register(rec("server1"))
            with Watcher(writer) as w:
                w.wait_for(lambda s: "server1" in s.records)
                server.restart()  # drops every connection, the watch stream too
                writer.update("server1", weight=6)
                w.wait_for(lambda s: s.records["server1"].weight == 6, timeout=3)
                writer.update("server1", weight=7)  # and the stream works again
                w.wait_for(lambda s: s.records["server1"].weight == 7, timeout=3)
            assert "server1" in writer.snapshot().records  # the lease survived too
        finally:
            reg.close()
            writer.close()


def test_watch_pushes_in_milliseconds(open_reg: Callable[..., EtcdRegistry]) -> None:
    # Well inside the 0.5 s re-read: the change came by the watch stream.
    reg, writer = open_reg(), open_reg()
    writer.register(rec("server1"))
    with Watcher(reg) as w:
        w.wait_for(lambda s: True)
        time.sleep(0.1)  # the stream is open
        for n in range(1, 6):
            writer.update("server1", restarts=n)
            done = time.monotonic()
            at, _ = w.wait_for(restarts_are(n))
            assert at - done < 0.25  # the re-read would take 0.5 s


# -- worker --------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    """The worker process (see the module docstring)."""
    mode, url, ttl, *names = argv
    if mode != "hold":
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    reg = EtcdRegistry(url, lease_ttl=float(ttl), keepalive_every=float(ttl) / 4)
    for name in names:
        reg.register(rec(name))
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes stdin, or SIGKILLs us
    reg.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
