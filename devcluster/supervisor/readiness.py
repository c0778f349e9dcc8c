"""Readiness of one instance's process: when does it serve, and on which port.

:class:`Readiness` is a part of :class:`~devcluster.supervisor.instance.Instance` (a mixin: the
methods run on the instance itself, still the one object that changes its state). It
finds the port the process listens on (``$PORT`` or another, through psutil), then
asks the default check (gRPC health, TCP for servers without it) or the type's
``ready`` probe from ``devcluster.toml`` (grpc, http, tcp, exec, log), within the
ready timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from devcluster.config.project import Ready
from devcluster.registry import State
from devcluster.supervisor import health, probes, process

if TYPE_CHECKING:
    from devcluster.supervisor.instance import Instance


class Readiness:
    """_become_ready (port, then probe, then ``serving``) and the probe of a ``ready``."""

    async def _become_ready(self: Instance, proc: process.Child) -> None:
        timeout = self.ready_timeout
        deadline = time.monotonic() + timeout
        began = time.monotonic()

        def alive() -> bool:
            return proc.returncode is None

        ready = self.conf.ready if self.conf is not None else None
        if ready is not None and ready.kind in ("log", "exec"):
            # Neither needs a port: probe first, then register whatever port it has.
            result = await probes.wait_ready(self._probe(ready), timeout, alive)
            ports = process.listening_ports(proc.pid) if result.ok and alive() else []
            port: int | None = await health.pick_port(ports, self.port) if ports else None
        else:
            port = await health.find_port(proc.pid, self.port, alive, deadline,
                                          expect_wanted="PORT" in self.spec.command
                                          and not self.shared_port, nap=self._nap)
            where = f"on 127.0.0.1:{port}" if port else "on any port"
            result = probes.ProbeResult(False, f"nothing listening {where}")
        if port is not None:
            self.port, self.address = port, f"127.0.0.1:{port}"
            if ready is None:  # the default: gRPC health, TCP for servers without it
                how = await health.wait_ready(self.address, alive, deadline, nap=self._nap)
                result = probes.ProbeResult(how is not None, how or "nothing answering "
                                            f"on {self.address}")
            elif ready.kind not in ("log", "exec"):
                result = await probes.wait_ready(
                    self._probe(ready), max(0.01, deadline - time.monotonic()), alive)
        if result.ok and alive() and self.state is State.STARTING:
            self.ready_how = result.reason
            self._apply(self.machine.served(time.monotonic()))
            self.rt.sink.system(f"{self.name} serving on {self.address or 'no port'} "
                                f"({result.reason}, {1000 * (time.monotonic() - began):.0f} ms)")
            return
        if alive() and self.state is State.STARTING:
            self.ready_timed_out = True
            why = result.reason.partition(": ")[2] if result.reason.startswith("not ready after") \
                else result.reason
            self.rt.sink.system(f"{self.name} not ready after {timeout:g}s ({why})")
            self._changed.set()

    async def _nap(self: Instance, seconds: float) -> None:
        """Sleep ``seconds``, or less if the process prints a line meanwhile (servers
        often say when they listen: probing then saves up to a poll interval)."""
        news = self._news
        if not news.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(news.wait(), seconds)
        if news.is_set():  # a chatty server: at most one look per burst of lines
            news.clear()
            await asyncio.sleep(0.002)

    def _probe(self: Instance, ready: Ready) -> probes.Probe:
        if ready.kind == "log" and self._log_probe is not None:
            return self._log_probe
        return probes.probe_for(ready, self.address or "127.0.0.1:0", self._env, self.rt.cwd)

