"""The control verbs of the supervisor: look instances up, act on them, describe them.

:class:`Verbs` is a part of :class:`~devcluster.supervisor.runtime.Supervisor` (a mixin: the
methods run on the supervisor itself, which owns every instance). The control plane
calls these through its ``Supervised`` protocol; nothing here knows of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from devcluster import defaults
from devcluster.config import procfile
from devcluster.config.signals import parse_signal
from devcluster.errors import DevclusterError, UnknownInstanceError
from devcluster.events import EventKind
from devcluster.registry import Record
from devcluster.schema import InstanceInfo
from devcluster.supervisor.instance import DRAIN_DELAY, Instance
from devcluster.supervisor.recorder import landed

if TYPE_CHECKING:
    from devcluster.supervisor.runtime import Supervisor

_DONE = {"kill": "killed", "stop": "stopped", "start": "started", "restart": "restarted",
         "pause": "paused", "resume": "resumed"}


class Verbs:
    """select, infos, act (kill/stop/start/restart/pause/resume) and down."""

    # -- lookup ------------------------------------------------------------------------

    def select(self: Supervisor, names: Iterable[str], all_: bool = False) -> list[Instance]:
        """Instances named, or all of a process type, or every one; unknown -> error."""
        if all_:
            return list(self.instances.values())
        chosen: dict[str, Instance] = {}
        for name in names:
            procfile.check_name(name)
            if name in self.instances:
                chosen[name] = self.instances[name]
                continue
            of_type = [i for i in self.instances.values() if i.spec.process_type == name]
            if not of_type:
                raise UnknownInstanceError(name, list(self.instances))
            chosen.update((i.name, i) for i in of_type)
        return list(chosen.values())

    async def infos(self: Supervisor, chosen: Iterable[Instance] | None = None) -> list[InstanceInfo]:
        """Instances in the one schema (every one by default); the registry is read in a
        thread, once, for weight and enabled (None if it cannot be read)."""
        chosen = list(self.instances.values() if chosen is None else chosen)
        # Unreadable (corrupt, deleted): answer from memory, with what we last wrote.
        last = self.records.last
        records: dict[str, Record] = dict(last.records) if last is not None else {}
        with contextlib.suppress(DevclusterError, OSError):
            records = dict((await asyncio.to_thread(self.registry.snapshot)).records)
        now = time.time()
        return [i.info(records.get(i.name), now) for i in chosen]

    async def _written(self: Supervisor) -> None:
        """Wait (bounded) until every registry write queued so far landed, so a control
        client reading the registry right after a reply sees what the reply says."""
        await landed(self.records.flush(), self.settings.grace)

    # -- verbs (the control plane calls these) ------------------------------------------

    async def act(self: Supervisor, verb: str, names: Sequence[str], all_: bool = False, *,
                  signal_name: str = "", wait: bool = False,
                  timeout: float = defaults.CONTROL_WAIT,
                  who: str = "") -> tuple[list[InstanceInfo], list[str]]:
        """kill/stop/start/restart/pause/resume instances; (their infos, unchanged names)."""
        do, wanted = self._verb(verb, signal_name)
        chosen = self.select(names, all_)
        targets = "--all" if all_ else " ".join(names)
        sig = parse_signal(signal_name or "SIGKILL").name if verb == "kill" else ""
        label = f"kill ({sig})" if sig else verb
        who = who or "a control client"
        self.sink.system(f"{label} {targets} (asked by {who})")
        unchanged: list[str] = []

        async def one(inst: Instance) -> None:
            self.rt.event(EventKind.ASKED, inst.name, who=who, detail=f"{verb} {sig}".rstrip())
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
        await self._written()
        failed = {i.name: self.records.failures[i.name] for i in chosen
                  if i.name in self.records.failures}
        if failed:  # the action happened; the registry does not say so
            name, why = next(iter(failed.items()))
            others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise DevclusterError(f"{_DONE.get(verb, verb)} {name}{others}, but could not "
                                  f"record it in the registry: {why}")
        return await self.infos(chosen), unchanged

    def _verb(self: Supervisor, verb: str, signal_name: str) -> tuple[
            Callable[[Instance], Awaitable[bool] | bool], Callable[[Instance], bool] | None]:
        """(what ``verb`` does to one instance, what to wait for with ``wait``)."""
        settled: Callable[[Instance], bool] = lambda i: i.settled  # noqa: E731

        async def restart(inst: Instance) -> bool:
            await inst.stop(drain=DRAIN_DELAY)
            return inst.start(by_command=True)

        if verb == "kill":
            sig = parse_signal(signal_name or "SIGKILL")
            return (lambda i: i.kill(sig)), None
        verbs: dict[str, tuple[Callable[[Instance], Awaitable[bool] | bool],
                               Callable[[Instance], bool] | None]] = {
            "stop": (lambda i: i.stop(drain=DRAIN_DELAY), None),
            "start": (lambda i: i.start(by_command=True), settled),
            "restart": (restart, settled),
            "pause": (lambda i: i.pause(), None),
            "resume": (lambda i: i.resume(), None),
        }
        if verb not in verbs:
            raise DevclusterError(f"unknown action {verb!r}")
        return verbs[verb]

    async def down(self: Supervisor, grace: float | None = None, who: str = "") -> list[InstanceInfo]:
        """Stop the whole cluster; returns once every instance is stopped."""
        self.request_shutdown(grace, who or "control client")
        await self.done.wait()
        return await self.infos()

