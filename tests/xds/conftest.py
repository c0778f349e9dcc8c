"""Fixtures of the xDS tests: greeters registered as ``greeter``, the ADS server, clients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster.xds.bootstrap import write_bootstrap
from devcluster.xds.server import Running, serve_in_thread
from tests._servers import ROOT, Greeters, leftover_children

CLIENT = Path(__file__).with_name("_xds_client.py")


@pytest.fixture
def greeters(tmp_path: Path) -> Iterator[Greeters]:
    with Greeters(tmp_path, service="greeter") as cluster:
        yield cluster
    left = leftover_children()
    assert not left, f"processes left behind: {left}"


@pytest.fixture
def xds(greeters: Greeters) -> Iterator[Running]:
    with serve_in_thread(greeters.registry) as running:
        yield running


@pytest.fixture
def bootstrap(xds: Running, tmp_path: Path) -> Path:
    return write_bootstrap(tmp_path / "bootstrap.json", xds.port)


class Client:
    """A grpcio client subprocess of ``xds:///greeter`` (tests/xds/_xds_client.py)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"client exited with {self.proc.poll()}"
        out: dict[str, Any] = json.loads(line)
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def make_client(bootstrap: Path, tmp_path: Path) -> Iterator[Callable[[], Client]]:
    clients: list[Client] = []

    def make(target: str = "xds:///greeter") -> Client:
        env = {**os.environ, "GRPC_XDS_BOOTSTRAP": str(bootstrap), "PYTHONPATH": str(ROOT)}
        log = open(tmp_path / f"client{len(clients)}.log", "w")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen([sys.executable, str(CLIENT), target], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, env=env)
        log.close()
        client = Client(proc)
        clients.append(client)
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline() or '{"ready": false}')
        assert ready["ready"], f"client not ready: see {tmp_path}/client*.log"
        return client

    yield make
    for client in clients:
        client.close()
