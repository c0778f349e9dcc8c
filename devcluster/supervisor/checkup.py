"""Continuous health checks: a serving instance is asked again every ``health_period``.

A control plane learns of a hung server only by asking it: a SIGSTOPped process keeps
its port (the kernel still accepts connections) and the supervisor sees nothing. So,
as Kubernetes readiness probes, Consul and Nacos do, every serving (or paused) instance
gets its readiness probe again every ``health_period`` seconds of its type. After
``health_failures`` misses in a row it is ``unhealthy`` in the registry: the balanced
clients and xDS clients (UNHEALTHY) route no calls to it, and ``ps``, ``top``, the
console and ``events`` show it. One passed check brings it back. With ``liveness = true``
an instance that misses as many checks again is restarted.

:class:`Tally` is the rule (sans-IO, tested with plain values); :class:`Checkups` is the
supervisor's duty that runs the probes. The default probe (no ``ready`` in
devcluster.toml) keeps one gRPC channel per process and sends a health ``Check`` on it;
a server found ready by a TCP connect gets a TCP connect; a ``ready`` probe of the type
(grpc, http, tcp, exec) runs as it is; a ``log`` probe cannot be asked again, so those
types are not checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devcluster import defaults
from devcluster.registry.record import State
from devcluster.supervisor import health, probes
from devcluster.supervisor.instance import Instance

#: The longest the duty sleeps between looks for new instances and due checks.
TICK = 0.5


def next_beat(now: float, period: float) -> float:
    """The next multiple of ``period`` after ``now``: every instance with the same period
    is checked in the same round, so the loop wakes once a period, not once a check (the
    wake-ups, not the checks, were most of the cost: 2.8 % CPU at N=30 with one due time
    per instance, measured with 0.1 s looks).

    >>> next_beat(10.3, 1.0), next_beat(10.0, 0.5)
    (11.0, 10.5)
    """
    return (int(now / period) + 1) * period


class Verdict(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    RESTART = "restart"


@dataclass
class Tally:
    """Checks in a row of one process: what a check's outcome changes, if anything.

    >>> t = Tally(failures=2)
    >>> [t.observe(ok) for ok in (False, False, False, True)]
    [None, <Verdict.UNHEALTHY: 'unhealthy'>, None, <Verdict.HEALTHY: 'healthy'>]
    """

    failures: int = defaults.HEALTH_FAILURES
    liveness: bool = False
    misses: int = 0

    def observe(self, ok: bool) -> Verdict | None:
        if ok:
            was_unhealthy, self.misses = self.misses >= self.failures, 0
            return Verdict.HEALTHY if was_unhealthy else None
        self.misses += 1
        if self.misses == self.failures:
            return Verdict.UNHEALTHY
        if self.liveness and self.misses == 2 * self.failures:
            return Verdict.RESTART
        return None


@dataclass
class _Watch:
    """One process under checks: its tally, when the next check is due, its channel."""

    key: tuple[str, int | None]
    tally: Tally
    due: float
    task: asyncio.Task[None] | None = None
    channel: Any = None


class Checkups:
    """The supervisor's duty: check every serving instance every ``health_period``.

    ``instances``: the cluster's instances now; ``restart``: restart one (liveness).
    """

    def __init__(self, instances: Callable[[], Iterable[Instance]],
                 restart: Callable[[Instance], Awaitable[object]], cwd: Path) -> None:
        self._instances = instances
        self._restart = restart
        self._cwd = cwd
        self._watches: dict[str, _Watch] = {}
        self._closing: set[asyncio.Future[Any]] = set()

    async def run(self) -> None:
        try:
            while True:
                now = time.monotonic()
                self._round(now)
                due = min((w.due for w in self._watches.values() if w.task is None),
                          default=now + TICK)
                await asyncio.sleep(min(TICK, max(0.0, due - time.monotonic())))
        finally:
            for watch in self._watches.values():
                await _close(watch)

    def _round(self, now: float) -> None:
        seen = set()
        for inst in self._instances():
            conf = inst.conf
            if conf is None or conf.health_period <= 0 or not _checkable(inst):
                continue
            seen.add(inst.name)
            key = (inst.name, inst.pid)
            watch = self._watches.get(inst.name)
            if watch is None or watch.key != key:
                if watch is not None:
                    self._forget(watch)
                # The first check one period after it is seen serving: readiness just passed.
                watch = self._watches[inst.name] = _Watch(
                    key, Tally(conf.health_failures, conf.liveness),
                    next_beat(now, conf.health_period))
            if watch.task is None and now >= watch.due:
                watch.task = asyncio.ensure_future(self._check(inst, watch, conf.health_period))
        for name in [n for n in self._watches if n not in seen]:
            self._forget(self._watches.pop(name))

    def _forget(self, watch: _Watch) -> None:
        if watch.task is not None:
            watch.task.cancel()
        if watch.channel is not None:
            self._keep(asyncio.ensure_future(_close(watch)))

    def _keep(self, task: asyncio.Future[Any]) -> None:
        """Hold a reference until ``task`` ends (the loop keeps only weak ones)."""
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _check(self, inst: Instance, watch: _Watch, period: float) -> None:
        try:
            ok, why = await self._probe(inst, watch, min(defaults.HEALTH_TIMEOUT, period))
            if (inst.name, inst.pid) != watch.key or not _checkable(inst):
                return  # it changed while we asked: the next round starts afresh
            verdict = watch.tally.observe(ok)
            if verdict is Verdict.UNHEALTHY:
                inst.set_health(False, f"{watch.tally.misses} health checks missed: {why}")
            elif verdict is Verdict.HEALTHY:
                inst.set_health(True, why)
            elif verdict is Verdict.RESTART:
                inst.rt.sink.system(f"{inst.name} stayed unhealthy: restarting it (liveness)")
                # A task of its own: the stop ends this check's watch, which cancels it.
                self._keep(asyncio.ensure_future(self._restart(inst)))
        finally:
            watch.due = next_beat(time.monotonic(), period)
            watch.task = None

    async def _probe(self, inst: Instance, watch: _Watch, timeout: float) -> tuple[bool, str]:
        ready = inst.conf.ready if inst.conf is not None else None
        if ready is not None:
            result = await probes.probe_for(ready, inst.address, inst.life.env,
                                            self._cwd).check(timeout)
            return result.ok, result.reason
        if inst.ready_how == health.VIA_TCP:
            return await health.tcp(inst.address, timeout), health.VIA_TCP
        return await _grpc_check(watch, inst.address, timeout)


def _checkable(inst: Instance) -> bool:
    """Serving (or paused while serving: the checks find a pause like any hang), with an
    address, and a probe that can be asked again."""
    serving = inst.state in (State.SERVING, State.PAUSED) and inst.advertised in (
        State.SERVING, State.UNHEALTHY)
    ready = inst.conf.ready if inst.conf is not None else None
    return serving and inst.running and bool(inst.address) and (
        ready is None or ready.kind != "log")


async def _grpc_check(watch: _Watch, address: str, timeout: float) -> tuple[bool, str]:
    """A health Check on the process's own channel (kept: a new connection a second per
    instance would cost the supervisor and the server more than the check itself)."""
    import grpc.aio

    if watch.channel is None:
        watch.channel = grpc.aio.insecure_channel(address)
    return await health.check_on(watch.channel, address, timeout)


async def _close(watch: _Watch) -> None:
    channel, watch.channel = watch.channel, None
    if channel is not None:
        with contextlib.suppress(Exception):
            await channel.close()
