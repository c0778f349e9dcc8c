"""Readiness of an instance: find the port its process tree listens on, then ask it.

An instance is ready when its ``grpc.health.v1`` Check answers SERVING, or, for a
server without the health service (UNIMPLEMENTED, or not speaking gRPC at all),
when its port accepts TCP connections.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from devcluster.supervisor.process import listening_ports

#: How the readiness probe got its answer (shown in the log).
VIA_HEALTH = "health check"
VIA_TCP = "TCP connect"


#: Waits up to the given seconds, or less when there is news (the instance printed a
#: line: servers often say when they listen). The default only sleeps.
Nap = Callable[[float], Awaitable[None]]


async def find_port(pid: int, wanted: int, alive: Callable[[], bool], deadline: float,
                    expect_wanted: bool = False, nap: Nap = asyncio.sleep) -> int | None:
    """The port ``pid``'s tree listens on (``wanted`` if among them), None on deadline/exit.

    Polls: the kernel has no event for "a process started listening". The interval
    starts at 10 ms (greeters bind within ~100-300 ms of start) and grows to 100 ms (more
    when many instances start at once: see below);
    ``nap`` cuts a wait short when the instance prints a line, as most servers do once
    they listen. When the command uses ``$PORT`` (``expect_wanted``), a TCP connect to
    it is the cheap probe, and the /proc scan (which walks every process to find the
    tree) runs only after a second, then once a second, for servers that listen
    elsewhere after all: at N=30 frequent scans slowed the greeters' start-up on two
    cores.
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
            if cheap and await _tcp(f"127.0.0.1:{wanted}", 0.05) and alive():
                return wanted  # the port was free before we spawned (checked): it is ours
            if time.monotonic() >= scan_at:
                ports = listening_ports(pid)
                if ports:
                    return await pick_port(ports, wanted)
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


async def pick_port(ports: list[int], wanted: int) -> int:
    """The address of an instance among the ports its tree listens on: the ``$PORT`` it
    was given, else the one that speaks gRPC (health answers, even UNIMPLEMENTED),
    else the lowest. A server with a side listener (metrics, admin) is then still
    registered on its gRPC port."""
    if wanted in ports:
        return wanted
    if len(ports) == 1:
        return ports[0]
    for port in ports:
        ready, how = await check(f"127.0.0.1:{port}", timeout=0.3)
        if ready or not how.startswith(_NOT_GRPC):
            return port
    return ports[0]


async def check(address: str, timeout: float = 1.0) -> tuple[bool, str]:
    """One readiness probe of ``address``: (ready, how we know or why not)."""
    # grpc is imported at the first probe, not with the supervisor: by then every
    # instance has been spawned (its import is on no one's path to the spawn).
    import grpc
    import grpc.aio
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout,
                                     wait_for_ready=True)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                return await _tcp(address), VIA_TCP
            return False, f"{e.code().name}: {e.details()}"
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return True, VIA_HEALTH
        return False, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def wait_ready(address: str, alive: Callable[[], bool], deadline: float,
                     nap: Nap = asyncio.sleep) -> str | None:
    """Probe until ready; returns how it became ready, or None (deadline, or it died).

    Polls the health Check: a server that is not yet SERVING says so at once, and the
    Watch stream is not implemented by every server. After three non-gRPC failures
    with the port open, the TCP fallback decides.
    """
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
            if failures >= 3 and await _tcp(address):
                return VIA_TCP
        await nap(interval)
        interval = min(interval * 2, 0.2)
    return None


async def tcp(address: str, timeout: float = 1.0) -> bool:
    """The port of ``address`` accepts a TCP connection within ``timeout``."""
    return await _tcp(address, timeout)


async def _tcp(address: str, timeout: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True
