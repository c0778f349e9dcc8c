"""The pytest plugin, tested the way a user meets it: a pytest session of its own.

Every inner session runs under pytest-xdist (``-n 2``), as big suites do. The
xdist-specific behaviour (one cluster for the run, crashes, Ctrl-C, the leak
guard) is in ``test_plugin_xdist.py``; the failure report's timeline in
``test_plugin_timeline.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

PROCFILE = """\
server1: python -m devcluster.greeter --port $PORT
server2: python -m devcluster.greeter --port $PORT
"""

USER_TESTS = '''
import grpc, pytest
from devcluster._proto.helloworld_pb2 import HelloRequest
from devcluster._proto.helloworld_pb2_grpc import GreeterStub


def test_serving(cluster):
    assert {i.state for i in cluster.instances} == {"serving"}
    stub = GreeterStub(cluster.channel("server"))
    served = set()
    for i in range(6):
        _, call = stub.SayHello.with_call(HelloRequest(name="t"), timeout=2)
        served.add(dict(call.initial_metadata())["devcluster-instance"])
    assert served == {"server1", "server2"}


@pytest.mark.devcluster(scale={"server1": 2})
def test_marker_scales(cluster):
    assert sorted(i.name for i in cluster.instances) == ["server1.1", "server1.2", "server2"]


def test_factory(devcluster):
    a = devcluster("Procfile")
    b = devcluster("Procfile")
    assert a.state_dir != b.state_dir
    ports = {i.address for c in (a, b) for i in c.instances}
    assert len(ports) == 4  # free ports: two clusters of the same Procfile never collide


def test_fails_with_logs(cluster):
    GreeterStub(cluster.channel("server")).SayHello(HelloRequest(name="marker-call"), timeout=2)
    assert False, "this failure must carry the instances' logs"
'''

#: Options of every inner run: two xdist workers, no cache, a base temp in the test's dir.
def xdist_args(pytester: pytest.Pytester, *more: str) -> list[str]:
    return ["-n", "2", "-p", "no:cacheprovider", "-q", f"--basetemp={pytester.path / 'base'}",
            *more]


def no_leftovers(processes_under: Callable[[Path], list[psutil.Process]], root: Path,
                 timeout: float = 5.0) -> list[str]:
    """Processes still running under ``root`` after ``timeout`` (killed, then returned)."""
    deadline = time.monotonic() + timeout
    left = processes_under(root)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)  # processes vanish on their own; nothing to block on from here
        left = processes_under(root)
    described = []
    for p in left:
        try:
            described.append(f"{p.pid} {' '.join(p.cmdline())}")
            p.kill()
        except psutil.Error:
            pass
    return described


def test_plugin_session_pass_and_fail_leave_nothing(
        pytester: pytest.Pytester,
        processes_under: Callable[[Path], list[psutil.Process]]) -> None:
    pytester.makefile("", Procfile=PROCFILE)
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess(*xdist_args(pytester))
    result.assert_outcomes(passed=3, failed=1)
    # The failing test's report carries what the cluster did and the instances' logs.
    result.stdout.fnmatch_lines([
        "*devcluster: *Procfile*",
        "timeline (seconds from the start of the test):",
        "*server1 starting -> serving*",
        "calls per instance (through cluster.channel()):",
        "*server* 1 ok * 0 failed",
        "*Received: marker-call*",
    ])
    assert not no_leftovers(processes_under, pytester.path), "the plugin left processes behind"


def test_plugin_interrupted_session_leaves_nothing(
        pytester: pytest.Pytester,
        processes_under: Callable[[Path], list[psutil.Process]]) -> None:
    """A KeyboardInterrupt inside a test still tears the cluster down."""
    pytester.makefile("", Procfile=PROCFILE)
    pytester.makepyfile(test_user='''
def test_interrupted(cluster):
    assert cluster.instances
    raise KeyboardInterrupt
''')
    result = pytester.runpytest_subprocess(*xdist_args(pytester))
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert not no_leftovers(processes_under, pytester.path)


TIMELINE_TESTS = '''
import asyncio
import grpc
import pytest
from devcluster._proto.helloworld_pb2 import HelloRequest
from devcluster._proto.helloworld_pb2_grpc import GreeterStub


def test_kill_breaks_it(cluster):
    stub = GreeterStub(cluster.channel("server"))
    for i in range(4):
        stub.SayHello(HelloRequest(name=f"before{i}"), timeout=2)
    cluster.kill("server2")
    served = set()
    for i in range(4):
        _, call = stub.SayHello.with_call(HelloRequest(name=f"after{i}"), timeout=2)
        served.add(dict(call.initial_metadata())["devcluster-instance"])
    assert served == {"server1", "server2"}, "server2 stopped answering"


def test_events_can_be_asserted_on(cluster):
    cluster.weight("server1", 3)
    cluster.kill("server2", signal="SIGTERM")
    cluster.wait_for(lambda s: s.records["server2"].state == "killed")
    said = [e.describe() for e in cluster.events()]
    me = "(asked by test_user.py::test_events_can_be_asserted_on)"
    assert "server1 weight 1 -> 3" in said
    assert f"server2 kill SIGTERM {me}" in said  # the supervisor knows the test's name
    assert f"server2 serving -> killed {me}" in said
    assert f"server2 exited (exit 0) {me}" in said  # the greeter stops gracefully on SIGTERM


@pytest.mark.devcluster(scope="module")
def test_a_hung_instance_is_ejected_by_the_channel(cluster):
    stub = GreeterStub(cluster.channel("server", eject_after=1))
    for i in range(4):  # connected to both: a frozen server2 then times out
        stub.SayHello(HelloRequest(name="t"), timeout=2)
    cluster.pause("server2")
    failed = 0
    for i in range(6):
        try:
            stub.SayHello(HelloRequest(name="t"), timeout=0.3)
        except grpc.RpcError as e:
            failed += 1
            assert e.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert failed == 1  # one call timed out on server2, which was ejected then
    ejected = [e for e in cluster.events() if e.kind == "ejected"]
    assert [(e.instance, e.detail) for e in ejected] == [
        ("server2", "hung (1 calls in a row timed out)")]
    assert cluster.calls()["server2"] == {"ok": 2, "failed": 1}


def test_an_asyncio_channel_with_the_client_options(cluster):
    async def calls():
        async with cluster.channel("server", aio=True, policy="round_robin",
                                   retry_on=[grpc.StatusCode.UNAVAILABLE]) as channel:
            stub = GreeterStub(channel)
            return [await stub.SayHello(HelloRequest(name="a"), timeout=2) for _ in range(4)]

    assert len(asyncio.run(calls())) == 4
    assert cluster.calls() == {"server1": {"ok": 2, "failed": 0},
                               "server2": {"ok": 2, "failed": 0}}
'''


def test_failure_report_tells_the_timeline_of_the_cluster(
        pytester: pytest.Pytester,
        processes_under: Callable[[Path], list[psutil.Process]]) -> None:
    """The report of a failing test names the kill that caused the failure, then what
    followed; ``cluster.events()`` gives tests the same timeline."""
    pytester.makefile("", Procfile=PROCFILE)
    pytester.makepyfile(test_user=TIMELINE_TESTS)
    result = pytester.runpytest_subprocess(*xdist_args(pytester))
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([
        "*_ test_kill_breaks_it _*",
        "*devcluster: *Procfile*",
        "timeline (seconds from the start of the test):",
        "*+*server1 starting -> serving",
        "*+*server2 kill SIGKILL (asked by test_user.py::test_kill_breaks_it)",
        "*+*server2 exited (signal SIGKILL) (asked by test_user.py::test_kill_breaks_it)",
        "*+*server2 serving -> killed (asked by test_user.py::test_kill_breaks_it)",
        "calls per instance (through cluster.channel()):",
        "*server1 * ok * 0 failed",
        "last log lines:",
        "*short test summary info*",
    ])
    assert not no_leftovers(processes_under, pytester.path)
