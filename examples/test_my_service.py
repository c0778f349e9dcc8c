"""An example test file for your own service, using devcluster's pytest fixture.

Point the marker (or the ``devcluster_procfile`` ini option) at your Procfile; each
instance gets ``$PORT`` (free ports with ``port=0``, the default for fixtures) and
``$DEVCLUSTER_INSTANCE``. Run with ``pytest examples/test_my_service.py``.
"""

from __future__ import annotations

import grpc
import pytest

from devcluster._proto.helloworld_pb2 import HelloRequest
from devcluster._proto.helloworld_pb2_grpc import GreeterStub

pytestmark = pytest.mark.devcluster(procfile="examples/Procfile")


def test_every_instance_answers(cluster) -> None:
    assert {i.state for i in cluster.instances} == {"serving"}
    stub = GreeterStub(cluster.channel("server"))
    served = set()
    for i in range(9):
        _reply, call = stub.SayHello.with_call(HelloRequest(name=f"t{i}"), timeout=2)
        served.add(dict(call.initial_metadata())["devcluster-instance"])
    assert served == {"server1", "server2", "server3"}


def test_a_crash_costs_no_call(cluster) -> None:
    stub = GreeterStub(cluster.channel("server"))
    cluster.kill("server2")
    for i in range(20):
        stub.SayHello(HelloRequest(name=f"t{i}"), timeout=2)  # raises if a call failed


def test_a_frozen_instance_is_ejected(cluster) -> None:
    stub = GreeterStub(cluster.channel("server"))
    cluster.pause("server3")
    failures = 0
    for i in range(20):
        try:
            stub.SayHello(HelloRequest(name=f"t{i}"), timeout=0.5)
        except grpc.RpcError:
            failures += 1
    assert failures <= 2
