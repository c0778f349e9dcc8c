"""devcluster.handoff with real sockets and real greeter processes (issue 19)."""

from __future__ import annotations

import collections
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from devcluster import handoff
from tests.conftest import say_hello, wait_until

pytestmark = pytest.mark.timeout(60)

SHARING = {**os.environ, "DEVCLUSTER_REUSEPORT": "1", "PYTHONUNBUFFERED": "1"}


@contextmanager
def greeter(name: str, port: int = 0, env: dict[str, str] = SHARING) -> Iterator[int]:
    """A greeter process on ``port`` (0: any); yields the port it listens on."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "devcluster.greeter", "--port", str(port), "--name", name],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the greeter says where it listens once it serves
            if " listening on " in line:
                yield int(line.rpartition(":")[2])
                break
        else:
            pytest.fail(f"greeter {name} exited with {proc.wait()} before listening")
    finally:
        proc.terminate()
        proc.wait(10)


def served_by(port: int, calls: int = 20) -> collections.Counter[str]:
    """Which greeter answers each of ``calls`` fresh connections to ``port``."""
    return collections.Counter(say_hello(f"127.0.0.1:{port}")[1] or "" for _ in range(calls))


def test_the_replacement_takes_every_new_connection() -> None:
    with greeter("old") as port, greeter("new", port) as same:
        assert same == port
        assert served_by(port) == {"new": 20}  # without take_over: about half each


def test_without_devcluster_asking_a_port_in_use_is_an_error() -> None:
    plain = {k: v for k, v in SHARING.items() if k != "DEVCLUSTER_REUSEPORT"}
    with greeter("first", env=plain) as port:
        proc = subprocess.run(
            [sys.executable, "-m", "devcluster.greeter", "--port", str(port)],
            env=plain, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 1 and "is the port in use?" in proc.stderr
        assert not handoff.take_over(port)


def test_options_share_the_port_and_age_connections_only_when_asked() -> None:
    options = dict(handoff.server_options({"DEVCLUSTER_REUSEPORT": "1"}))
    assert options["grpc.so_reuseport"] == 1 and options["grpc.max_connection_age_ms"] > 0
    assert handoff.server_options({}) == [("grpc.so_reuseport", 0)]


def test_a_connection_is_busy_while_data_arrives_and_quiet_after() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            with accepted:
                client.sendall(b"call")
                # The accepted side is ours; a wide window: this machine may be busy.
                assert handoff.busy_connections(port, quiet_ms=60_000) == 1
                wait_until(lambda: handoff.busy_connections(port) == 0, 5,
                           "the connection to be quiet for QUIET_MS")

                def calling() -> bool:
                    client.sendall(b"again")
                    return handoff.busy_connections(port) == 1

                wait_until(calling, 5, "busy again")



#: The greeter, saying when it takes its port over and each health status it sets.
TRACED = """\
import sys
from grpc_health.v1 import health, health_pb2
from devcluster import handoff
from devcluster.greeter.server import main
take_over, set_status = handoff.take_over, health.aio.HealthServicer.set
def traced_take_over(port):
    print("take_over", flush=True)
    return take_over(port)
async def traced_set(self, service, status):
    print(f"set {service!r} {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}",
          flush=True)
    await set_status(self, service, status)
handoff.take_over, health.aio.HealthServicer.set = traced_take_over, traced_set
sys.exit(main())
"""


def test_a_greeter_says_serving_only_once_it_has_taken_over_its_port() -> None:
    """During a reload the supervisor switches the registry and stops the old process
    as soon as the replacement's health says SERVING; a connection the kernel still gave
    the old listener then would be reset. So SERVING comes after take_over, and grpc's
    default SERVING for "" is replaced before the server starts."""
    proc = subprocess.Popen([sys.executable, "-c", TRACED, "--port", "0"], env=SHARING,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            if " listening on " in line:
                break
            lines.append(line.strip())
        assert lines == ["set '' NOT_SERVING", "take_over", "set '' SERVING",
                         "set 'helloworld.Greeter' SERVING"], lines
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"),
                                          (socket.AF_INET6, "::1")], ids=["v4", "v6"])
def test_netlink_finds_the_listeners_proc_net_tcp_lists(family: int, host: str) -> None:
    """sock_diag (cheap at any cluster size) and /proc/net/tcp (the fallback) agree."""
    with socket.create_server((host, 0), family=family, reuse_port=True) as a:
        port = a.getsockname()[1]
        assert set(handoff._listening(port)) == set(handoff._sockets(port, "0A")) != set()
        assert not handoff._others_listening(port)
        with socket.create_server((host, port), family=family, reuse_port=True):
            assert len(handoff._listening(port)) == 2  # a replacement joined the port
            # Both are ours here; a replacement's would be another process's.
            assert handoff._own_fds(handoff._listening(port)) != []


def test_a_process_finds_its_own_connections_on_a_port_and_not_its_listener() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert handoff._connections(port) == []
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = server.accept()
            with accepted:
                assert handoff._connections(port) == [accepted.fileno()]
