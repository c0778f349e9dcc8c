"""The pytest plugin, tested the way a user meets it: a pytest session of its own."""

from __future__ import annotations

import os
import time
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


def _leftovers(root: Path) -> list[psutil.Process]:
    root_s = str(root.resolve())
    found = []
    for proc in psutil.process_iter(["pid", "cwd", "cmdline", "status"]):
        if proc.info["pid"] == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if (proc.info["cwd"] or "").startswith(root_s) or any(
                root_s in a for a in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def _no_leftovers(root: Path, timeout: float = 5.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    left = _leftovers(root)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)  # processes vanish on their own; nothing to block on from here
        left = _leftovers(root)
    for p in left:
        p.kill()
    return left


def test_plugin_session_pass_and_fail_leave_nothing(pytester: pytest.Pytester) -> None:
    pytester.makefile("", Procfile=PROCFILE)
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q",
                                           f"--basetemp={pytester.path / 'base'}")
    result.assert_outcomes(passed=3, failed=1)
    # The failing test's report carries the logs of the instances it used.
    result.stdout.fnmatch_lines(["*devcluster logs*", "*Received: marker-call*"])
    assert not _no_leftovers(pytester.path), "the plugin left processes behind"


def test_plugin_ini_options_and_session_scope(pytester: pytest.Pytester) -> None:
    pytester.makefile("", Procfile=PROCFILE)
    pytester.makeini("[pytest]\ndevcluster_scope = session\ndevcluster_scale = server2=2\n")
    pytester.makepyfile(test_user='''
seen = []

def test_one(cluster):
    seen.append(cluster.state_dir)
    assert sorted(i.name for i in cluster.instances) == ["server1", "server2.1", "server2.2"]

def test_two(cluster):
    seen.append(cluster.state_dir)
    assert seen[0] == seen[-1]  # one cluster for the whole session
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q",
                                           f"--basetemp={pytester.path / 'base'}")
    result.assert_outcomes(passed=2)
    assert not _no_leftovers(pytester.path)


def test_plugin_interrupted_session_leaves_nothing(pytester: pytest.Pytester) -> None:
    """A KeyboardInterrupt inside a test still tears the cluster down."""
    pytester.makefile("", Procfile=PROCFILE)
    pytester.makepyfile(test_user='''
def test_interrupted(cluster):
    assert cluster.instances
    raise KeyboardInterrupt
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q",
                                           f"--basetemp={pytester.path / 'base'}")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert not _no_leftovers(pytester.path)
