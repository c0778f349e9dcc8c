"""One cluster for a whole test run, shared by every pytest-xdist worker.

``scope="session"`` (or ``devcluster_scope = session`` in the ini file) keeps the
cluster for the session. Under ``pytest -n 4`` the first worker to need it starts it,
the others attach to it, and the last one to finish stops it: one cluster for the
run, not one per worker. Without xdist it is simply a session-scoped cluster.

    pytest -n 2 examples/test_shared_cluster.py

Tests sharing a cluster must not depend on each other's changes: keep ``kill`` and
``pause`` for function-scoped clusters (the default), and let shared ones serve.
"""

from __future__ import annotations

import os

import pytest

from devcluster._proto.helloworld_pb2 import HelloRequest
from devcluster._proto.helloworld_pb2_grpc import GreeterStub
from devcluster.client import served_by

pytestmark = pytest.mark.devcluster(procfile="examples/Procfile", scope="session")


@pytest.mark.parametrize("user", ["ada", "grace", "linus", "barbara", "ken", "margaret"])
def test_each_user_is_greeted(cluster, user: str) -> None:
    stub = GreeterStub(cluster.channel("server"))
    reply = stub.SayHello(HelloRequest(name=user), timeout=2)
    assert user in reply.message


def test_calls_are_spread_over_every_instance(cluster) -> None:
    stub = GreeterStub(cluster.channel("server"))
    served = set()
    for i in range(6):
        _reply, call = stub.SayHello.with_call(HelloRequest(name=f"t{i}"), timeout=2)
        served.add(served_by(call))
    assert served == {"server1", "server2", "server3"}


def test_every_worker_sees_the_same_cluster(cluster) -> None:
    # Under xdist the state dir is the run's, not this worker's; alone, it is ours.
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    assert cluster.shared == (worker is not None)
    assert {i.state for i in cluster.instances} == {"serving"}
