"""Servers for the client tests: real greeter processes and in-process grpc servers.

``Greeters`` runs real greeter processes registered in a real FileRegistry;
``local_servers`` runs grpc servers inside the test process (fast, for the
channel's unit tests) and ``MemoryRegistry`` is the registry fake for those.

>>> with Greeters(tmp_path) as cluster:                     # doctest: +SKIP
...     cluster.start_many("server1", "server2", "server3")
...     cluster.kill("server2", state="killed")

Each greeter is ``python -m devcluster.greeter`` in its own session, started on port
0 (the kernel picks a free port, no race with other tests) and found through its
listening socket; it counts as started once a health Check answers. Leaving the
context kills every greeter it started, also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from devcluster._proto import helloworld_pb2, helloworld_pb2_grpc
from devcluster.registry.file import FileRegistry
from devcluster.registry.memory import MemoryRegistry  # noqa: F401 - re-exported for tests
from devcluster.registry.record import Record, State
from devcluster.server import InstanceHeaderInterceptor

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Greeter:
    """One running greeter process."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    started_at: float

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid


def wait_for(condition: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.005) -> Any:
    """Poll ``condition`` until it is truthy; fail naming ``what`` after ``timeout``.

    Polls because the things tests wait for (a call landing somewhere, a process
    listening) have no event to wait on from outside.
    """
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _listening_port(pid: int) -> int | None:
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN:
            return int(conn.laddr.port)
    return None


def health_ok(address: str, timeout: float = 5.0) -> bool:
    """True once a health Check to ``address`` answers SERVING within ``timeout``."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout, wait_for_ready=True)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


class Greeters:
    """Start, register, kill, freeze and restart real greeters; clean up on exit."""

    def __init__(self, tmp_path: Path, service: str = "server") -> None:
        self.state_dir = tmp_path / ".devcluster"
        self.registry = FileRegistry(self.state_dir)
        self.service = service
        self.procs: dict[str, Greeter] = {}
        self._all: list[subprocess.Popen[bytes]] = []
        self._logs = tmp_path / "logs"
        self._logs.mkdir(exist_ok=True)

    def __enter__(self) -> Greeters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _launch(self, name: str, port: int) -> subprocess.Popen[bytes]:
        log = open(self._logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(
            [sys.executable, "-m", "devcluster.greeter", "--port", str(port), "--name", name,
             "--grace", "0.5"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        log.close()
        self._all.append(proc)
        return proc

    def _ready(self, name: str, proc: subprocess.Popen[bytes], port: int) -> Greeter:
        def listening() -> int | bool:
            return port or _listening_port(proc.pid) or proc.poll() is not None

        try:
            bound = wait_for(listening, 10, f"{name} to listen")
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}: see its log in "
                                     f"{self._logs}")
            greeter = Greeter(name, int(bound), proc, psutil.Process(proc.pid).create_time())
            wait_for(lambda: proc.poll() is not None or health_ok(greeter.address), 10,
                     f"{name} to answer health checks")
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        self.procs[name] = greeter
        return greeter

    def spawn(self, name: str, port: int = 0) -> Greeter:
        """Start a greeter and wait until it answers a health Check (not registered)."""
        return self._ready(name, self._launch(name, port), port)

    def record(self, greeter: Greeter, **fields: Any) -> Record:
        """The registry record of ``greeter`` as serving, with ``fields`` applied."""
        base = Record(greeter.name, self.service, greeter.address, weight=1, enabled=True,
                      state=State.SERVING, pid=greeter.pid, started_at=greeter.started_at)
        return base.with_(**fields) if fields else base

    def start(self, name: str, port: int = 0, **fields: Any) -> Greeter:
        """Start ``name`` and register it serving."""
        greeter = self.spawn(name, port)
        self.registry.register(self.record(greeter, **fields))
        return greeter

    def start_many(self, *names: str) -> list[Greeter]:
        """Start several greeters (in parallel start-up) and register them in one write."""
        procs = [(name, self._launch(name, 0)) for name in names]
        greeters = [self._ready(name, proc, 0) for name, proc in procs]
        current = {r.name: r for r in self.registry.snapshot().records.values()}
        current.update({g.name: self.record(g) for g in greeters})
        self.registry.reset(current.values())
        return greeters

    def kill(self, name: str, state: str | None = None) -> Greeter:
        """SIGKILL ``name`` and reap it; write ``state`` to the registry if given."""
        greeter = self.procs[name]
        greeter.proc.kill()
        greeter.proc.wait()
        if state is not None:
            self.registry.update(name, state=state)
        return greeter

    def freeze(self, name: str) -> None:
        """SIGSTOP ``name``: it keeps its socket (connections open) and never answers."""
        os.kill(self.procs[name].pid, signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        """SIGCONT ``name``."""
        os.kill(self.procs[name].pid, signal.SIGCONT)

    def restart(self, name: str) -> Greeter:
        """A new process for ``name`` on its old port, registered serving."""
        old = self.procs[name]
        if old.proc.poll() is None:
            self.kill(name)
        return self.start(name, old.port)

    def close(self) -> None:
        """Kill every greeter ever started here (SIGCONT first: a frozen one cannot die)."""
        for proc in self._all:
            if proc.poll() is None:
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        break
            proc.wait()


def leftover_children() -> list[psutil.Process]:
    """Live (non-zombie) child processes of this test process."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


def greeters_fixture(tmp_path: Path) -> Iterator[Greeters]:
    """Body of a ``greeters`` fixture: yields Greeters, checks nothing is left after."""
    with Greeters(tmp_path) as cluster:
        yield cluster
    left = leftover_children()
    assert not left, f"processes left behind: {left}"


#: Metadata key that makes an in-process greeter fail the call with this status,
#: after it sent its initial metadata (the call reached the application).
ABORT_HEADER = "test-abort"


class _Greeter(helloworld_pb2_grpc.GreeterServicer):
    def __init__(self, name: str) -> None:
        self.name = name
        self.delay = 0.0
        self.calls = 0

    def SayHello(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.calls += 1
        for key, value in context.invocation_metadata():
            if key == ABORT_HEADER:
                context.abort(grpc.StatusCode[value], f"{self.name} aborts as asked")
        if self.delay:
            time.sleep(self.delay)
        return helloworld_pb2.HelloReply(message=f"Hello {request.name} from {self.name}")


def _echo_handlers() -> grpc.GenericRpcHandler:
    """``/test.Echo/{Split,Join,Each}``: unary-stream, stream-unary, stream-stream of bytes."""

    def split(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from (bytes([b]) for b in request)

    def join(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return b"".join(requests)

    def each(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from (r.upper() for r in requests)

    return grpc.method_handlers_generic_handler("test.Echo", {
        "Split": grpc.unary_stream_rpc_method_handler(split),
        "Join": grpc.stream_unary_rpc_method_handler(join),
        "Each": grpc.stream_stream_rpc_method_handler(each),
    })


@dataclass
class LocalServer:
    """A grpc server in this process: Greeter, health, echo, instance header."""

    name: str
    server: grpc.Server
    port: int
    greeter: _Greeter
    health: health.HealthServicer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def record(self, service: str = "server", **fields: Any) -> Record:
        """A serving record for this server (pid = this process, a unique started_at)."""
        base = Record(self.name, service, self.address, state=State.SERVING, pid=os.getpid(),
                      started_at=float(self.port))
        return base.with_(**fields) if fields else base


@contextlib.contextmanager
def local_servers(*names: str) -> Iterator[dict[str, LocalServer]]:
    """In-process servers on free ports, stopped on exit."""
    servers: dict[str, LocalServer] = {}
    try:
        for name in names:
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                                 interceptors=[InstanceHeaderInterceptor(name)])
            greeter = _Greeter(name)
            helloworld_pb2_grpc.add_GreeterServicer_to_server(greeter, server)
            health_servicer = health.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            server.add_generic_rpc_handlers((_echo_handlers(),))
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            servers[name] = LocalServer(name, server, port, greeter, health_servicer)
        yield servers
    finally:
        for s in servers.values():
            s.server.stop(None)


def dead_address() -> str:
    """An address where nothing listens (a port the kernel just handed out and freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"
