"""A server with two listening ports is registered on its gRPC one (issue 26 item 12).

The server opens an HTTP side listener (metrics, admin) before its gRPC port, and
ignores ``$PORT``: the first scan of its ports sees only the side one. Registered
there, every balanced call to it failed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc

SIDE_PORT_SERVER = Path(__file__).resolve().parents[1] / "services" / "side_port_server.py"

pytestmark = pytest.mark.timeout(60)


def _said_port(cluster: Any, what: str) -> int:
    lines = "\n".join(cluster.logs("side", n=50))
    found = re.search(rf"{what} listening on (\d+)", lines)
    assert found, f"the server did not say its {what} port:\n{lines}"
    return int(found.group(1))


def test_the_grpc_port_is_registered_not_the_side_listener_opened_first(
        make_cluster: Callable[..., Any]) -> None:
    cluster = make_cluster([f"side: python {SIDE_PORT_SERVER} --grpc-after 0.5"])
    grpc_port, side_port = _said_port(cluster, "grpc"), _said_port(cluster, "side")
    assert grpc_port != side_port
    info = cluster.instance("side")
    assert info.state == "serving", info
    assert info.address == f"127.0.0.1:{grpc_port}", \
        f"registered on {info.address}; the side listener is {side_port}, gRPC {grpc_port}"
    with cluster.channel("side") as channel:
        reply = helloworld_pb2_grpc.GreeterStub(channel).SayHello(
            helloworld_pb2.HelloRequest(name="side"), timeout=5)
    assert reply.message.startswith("Hello side"), reply.message
