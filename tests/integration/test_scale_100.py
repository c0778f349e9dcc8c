"""100 instances on two cores: up -d, ps, the client over all of them, down, nothing left.

Marked slow (it starts 100 interpreters); it runs in CI all the same. Its speed and
memory figures live in bench/, not here."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from devcluster._proto.helloworld_pb2 import HelloRequest
from devcluster._proto.helloworld_pb2_grpc import GreeterStub
from devcluster.client import BalancedChannel, served_by

N = 100
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_a_hundred_instances(tmp_path: Path, run_cli: Callable[..., subprocess.CompletedProcess[str]],
                             processes_under: Callable[[Path], list[psutil.Process]]) -> None:
    (tmp_path / "Procfile").write_text("greeter: python -m devcluster.greeter --port $PORT\n")
    try:
        up = run_cli("up", "-d", "-p", "0", "-c", f"greeter={N}", "--json", timeout=300)
        assert up.returncode == 0, up.stderr[-2000:]
        rows: list[dict[str, Any]] = json.loads(run_cli("ps", "--json").stdout)
        assert len(rows) == N and {r["state"] for r in rows} == {"serving"}
        assert len({r["address"] for r in rows}) == N
        with BalancedChannel("greeter", tmp_path / ".devcluster") as channel:
            stub = GreeterStub(channel)
            served: Counter[str] = Counter()
            for i in range(3 * N):
                _reply, call = stub.SayHello.with_call(HelloRequest(name=f"c{i}"), timeout=5)
                served[served_by(call) or "?"] += 1
        assert set(served.values()) == {3}, served  # smooth WRR: every instance 3 times
        assert len(served) == N
    finally:
        down = run_cli("down", "--grace", "2", timeout=120)
    assert down.returncode == 0, down.stderr
    assert processes_under(tmp_path) == []
