"""Asserting on what happened to the cluster: ``cluster.events()``.

Every cluster from the fixture keeps a timeline: instance starts and exits (with
the exit code or signal), state changes, weight and enable changes, the verbs the
test asked for, and the ejections and failovers seen by channels from
``cluster.channel()``. The same timeline is printed in a failing test's report.

    pytest examples/test_cluster_events.py
"""

from __future__ import annotations

import grpc
import pytest

from devcluster._proto.helloworld_pb2 import HelloRequest
from devcluster._proto.helloworld_pb2_grpc import GreeterStub
from devcluster.events import EventKind

pytestmark = pytest.mark.devcluster(procfile="examples/Procfile")


def test_a_crash_is_in_the_timeline(cluster) -> None:
    cluster.kill("server2")
    cluster.wait_for(lambda snap: snap.records["server2"].state == "killed")
    exits = [e for e in cluster.events() if e.kind is EventKind.EXITED]
    assert [(e.instance, e.signal) for e in exits] == [("server2", "SIGKILL")]


def test_reweighting_is_in_the_timeline(cluster) -> None:
    cluster.weight("server1", 5)
    cluster.disable("server3")
    said = [e.describe() for e in cluster.events()]
    assert "server1 weight 1 -> 5" in said
    assert "server3 enabled True -> False" in said


def test_the_channel_reports_what_it_saw(cluster) -> None:
    stub = GreeterStub(cluster.channel("server", eject_after=1))
    for i in range(3):  # one call to each instance: the channel is connected to all
        stub.SayHello(HelloRequest(name=f"warm{i}"), timeout=2)
    cluster.pause("server3")  # hung, yet still advertised as serving
    timeouts = 0
    for i in range(9):
        try:
            stub.SayHello(HelloRequest(name=f"t{i}"), timeout=0.3)
        except grpc.RpcError:
            timeouts += 1
    assert timeouts == 1  # then the channel ejected server3
    ejected = [e.instance for e in cluster.events() if e.kind is EventKind.EJECTED]
    assert ejected == ["server3"]
    assert cluster.calls()["server3"] == {"ok": 1, "failed": 1}
