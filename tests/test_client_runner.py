"""The runner behind ``devcluster client``: lines, JSON and the closing summary."""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterator

import pytest

from devcluster.cli.client_runner import ClientOptions, run_client
from devcluster.cli.views import Terminal
from devcluster.registry.record import Record, State
from tests._servers import LocalServer, MemoryRegistry, dead_address, local_servers


@pytest.fixture
def servers() -> Iterator[dict[str, LocalServer]]:
    with local_servers("server1", "server2", "server3") as found:
        yield found


@pytest.fixture
def registry(servers: dict[str, LocalServer]) -> MemoryRegistry:
    return MemoryRegistry(s.record() for s in servers.values())



def test_runner_prints_each_call_and_a_summary(servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([servers["server1"].record(weight=2), servers["server2"].record(),
                               Record("server3", "server", dead_address(), state=State.SERVING,
                                      pid=1, started_at=1.0)])
    console = Terminal(io.StringIO(), colour=False)
    summary = run_client(ClientOptions("server", count=7, interval=0, registry=registry),
                         console)
    text = console.stream.getvalue()
    assert re.search(r"^  1  server1  127\.0\.0\.1:\d+  \d+\.\d ms  Hello world-1 from server1$",
                     text, re.M)
    assert re.search(r"server3  127\.0\.0\.1:\d+  UNAVAILABLE  retried on server1", text)
    assert summary.calls == 7 and summary.failures == 0
    assert summary.instances["server3"].failures == 1
    assert summary.weights == {"server1": 2, "server2": 1, "server3": 1}
    assert "7 calls, 0 failed" in text


def test_runner_json_lines(registry: MemoryRegistry) -> None:
    console = Terminal(io.StringIO(), colour=False)
    run_client(ClientOptions("server", count=6, interval=0, registry=registry, json=True,
                             concurrency=3), console)
    lines = [json.loads(line) for line in console.stream.getvalue().splitlines()]
    calls, (last,) = lines[:-1], lines[-1:]
    assert sorted(c["seq"] for c in calls) == [1, 2, 3, 4, 5, 6]
    assert set(calls[0]) == {"seq", "instance", "address", "ok", "code", "latency_ms",
                             "retried", "message"}
    assert all(c["message"] == f"Hello world-{c['seq']} from {c['instance']}" for c in calls)
    summary = last["summary"]
    assert summary["calls"] == 6 and summary["failures"] == 0
    assert {n: s["calls"] for n, s in summary["instances"].items()} == {
        "server1": 2, "server2": 2, "server3": 2}
    assert summary["instances"]["server1"]["weight_share"] == pytest.approx(1 / 3, abs=1e-3)


def test_runner_reports_failures_and_stops_on_request(servers: dict[str, LocalServer]) -> None:
    registry = MemoryRegistry([servers["server1"].record(state=State.DRAINING)])
    console = Terminal(io.StringIO(), colour=False)
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    summary = run_client(ClientOptions("server", interval=0.05, timeout=0.1,
                                       registry=registry), console, stop)
    assert summary.calls >= 1 and summary.failures == summary.calls
    text = console.stream.getvalue()
    assert "  1  -    UNAVAILABLE  " in text
    assert "no usable instance of service 'server': server1 draining" in text
    assert summary.instances == {}  # no instance took part
