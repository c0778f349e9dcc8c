"""Readiness probes against real servers: a grpc server whose named health service turns
SERVING after a delay, a real http.server, real commands and log lines."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc.aio
import psutil
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from devcluster.config.project import Ready
from devcluster.supervisor.probes import (
    DefaultProbe,
    ExecProbe,
    GrpcProbe,
    HttpProbe,
    LogProbe,
    ProbeResult,
    TcpProbe,
    probe_for,
    wait_ready,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def free_port() -> int:
    """A port nobody listens on (bound and closed: good enough for 'refused')."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def grpc_server(with_health: bool = True) -> tuple[grpc.aio.Server, str,
                                                         health.aio.HealthServicer]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    if with_health:
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}", servicer


def test_grpc_named_service_turns_serving_after_a_delay() -> None:
    async def scenario() -> tuple[ProbeResult, float, ProbeResult, ProbeResult, ProbeResult]:
        server, address, servicer = await grpc_server()
        try:
            await servicer.set("echo.Echo", NOT_SERVING)
            await servicer.set("", SERVING)
            began = time.monotonic()
            flip = asyncio.get_running_loop().call_later(
                0.4, lambda: asyncio.ensure_future(servicer.set("echo.Echo", SERVING)))
            not_yet = await GrpcProbe(address, "echo.Echo").check(1.0)
            ready = await wait_ready(GrpcProbe(address, "echo.Echo"), timeout=10)
            elapsed = time.monotonic() - began
            flip.cancel()
            unknown = await wait_ready(GrpcProbe(address, "other.Svc"), timeout=0.3)
            whole = await GrpcProbe(address, "").check(1.0)
            return not_yet, elapsed, ready, unknown, whole
        finally:
            await server.stop(None)

    not_yet, elapsed, ready, unknown, whole = asyncio.run(scenario())
    assert not_yet == ProbeResult(False, "health of 'echo.Echo': NOT_SERVING")
    assert ready == ProbeResult(True, "health of 'echo.Echo': SERVING")
    assert 0.4 <= elapsed < 3
    assert not unknown.ok and unknown.reason.startswith("not ready after 0.3s: health of "
                                                        "'other.Svc': NOT_FOUND")
    assert whole == ProbeResult(True, "server health: SERVING")


def test_grpc_probe_of_a_server_without_health_fails_but_the_default_falls_back_to_tcp() -> None:
    async def scenario() -> tuple[ProbeResult, ProbeResult, ProbeResult]:
        server, address, _ = await grpc_server(with_health=False)
        try:
            named = await GrpcProbe(address, "").check(1.0)
            default = await DefaultProbe(address).check(1.0)
        finally:
            await server.stop(None)
        nobody = await GrpcProbe(f"127.0.0.1:{free_port()}").check(0.2)
        return named, default, nobody

    named, default, nobody = asyncio.run(scenario())
    assert not named.ok and "UNIMPLEMENTED" in named.reason
    assert default == ProbeResult(True, "TCP connect")
    assert not nobody.ok and ("UNAVAILABLE" in nobody.reason or "DEADLINE" in nobody.reason)


class _Handler(http.server.BaseHTTPRequestHandler):
    ready = threading.Event()

    def do_GET(self) -> None:
        code = 200 if self.path == "/ok" or (self.path == "/healthz" and self.ready.is_set()) \
            else 503 if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, threading.Event]]:
    ready = threading.Event()
    handler = type("Handler", (_Handler,), {"ready": ready})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", ready
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_http_probe_wants_a_2xx(http_server: tuple[str, threading.Event]) -> None:
    address, ready = http_server

    async def scenario() -> list[ProbeResult]:
        first = await HttpProbe(address, "/healthz").check(1.0)
        asyncio.get_running_loop().call_later(0.3, ready.set)
        became = await wait_ready(HttpProbe(address, "/healthz"), timeout=10)
        return [first, became, await HttpProbe(address, "/ok").check(1.0),
                await HttpProbe(address, "/missing").check(1.0),
                await HttpProbe(f"127.0.0.1:{free_port()}", "/").check(1.0)]

    first, became, ok, missing, refused = asyncio.run(scenario())
    assert first == ProbeResult(False, "GET /healthz: HTTP 503 Service Unavailable")
    assert became == ProbeResult(True, "GET /healthz: HTTP 200 OK")
    assert ok.ok and not missing.ok and "HTTP 404" in missing.reason
    assert not refused.ok and "refused" in refused.reason.lower()


def test_http_probe_of_a_server_that_does_not_speak_http() -> None:
    async def scenario() -> ProbeResult:
        async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"SSH-2.0-nope\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(babble, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await HttpProbe(f"127.0.0.1:{port}", "/").check(1.0)

    result = asyncio.run(scenario())
    assert not result.ok and "not an HTTP answer" in result.reason


def test_tcp_probe() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        assert asyncio.run(TcpProbe(address).check(1.0)) == ProbeResult(
            True, f"TCP connect to {address}")
    closed = f"127.0.0.1:{free_port()}"
    result = asyncio.run(wait_ready(TcpProbe(closed), timeout=0.2))
    assert not result.ok and result.reason.startswith(f"not ready after 0.2s: TCP connect to "
                                                      f"{closed}:")


def test_exec_probe_runs_with_the_given_environment(tmp_path: Path) -> None:
    marker = tmp_path / "loaded"
    probe = ExecProbe('test -f "$MARKER" || { echo "no $MARKER yet"; exit 3; }',
                      env={"MARKER": str(marker), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)

    async def scenario() -> tuple[ProbeResult, ProbeResult]:
        first = await probe.check(2.0)
        asyncio.get_running_loop().call_later(0.3, marker.touch)
        return first, await wait_ready(probe, timeout=10)

    first, became = asyncio.run(scenario())
    assert first == ProbeResult(False, f"`{probe.command}` exited 3: no {marker} yet")
    assert became == ProbeResult(True, f"`{probe.command}` exited 0")


def test_exec_probe_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    script = tmp_path / "sleeper.sh"
    script.write_text("sleep 30\n")
    tag = str(script)
    probe = ExecProbe(f"sh {tag} & sh {tag}; true", cwd=tmp_path)
    began = time.monotonic()
    result = asyncio.run(probe.check(0.3))
    assert result == ProbeResult(False, f"`{probe.command}` still running after 0.3s")
    assert time.monotonic() - began < 3

    def sleepers() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["cmdline"]) if tag in (p.info["cmdline"] or [])]

    deadline = time.monotonic() + 3
    while sleepers() and time.monotonic() < deadline:
        time.sleep(0.02)  # SIGKILL is delivered at once; reaping by init may lag a moment
    assert not sleepers()


def test_log_probe_matches_a_line_fed_to_it() -> None:
    probe = LogProbe(r"listening on \S+:\d+")

    async def scenario() -> tuple[ProbeResult, ProbeResult, float]:
        first = await probe.check(0.05)
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, probe.feed, "starting up\n")
        loop.call_later(0.2, probe.feed, "echo.1 listening on 127.0.0.1:5000\n")
        began = time.monotonic()
        became = await wait_ready(probe, timeout=10)
        return first, became, time.monotonic() - began

    first, became, took = asyncio.run(scenario())
    assert first == ProbeResult(False, r"no output line matched /listening on \S+:\d+/")
    assert became == ProbeResult(True, "log line 'echo.1 listening on 127.0.0.1:5000'")
    assert 0.2 <= took < 2
    assert not probe.feed("listening on x:1")  # already matched: the first line stays


def test_wait_ready_stops_when_the_process_dies() -> None:
    result = asyncio.run(wait_ready(LogProbe("never"), timeout=10, alive=lambda: False))
    assert result == ProbeResult(False, "the process exited; last check: not checked yet")


@pytest.mark.parametrize(("ready", "kind"), [
    (None, DefaultProbe), (Ready("grpc", "x.Y"), GrpcProbe), (Ready("http", "/"), HttpProbe),
    (Ready("tcp", ""), TcpProbe), (Ready("exec", "true"), ExecProbe), (Ready("log", "x"), LogProbe),
])
def test_probe_for_each_setting(ready: Ready | None, kind: type) -> None:
    assert isinstance(probe_for(ready, "127.0.0.1:1", env={}), kind)
