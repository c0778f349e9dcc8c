"""Both balanced channels publish their statistics to the state dir, for ``top`` and the
console, remove the file when they close, and publish nothing when told not to."""

from __future__ import annotations

from collections.abc import Iterator
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
