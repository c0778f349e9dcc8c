"""Both balanced channels publish their statistics to the state dir, for ``top`` and the
console, remove the file when they close, and publish nothing when told not to."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc
from devcluster.client import BalancedChannel
from devcluster.client.stats import CLIENTS_DIR, read_traffic
from tests._clients import BOTH, open_client
from tests._servers import MemoryRegistry, local_servers


@pytest.fixture
def registry() -> Iterator[MemoryRegistry]:
    with local_servers("server1", "server2") as found:
        yield MemoryRegistry(s.record() for s in found.values())


def _files(state_dir: Path) -> list[Path]:
    return sorted((state_dir / CLIENTS_DIR).glob("*.json"))


@BOTH
def test_a_channel_publishes_what_it_sees_and_cleans_up(driver: str, registry: MemoryRegistry,
                                                        tmp_path: Path) -> None:
    with open_client(driver, "server", registry, state_dir=tmp_path) as client:
        for _ in range(10):
            client.say()
        client.channel._stats.flush()  # the timer publishes once a second; don't wait for it
        assert len(_files(tmp_path)) == 1
        traffic = read_traffic(tmp_path)
        assert set(traffic) == {"server1", "server2"}
        assert all(t.to_dict()["ok"] == 5 for t in traffic.values())
        assert all(t.p50_ms is not None and t.p50_ms > 0 for t in traffic.values())
    assert _files(tmp_path) == []


@BOTH
def test_stats_off_publishes_nothing(driver: str, registry: MemoryRegistry, tmp_path: Path) -> None:
    with open_client(driver, "server", registry, state_dir=tmp_path, stats=False) as client:
        client.say()
        assert client.channel._stats is None
    assert not (tmp_path / CLIENTS_DIR).exists()


def test_an_on_call_set_after_construction_hears_every_call(
        registry: MemoryRegistry, tmp_path: Path) -> None:
    # `devcluster demo` does this; statistics' fast path (no CallInfo) must not skip it.
    heard: list[str] = []
    request = helloworld_pb2.HelloRequest(name="x")
    with BalancedChannel("server", registry, state_dir=tmp_path) as channel:
        channel.on_call = lambda info: heard.append(info.instance)
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        for _ in range(4):
            stub.SayHello(request, timeout=5)
    assert sorted(heard) == ["server1", "server1", "server2", "server2"]


def _revision_in_file(state_dir: Path) -> int | None:
    files = _files(state_dir)
    if len(files) != 1:
        return None
    with contextlib.suppress(OSError, ValueError):
        value = json.loads(files[0].read_text()).get("revision")
        return value if isinstance(value, int) else None
    return None


def _until(predicate: Callable[[], bool], timeout: float) -> float:
    began = time.monotonic()
    while not predicate():
        assert time.monotonic() - began < timeout, "timed out"
        time.sleep(0.002)
    return time.monotonic() - began


@BOTH
def test_a_channel_publishes_each_registry_revision_it_applies_at_once(
        driver: str, registry: MemoryRegistry, tmp_path: Path) -> None:
    """A stop waits until the clients' files say they applied its `draining`
    (devcluster.supervisor.drain): written when applied, not on the 1 s tick."""
    first = registry.snapshot().revision
    with open_client(driver, "server", registry, state_dir=tmp_path) as client:
        assert client.channel._stats.interval == 1.0
        # The first view is published at once too: a new client is a watcher from the start.
        _until(lambda: _revision_in_file(tmp_path) == first, 0.5)
        for _ in range(3):
            drained = registry.update_many({"server1": {"state": "draining"}}).revision
            took = _until(lambda r=drained: _revision_in_file(tmp_path) == r, 0.5)
            assert took < 0.5, f"revision {drained} written after {took:.3f} s"
            registry.update_many({"server1": {"state": "serving"}})
        assert client.say()[1] in {"server1", "server2"}
        assert json.loads(_files(tmp_path)[0].read_text())["version"] == 1
