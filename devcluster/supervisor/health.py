"""Readiness of an instance: find the port its process tree listens on, then ask it.

An instance is ready when its ``grpc.health.v1`` Check answers SERVING, or, for a
server without the health service (UNIMPLEMENTED, or not speaking gRPC at all),
when its port accepts TCP connections.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from devcluster import defaults
from devcluster.supervisor.process import listening_ports

#: How the readiness probe got its answer (shown in the log).
VIA_HEALTH = "health check"
VIA_TCP = "TCP connect"


#: Waits up to the given seconds, or less when there is news (the instance printed a
#: line: servers often say when they listen). The default only sleeps.
Nap = Callable[[float], Awaitable[None]]


async def find_port(pid: int, wanted: int, alive: Callable[[], bool], deadline: float,
                    expect_wanted: bool = False, nap: Nap = asyncio.sleep,
                    grpc_wait: float = defaults.GRPC_PORT_WAIT) -> int | None:
    """The port ``pid``'s tree listens on (``wanted`` if among them), None on deadline/exit.

    Polls: the kernel has no event for "a process started listening". The interval
    starts at 10 ms (greeters bind within ~100-300 ms of start) and grows to 100 ms (more
    when many instances start at once: see below);
    ``nap`` cuts a wait short when the instance prints a line, as most servers do once
    they listen. When the command uses ``$PORT`` (``expect_wanted``), a TCP connect to
    it is the cheap probe, and the /proc scan (which walks every process to find the
    tree) runs only after a second, then once a second, for servers that listen
    elsewhere after all: at N=30 frequent scans slowed the greeters' start-up on two
    cores. Among the ports found, :func:`pick_port` chooses (waiting up to
    ``grpc_wait`` for a gRPC port to open after a side listener).
    """
    global _finding
    interval = 0.01
    began = time.monotonic()
    # $PORT 0 (the server picks one) has no port to connect to: only the scan finds it.
    cheap = expect_wanted and bool(wanted)
    scan_at = began + 1.0 if cheap else began
    _finding += 1
    try:
        while alive() and time.monotonic() < deadline:
            if cheap and await tcp(f"127.0.0.1:{wanted}", 0.05) and alive():
                return wanted  # the port was free before we spawned (checked): it is ours
            if time.monotonic() >= scan_at:
                ports = listening_ports(pid)
                if ports:
                    return await pick_port(
                        ports, wanted, lambda: listening_ports(pid) if alive() else [],
                        min(grpc_wait, deadline - time.monotonic()), nap)
                if cheap:
                    scan_at = time.monotonic() + 1.0
            await nap(interval)
            # Every instance starting polls: together at most ~_POLLS_PER_S connects a
            # second (at N=100 on two cores, 10 each a second cost the supervisor seconds
            # of CPU while the instances needed it); `nap` still wakes on their output.
            interval = min(interval * 1.5, max(0.1, _finding / _POLLS_PER_S))
        return None
    finally:
        _finding -= 1


#: Port polls a second, all instances of this process together (see find_port).
_POLLS_PER_S = 200
#: How many find_port loops run now (one event loop: no lock needed).
_finding = 0


#: Answers that show a port is not a gRPC server (or not yet one).
_NOT_GRPC = ("UNAVAILABLE", "INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED")


async def pick_port(ports: list[int], wanted: int, rescan: Callable[[], list[int]] | None = None,
                    wait: float = 0.0, nap: Nap = asyncio.sleep) -> int:
    """The address of an instance among the ports its tree listens on (``ports``, not
    empty): the ``$PORT`` it was given, else the one that speaks HTTP/2 as a gRPC server
    does, else the lowest. A server with a side listener (metrics, admin) is then still
    registered on its gRPC port.

    A server may open its side listener first: while no port seen speaks HTTP/2,
    ``rescan`` (the ports listened on now; [] once the process is gone) looks again for
    up to ``wait`` seconds. A gRPC server answers the preface within a millisecond or
    two, so one that listens on a single port is not slowed; a port that answered
    otherwise is not asked again.
    """
    until = time.monotonic() + wait
    interval = 0.02
    said_no: set[int] = set()
    while True:
        if wanted in ports:
            return wanted
        asked = [p for p in ports if p not in said_no]
        answers = await asyncio.gather(*(h2_answer(f"127.0.0.1:{p}") for p in asked))
        said_no.update(p for p, answer in zip(asked, answers, strict=True) if answer is False)
        h2 = [p for p, answer in zip(asked, answers, strict=True) if answer]
        if h2:
            return h2[0] if len(h2) == 1 else await _grpc_among(h2)
        left = until - time.monotonic()
        if rescan is None or left <= 0:
            return ports[0]
        await nap(min(interval, left))
        interval = min(interval * 1.5, 0.2)
        found = rescan()
        if not found:  # gone, or stopped listening: no better answer is coming
            return ports[0]
        ports = found


#: How long a port gets to answer HTTP/2's preface (a gRPC server: a millisecond or two).
_H2_TIMEOUT = 0.5
#: HTTP/2's client connection preface (RFC 9113 3.4): the magic, then an empty SETTINGS.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS = 4


async def h2_answer(address: str, timeout: float = _H2_TIMEOUT) -> bool | None:
    """Does ``address`` answer HTTP/2's connection preface with a SETTINGS frame on
    stream 0, as a (plaintext) gRPC server does? True: it does; False: it said something
    else (an HTTP/1 listener answers 400 or 505): not a gRPC server; None: no answer
    (refused, closed, or silent within ``timeout``)."""
    host, _, port = address.rpartition(":")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)),
                                                timeout)
    except (TimeoutError, OSError):
        return None
    try:
        writer.write(_H2_PREFACE)
        head = await asyncio.wait_for(reader.readexactly(9), timeout)  # a frame's header
    except asyncio.IncompleteReadError as e:
        return False if e.partial else None
    except (TimeoutError, OSError):
        return None
    finally:
        writer.close()
    return head[3] == _SETTINGS and head[5:9] == bytes(4)


async def speaks_h2(port: int, timeout: float = _H2_TIMEOUT) -> bool:
    """Does ``127.0.0.1:port`` answer like a gRPC server (:func:`h2_answer`)?"""
    return await h2_answer(f"127.0.0.1:{port}", timeout) is True


async def _grpc_among(ports: list[int]) -> int:
    """The first of several HTTP/2 ports whose gRPC health answers (even UNIMPLEMENTED)."""
    for port in ports:
        ready, how = await check(f"127.0.0.1:{port}", timeout=0.3)
        if ready or not how.startswith(_NOT_GRPC):
            return port
    return ports[0]


async def check(address: str, timeout: float = 1.0) -> tuple[bool, str]:
    """One readiness probe of ``address``: (ready, how we know or why not)."""
    # grpc is imported at the first probe, not with the supervisor: by then every
    # instance has been spawned (its import is on no one's path to the spawn).
    import grpc.aio

    async with grpc.aio.insecure_channel(address) as channel:
        return await check_on(channel, address, timeout, wait_for_ready=True)


async def check_on(channel: Any, address: str, timeout: float,
                   wait_for_ready: bool = False) -> tuple[bool, str]:
    """:func:`check` on an open ``grpc.aio`` channel to ``address`` (the continuous health
    checks keep one per process): a health ``Check``, TCP for a server without it."""
    import grpc
    import grpc.aio
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout,
                                 wait_for_ready=wait_for_ready)
    except grpc.aio.AioRpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            return await tcp(address, timeout), VIA_TCP
        return False, f"{e.code().name}: {e.details()}"
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return True, VIA_HEALTH
    return False, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def wait_ready(address: str, alive: Callable[[], bool], deadline: float,
                     nap: Nap = asyncio.sleep) -> str | None:
    """Probe until ready; returns how it became ready, or None (deadline, or it died).

    Polls the health Check: a server that is not yet SERVING says so at once, and the
    Watch stream is not implemented by every server. A port that answers HTTP/2's
    preface with something else is ready by TCP at once; after three non-gRPC failures
    with the port open (a server that answers nothing yet), the TCP fallback decides.
    """
    if await h2_answer(address) is False and alive():
        # Not a gRPC server (it answered HTTP/2's preface otherwise): health checks
        # would only time out; the port answers, which is what TCP readiness asks.
        return VIA_TCP
    failures = 0
    interval = 0.02
    while alive() and time.monotonic() < deadline:
        ready, how = await check(address, timeout=min(1.0, max(0.05, deadline - time.monotonic())))
        if ready:
            return how
        # A server that does not speak gRPC never answers the HTTP/2 handshake: with
        # wait_for_ready that is a DEADLINE_EXCEEDED, else UNAVAILABLE or INTERNAL.
        if how.startswith(_NOT_GRPC):
            failures += 1
            if failures >= 3 and await tcp(address):
                return VIA_TCP
        await nap(interval)
        interval = min(interval * 2, 0.2)
    return None


async def tcp(address: str, timeout: float = 1.0) -> bool:
    """The port of ``address`` accepts a TCP connection within ``timeout``."""
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True
