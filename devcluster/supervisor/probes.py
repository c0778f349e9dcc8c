"""Readiness probes: how devcluster tells that an instance is ready, one interface for all.

Each probe makes one bounded attempt with ``await probe.check(timeout)`` and returns
a :class:`ProbeResult`: ready or not, and a one-line reason (how it knows, or why
not). :func:`wait_ready` repeats attempts until one succeeds, the instance dies or
the deadline passes, and reports the last reason: the same timeout semantics and
failure report for every kind.

- :class:`GrpcProbe` -- ``grpc.health.v1`` Check for a named service ("" for the server);
- :class:`HttpProbe` -- GET ``http://127.0.0.1:$PORT/path``, any 2xx;
- :class:`TcpProbe` -- a TCP connect;
- :class:`ExecProbe` -- a shell command that exits 0, run with the instance's environment;
- :class:`LogProbe` -- a line of the instance's output matching a regex (fed with ``feed``);
- :class:`DefaultProbe` -- today's default: gRPC health, TCP for servers without it.

>>> probe = probe_for(Ready("http", "/healthz"), "127.0.0.1:8080")     # doctest: +SKIP
>>> await wait_ready(probe, timeout=30)                                  # doctest: +SKIP
ProbeResult(ok=True, reason='HTTP 200 on /healthz')
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from devcluster.config.project import Ready
from devcluster.supervisor import health


@dataclass(frozen=True)
class ProbeResult:
    """One probe's verdict: ``ok``, and how it knows (or why not) in one line."""

    ok: bool
    reason: str


class Probe(Protocol):
    """One readiness check of an instance; ``check`` never takes longer than ``timeout``."""

    async def check(self, timeout: float) -> ProbeResult: ...


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _os_reason(e: Exception) -> str:
    """``connection refused`` rather than asyncio's ``Connect call failed (...)``."""
    errno = getattr(e, "errno", None)
    return os.strerror(errno).lower() if errno else str(e)


class GrpcProbe:
    """SERVING from ``grpc.health.v1.Health/Check`` for ``service`` ("" = the whole server)."""

    def __init__(self, address: str, service: str = "") -> None:
        self.address = address
        self.service = service

    def __repr__(self) -> str:
        return f"<GrpcProbe {self.address} service={self.service!r}>"

    async def check(self, timeout: float) -> ProbeResult:
        import grpc.aio  # at the first probe: see devcluster.supervisor.health.check
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        what = f"health of {self.service!r}" if self.service else "server health"
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=self.service),
                                         timeout=timeout, wait_for_ready=True)
            except grpc.aio.AioRpcError as e:
                return ProbeResult(False, f"{what}: {e.code().name}: {e.details()}")
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return ProbeResult(reply.status == health_pb2.HealthCheckResponse.SERVING,
                           f"{what}: {status}")


class DefaultProbe:
    """What ``up`` does with no ``ready`` setting: gRPC health of the server, or TCP when
    the server does not implement it (:func:`devcluster.supervisor.health.check`)."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def check(self, timeout: float) -> ProbeResult:
        ok, how = await health.check(self.address, timeout=timeout)
        return ProbeResult(ok, how)


class TcpProbe:
    """The port accepts a TCP connection."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def check(self, timeout: float) -> ProbeResult:
        host, port = _host_port(self.address)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except TimeoutError:
            return ProbeResult(False, f"TCP connect to {self.address}: timed out")
        except OSError as e:
            return ProbeResult(False, f"TCP connect to {self.address}: {_os_reason(e)}")
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return ProbeResult(True, f"TCP connect to {self.address}")


class HttpProbe:
    """``GET path`` on the instance's port answers 2xx (HTTP/1.1 over asyncio streams)."""

    def __init__(self, address: str, path: str = "/") -> None:
        self.address = address
        self.path = path

    async def check(self, timeout: float) -> ProbeResult:
        try:
            status = await asyncio.wait_for(self._get(), timeout)
        except TimeoutError:
            return ProbeResult(False, f"GET {self.path}: no answer within {timeout:g}s")
        except (OSError, ValueError, asyncio.IncompleteReadError) as e:
            return ProbeResult(False, f"GET {self.path}: {_os_reason(e)}")
        return ProbeResult(200 <= int(status.split()[0]) < 300, f"GET {self.path}: HTTP {status}")

    async def _get(self) -> str:
        host, port = _host_port(self.address)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {self.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                         "User-Agent: devcluster-probe\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            line = (await reader.readuntil(b"\r\n")).decode("latin-1").strip()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        match = re.fullmatch(r"HTTP/\d(?:\.\d)? (\d{3})\b ?(.*)", line)
        if not match:
            raise ValueError(f"not an HTTP answer: {line[:60]!r}")
        return f"{match.group(1)} {match.group(2)}".strip()


class ExecProbe:
    """``sh -c command`` exits 0, run with ``env`` (the instance's environment) in ``cwd``.

    A command still running at the timeout is killed with its process group.
    """

    def __init__(self, command: str, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None) -> None:
        self.command = command
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd

    async def check(self, timeout: float) -> ProbeResult:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", self.command, env=self.env, cwd=self.cwd,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return ProbeResult(False, f"`{self.command}` still running after {timeout:g}s")
        finally:
            if proc.returncode is None:  # cancelled: leave nothing behind
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        last = output.decode(errors="replace").strip().splitlines()[-1:] or [""]
        if proc.returncode == 0:
            return ProbeResult(True, f"`{self.command}` exited 0")
        code = proc.returncode or 0
        how = f"killed by signal {-code}" if code < 0 else f"exited {code}"
        return ProbeResult(False, f"`{self.command}` {how}" + (f": {last[0]}" if last[0] else ""))


class LogProbe:
    """A line of the instance's output matches ``pattern`` (``re.search``).

    The supervisor calls :meth:`feed` with each line the instance prints; ``check``
    waits on that (an event, no polling). Once a line matched, it stays ready.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = re.compile(pattern)
        self.matched: str | None = None
        self._event = asyncio.Event()

    def feed(self, line: str) -> bool:
        """Look at one line of output; True if it is the first to match."""
        if self.matched is None and self.pattern.search(line):
            self.matched = line.rstrip("\r\n")
            self._event.set()
            return True
        return False

    async def check(self, timeout: float) -> ProbeResult:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        if self.matched is not None:
            return ProbeResult(True, f"log line {self.matched!r}")
        return ProbeResult(False, f"no output line matched /{self.pattern.pattern}/")


def probe_for(ready: Ready | None, address: str, env: Mapping[str, str] | None = None,
              cwd: str | os.PathLike[str] | None = None) -> Probe:
    """The probe a ``ready = {...}`` setting asks for (None: :class:`DefaultProbe`)."""
    if ready is None:
        return DefaultProbe(address)
    if ready.kind == "grpc":
        return GrpcProbe(address, ready.arg)
    if ready.kind == "http":
        return HttpProbe(address, ready.arg)
    if ready.kind == "tcp":
        return TcpProbe(address)
    if ready.kind == "exec":
        return ExecProbe(ready.arg, env, cwd)
    if ready.kind == "log":
        return LogProbe(ready.arg)
    raise ValueError(f"unknown probe kind {ready.kind!r}")


async def wait_ready(probe: Probe, timeout: float, alive: Callable[[], bool] = lambda: True,
                     attempt_timeout: float = 1.0) -> ProbeResult:
    """Check until ready, ``alive()`` turns False, or ``timeout`` seconds pass.

    Each attempt gets at most ``attempt_timeout`` (and never past the deadline);
    between failed attempts the interval grows from 20 ms to 200 ms. Polls because a
    server has no event for "I am ready now" that works for every kind.
    The failure's reason is the last attempt's, prefixed with what ended the wait.
    """
    deadline = time.monotonic() + timeout
    interval = 0.02
    last = ProbeResult(False, "not checked yet")
    while True:
        if not alive():
            return ProbeResult(False, f"the process exited; last check: {last.reason}")
        left = deadline - time.monotonic()
        if left <= 0:
            return ProbeResult(False, f"not ready after {timeout:g}s: {last.reason}")
        last = await probe.check(max(0.01, min(attempt_timeout, left)))
        if last.ok:
            return last
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 2, 0.2)
