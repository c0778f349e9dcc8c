"""Readiness of one instance's process: when does it serve, and on which port.

:func:`wait_ready` is a collaborator of :class:`~devcluster.supervisor.instance.Instance`,
which hands it a :class:`ReadyCheck` (plain values: no instance) and applies the
:class:`ReadyOutcome` itself (the instance stays the one object that changes its state).
It finds the port the process listens on (``$PORT`` or another, through psutil), then
asks the default check (gRPC health, TCP for servers without it) or the type's
``ready`` probe from ``devcluster.toml`` (grpc, http, tcp, exec, log), within the
ready timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from devcluster import defaults
from devcluster.config.project import Ready
from devcluster.supervisor import health, probes, process


@dataclass(frozen=True)
class ReadyCheck:
    """What deciding that one run serves needs."""

    ready: Ready | None
    """The type's ``ready`` probe; None: gRPC health, TCP for servers without it."""
    timeout: float
    port: int
    """The port it was given (0: none)."""
    expect_wanted: bool
    """It binds the port it was given (``$PORT`` in its command, not shared)."""
    address: str
    """Its address so far ("" before a port is known): where a log or exec probe says
    it is."""
    env: Mapping[str, str]
    """What an exec probe runs with."""
    cwd: Path
    news: asyncio.Event
    """Set by each output line: wakes a poll between naps."""
    log_probe: probes.LogProbe | None = None
    """The log probe its output is fed to (``ready = {log = ...}``)."""


@dataclass(frozen=True)
class ReadyOutcome:
    """Whether it serves, the port it listens on (None: not found), and how or why not."""

    ok: bool
    port: int | None
    reason: str


async def wait_ready(check: ReadyCheck, proc: process.Child) -> ReadyOutcome:
    """Find the port, then probe, until ready, the process exits or the timeout."""
    deadline = time.monotonic() + check.timeout

    def alive() -> bool:
        return proc.returncode is None

    async def nap(seconds: float) -> None:
        await _nap(check.news, seconds)

    ready = check.ready
    if ready is not None and ready.kind in ("log", "exec"):
        # Neither needs a port: probe first, then register whatever port it has.
        result = await probes.wait_ready(_probe(check, ready, check.address), check.timeout,
                                         alive)
        ports = process.listening_ports(proc.pid) if result.ok and alive() else []
        port: int | None = await health.pick_port(ports, check.port) if ports else None
        return ReadyOutcome(result.ok, port, result.reason)
    # A server said to speak HTTP or plain TCP has no gRPC port to wait for.
    grpc = ready is None or ready.kind == "grpc"
    port = await health.find_port(proc.pid, check.port, alive, deadline,
                                  expect_wanted=check.expect_wanted, nap=nap,
                                  grpc_wait=defaults.GRPC_PORT_WAIT if grpc else 0.0)
    if port is None:
        return ReadyOutcome(False, None, "nothing listening on any port")
    address = f"127.0.0.1:{port}"
    if ready is None:  # the default: gRPC health, TCP for servers without it
        how = await health.wait_ready(address, alive, deadline, nap=nap)
        return ReadyOutcome(how is not None, port, how or f"nothing answering on {address}")
    result = await probes.wait_ready(_probe(check, ready, address),
                                     max(0.01, deadline - time.monotonic()), alive)
    return ReadyOutcome(result.ok, port, result.reason)


async def _nap(news: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if the process prints a line meanwhile (servers
    often say when they listen: probing then saves up to a poll interval)."""
    if not news.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(news.wait(), seconds)
    if news.is_set():  # a chatty server: at most one look per burst of lines
        news.clear()
        await asyncio.sleep(0.002)


def _probe(check: ReadyCheck, ready: Ready, address: str) -> probes.Probe:
    if ready.kind == "log" and check.log_probe is not None:
        return check.log_probe
    return probes.probe_for(ready, address or "127.0.0.1:0", check.env, check.cwd)
