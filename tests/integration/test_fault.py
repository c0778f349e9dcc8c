"""`devcluster fault` and Cluster.fault: a fault stored in the registry hits only the calls
its instance serves, in devcluster's own balanced clients (both drivers); ps, events and the
registry show it; --clear and the context manager remove it (issue 27)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from devcluster._proto.helloworld_pb2 import HelloRequest
from devcluster._proto.helloworld_pb2_grpc import GreeterStub
from devcluster.api import Cluster
from devcluster.client import CallInfo
from devcluster.events import read_events
from tests._servers import wait_for

Cli = Callable[..., subprocess.CompletedProcess[str]]
DENIED = grpc.StatusCode.PERMISSION_DENIED


def outcomes(cluster: Cluster, n: int) -> Counter[str]:
    """``n`` calls through a balanced channel: served by instance, or failed by code."""
    seen: Counter[str] = Counter()

    def book(info: CallInfo) -> None:
        seen[info.instance if info.ok else info.code] += 1

    with cluster.channel("greeter", on_call=book) as channel:
        stub = GreeterStub(channel)
        for _ in range(n):
            try:
                stub.SayHello(HelloRequest(name="x"), timeout=5)
            except grpc.RpcError as e:
                assert e.code() is DENIED, e
    return seen


def test_a_fault_on_one_instance_fails_only_its_share(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(scale={"greeter": 3})
    with cluster.fault("greeter.2", abort="PERMISSION_DENIED") as fault:
        assert fault.names == ("greeter.2",)
        [info] = [i for i in cluster.ps() if i.name == "greeter.2"]
        assert info.fault == "abort PERMISSION_DENIED 100%"
        seen = outcomes(cluster, 300)
        assert "greeter.2" not in seen, seen  # its calls are exactly the failed ones
        assert seen["PERMISSION_DENIED"] == 100 and seen["greeter.1"] == seen["greeter.3"] == 100
    assert outcomes(cluster, 30) == Counter({"greeter.1": 10, "greeter.2": 10, "greeter.3": 10})

    def faults() -> list[tuple[str | None, object]]:
        return [(e.instance, e.new) for e in read_events(cluster.state_dir) if e.kind == "fault"]

    wait_for(lambda: len(faults()) == 2, 10, "both fault events in the timeline")
    assert faults() == [("greeter.2", "abort PERMISSION_DENIED 100%"), ("greeter.2", "cleared")]


def test_a_delay_on_a_type_slows_its_calls_in_the_aio_client(
        make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(scale={"greeter": 2})
    cluster.fault("greeter", delay="150ms:100")

    async def timed() -> list[float]:
        async with cluster.channel("greeter", aio=True) as channel:
            stub = GreeterStub(channel)
            took = []
            for _ in range(4):
                began = time.monotonic()
                await stub.SayHello(HelloRequest(name="x"), timeout=5)
                took.append(time.monotonic() - began)
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await stub.SayHello(HelloRequest(name="x"), timeout=0.05)
            assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            return took

    assert min(asyncio.run(timed())) >= 0.15
    cluster.clear_fault("greeter")
    assert all(i.fault is None for i in cluster.ps())


def test_the_fault_command(make_cluster: Callable[..., Cluster], run_cli: Cli) -> None:
    make_cluster(scale={"greeter": 2})
    done = run_cli("fault", "greeter.1", "--delay", "200ms:50", "--abort", "UNAVAILABLE:10")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "greeter.1: fault delay 200ms 50%, abort UNAVAILABLE 10%"
    rows = {r["name"]: r for r in json.loads(run_cli("ps", "--json").stdout)}
    assert rows["greeter.1"]["fault"] == "delay 200ms 50%, abort UNAVAILABLE 10%"
    assert rows["greeter.2"]["fault"] is None
    assert "(fault: delay 200ms 50%" in run_cli("ps").stdout
    record = json.loads(run_cli("registry", "--json").stdout)["instances"]["greeter.1"]
    assert record["fault"] == {"delay_s": 0.2, "delay_percent": 50.0, "abort_code": 14,
                               "abort_percent": 10.0}
    cleared = run_cli("fault", "greeter", "--clear", "--json")
    assert [r["fault"] for r in json.loads(cleared.stdout)] == [None, None]


@pytest.mark.parametrize(("args", "said"), [
    (("greeter.1",), "say --delay DURATION[:PERCENT], --abort CODE[:PERCENT] or --clear"),
    (("greeter.1", "--delay", "soon"), "--delay 'soon': give a duration"),
    (("greeter.1", "--delay", "1e9"), "--delay '1e9': give a duration"),
    (("greeter.1", "--abort", "NOPE"), "--abort 'NOPE': give a gRPC status"),
    (("greeter.1", "--abort", "14:150"), "the percent after ':' must be a number in (0, 100]"),
    (("greeter.1", "--abort", "14:١٢"), "the percent after ':' must be a number in (0, 100]"),
    (("greeter.1", "--abort", "14:1_0"), "the percent after ':' must be a number in (0, 100]"),
    (("greeter.1", "--delay", "1_0ms"), "--delay '1_0ms': give a duration"),
    (("greeter.1", "--clear", "--delay", "1s"), "--clear takes no --delay or --abort"),
])
def test_bad_fault_input_exits_2_in_one_line(run_cli: Cli, tmp_path: Path,
                                             args: tuple[str, ...], said: str) -> None:
    (tmp_path / "Procfile").write_text("greeter: python -m devcluster.greeter --port $PORT\n")
    result = run_cli("fault", *args)
    assert result.returncode == 2, result
    assert said in result.stderr and len(result.stderr.strip().splitlines()) == 1
