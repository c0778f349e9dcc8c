"""The control verbs of the supervisor: act on instances, stop the cluster.

:class:`Verbs` is a collaborator of :class:`~devcluster.supervisor.runtime.Supervisor`: it
works on the cluster's :class:`~devcluster.supervisor.crew.Crew` and is given the one thing
of the supervisor's own it needs (starting the shutdown). The control plane calls these
through the supervisor and its ``Supervised`` protocol; nothing here knows of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from devcluster import defaults
from devcluster.config.signals import parse_signal
from devcluster.errors import DevclusterError
from devcluster.events import EventKind
from devcluster.schema import InstanceInfo
from devcluster.supervisor.crew import Crew
from devcluster.supervisor.instance import Instance

_DONE = {"kill": "killed", "stop": "stopped", "start": "started", "restart": "restarted",
         "pause": "paused", "resume": "resumed"}


class Verbs:
    """act (kill/stop/start/restart/pause/resume) and down."""

    def __init__(self, crew: Crew, shutdown: Callable[[float | None, str], None],
                 done: asyncio.Event) -> None:
        self.crew = crew
        self._shutdown = shutdown
        """Starts the graceful shutdown of the whole cluster (grace, who asked)."""
        self._done = done
        """Set once every instance stopped."""

    # -- verbs (the control plane calls these) ------------------------------------------

    async def act(self, verb: str, names: Sequence[str], all_: bool = False, *,
                  signal_name: str = "", wait: bool = False,
                  timeout: float = defaults.CONTROL_WAIT,
                  who: str = "") -> tuple[list[InstanceInfo], list[str]]:
        """kill/stop/start/restart/pause/resume instances; (their infos, unchanged names)."""
        do, wanted = self._verb(verb, signal_name)
        chosen = self.crew.select(names, all_)
        targets = "--all" if all_ else " ".join(names)
        sig = parse_signal(signal_name or "SIGKILL").name if verb == "kill" else ""
        label = f"kill ({sig})" if sig else verb
        who = who or "a control client"
        self.crew.sink.system(f"{label} {targets} (asked by {who})")
        unchanged: list[str] = []

        async def one(inst: Instance) -> None:
            self.crew.rt.event(EventKind.ASKED, inst.name, who=who, detail=f"{verb} {sig}".rstrip())
            inst.asker = who  # the state changes and exits it causes name the asker
            try:
                result = do(inst)
                changed = await result if asyncio.iscoroutine(result) else result
                if not changed:
                    unchanged.append(inst.name)
                elif wanted is not None and wait:
                    await inst.wait_until(wanted, timeout)
            finally:
                inst.asker = None

        await asyncio.gather(*(one(i) for i in chosen))
        await self.crew.written()
        failed = {i.name: self.crew.records.failures[i.name] for i in chosen
                  if i.name in self.crew.records.failures}
        if failed:  # the action happened; the registry does not say so
            name, why = next(iter(failed.items()))
            others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise DevclusterError(f"{_DONE.get(verb, verb)} {name}{others}, but could not "
                                  f"record it in the registry: {why}")
        return await self.crew.infos(chosen), unchanged

    def _verb(self, verb: str, signal_name: str) -> tuple[
            Callable[[Instance], Awaitable[bool] | bool], Callable[[Instance], bool] | None]:
        """(what ``verb`` does to one instance, what to wait for with ``wait``)."""
        settled: Callable[[Instance], bool] = lambda i: i.settled  # noqa: E731

        async def restart(inst: Instance) -> bool:
            await inst.stop(drain=True)
            return inst.start(by_command=True)

        if verb == "kill":
            sig = parse_signal(signal_name or "SIGKILL")
            return (lambda i: i.kill(sig)), None
        verbs: dict[str, tuple[Callable[[Instance], Awaitable[bool] | bool],
                               Callable[[Instance], bool] | None]] = {
            "stop": (lambda i: i.stop(drain=True), None),
            "start": (lambda i: i.start(by_command=True), settled),
            "restart": (restart, settled),
            "pause": (lambda i: i.pause(), None),
            "resume": (lambda i: i.resume(), None),
        }
        if verb not in verbs:
            raise DevclusterError(f"unknown action {verb!r}")
        return verbs[verb]

    async def down(self, grace: float | None = None, who: str = "") -> list[InstanceInfo]:
        """Stop the whole cluster; returns once every instance is stopped."""
        self._shutdown(grace, who or "control client")
        await self._done.wait()
        return await self.crew.infos()

