"""Fixtures of the xDS tests: greeters registered as ``greeter``, the ADS server, clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devcluster.xds.bootstrap import write_bootstrap
from devcluster.xds.server import Running, serve_in_thread
from tests._servers import Greeters, leftover_children
from tests._xds import XdsClient

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


#: The grpcio client in a subprocess (tests/_xds.py, shared with the integration tests).
Client = XdsClient


@pytest.fixture
def make_client(bootstrap: Path, tmp_path: Path) -> Iterator[Callable[[], Client]]:
    clients: list[Client] = []

    def make(target: str = "xds:///greeter") -> Client:
        client = XdsClient(str(bootstrap), tmp_path / f"client{len(clients)}.log", target)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
