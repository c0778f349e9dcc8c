"""Past one machine: two supervisors registering into one real etcd (issue 9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from devcluster._proto.helloworld_pb2 import HelloRequest
from devcluster._proto.helloworld_pb2_grpc import GreeterStub
from devcluster.api import Cluster
from devcluster.client import BalancedChannel, CallInfo
from devcluster.registry import open_registry
from devcluster.statedir import layout
from tests._etcd import require_etcd, running_etcd

GREETER = "python -m devcluster.greeter --port $PORT"


def _procfile(directory: Path, names: list[str]) -> Path:
    directory.mkdir(parents=True)
    path = directory / "Procfile"
    path.write_text("".join(f"{n}: {GREETER}\n" for n in names))
    return path


def test_two_supervisors_one_view_and_lease_expiry(tmp_path: Path, wait_until: Any) -> None:
    require_etcd()
    with running_etcd(tmp_path / "etcd") as etcd:
        url = etcd.url("/dc-two") + "?ttl=2"
        a = Cluster(_procfile(tmp_path / "a", ["server1", "server2"]), port=0, grace=1,
                    registry=url)
        b = Cluster(_procfile(tmp_path / "b", ["server3", "server4"]), port=0, grace=1,
                    registry=url)
        with a, b:
            # `ps --registry` and the client see the instances of both supervisors.
            result = subprocess.run(
                [sys.executable, "-m", "devcluster", "ps", "--json", "--registry", url],
                cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            rows = {r["name"]: r for r in json.loads(result.stdout)}
            assert sorted(rows) == ["server1", "server2", "server3", "server4"]
            assert {r["state"] for r in rows.values()} == {"serving"}

            # weight writes go to etcd too (a transaction), from any directory.
            result = subprocess.run(
                [sys.executable, "-m", "devcluster", "weight", "server3", "4", "--registry",
                 url], cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            calls: list[CallInfo] = []
            registry = open_registry(url)
            assert registry.snapshot().records["server3"].weight == 4
            with BalancedChannel("server", registry, on_call=calls.append,
                                 retry_on={grpc.StatusCode.UNAVAILABLE}) as channel:
                stub = GreeterStub(channel)
                for i in range(40):
                    stub.SayHello(HelloRequest(name=f"x{i}"), timeout=2)
                assert set(Counter(c.instance for c in calls)) == {
                    "server1", "server2", "server3", "server4"}

                # Machine A vanishes: its supervisor is SIGKILLed.
                pid = int(layout(tmp_path / "a" / ".devcluster").lock.read_text())
                os.kill(pid, signal.SIGKILL)
                killed_at = time.monotonic()
                mark = len(calls)

                def a_gone_from_registry() -> bool:
                    stub.SayHello(HelloRequest(name="during"), timeout=2)  # raises on failure
                    return not {"server1", "server2"} & set(registry.snapshot().records)

                wait_until(a_gone_from_registry, timeout=2 + 5, what="A's lease to expire")
                assert time.monotonic() - killed_at < 2 + 3  # within the TTL (+ keep-alive slack)
                after = [c for c in calls[mark:]]
                assert all(c.ok for c in after)  # no failed call while A went away
                tail = len(calls)
                for i in range(12):
                    stub.SayHello(HelloRequest(name=f"y{i}"), timeout=2)
                assert {c.instance for c in calls[tail:]} == {"server3", "server4"}
            registry.close()
