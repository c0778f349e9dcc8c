"""Membership of the supervisor: changing which instances the cluster has.

:class:`Membership` is a collaborator of :class:`~devcluster.supervisor.runtime.Supervisor`
working on the cluster's :class:`~devcluster.supervisor.crew.Crew` (which adds and removes
one instance): ``scale`` and the rolling ``reload`` entry point (the work is
:mod:`devcluster.supervisor.reload`'s). Both add and remove instances across awaits, so
they hold the crew's membership lock, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from devcluster import defaults
from devcluster.config import procfile
from devcluster.errors import DevclusterError, UnknownInstanceError
from devcluster.events import EventKind
from devcluster.schema import InstanceInfo
from devcluster.supervisor import reload as rolling
from devcluster.supervisor.crew import Crew
from devcluster.supervisor.instance import Instance


class Membership:
    """scale, reload (and SIGHUP's reload)."""

    def __init__(self, crew: Crew) -> None:
        self.crew = crew

    async def scale(self, counts: dict[str, int], *, wait: bool = False,
                    timeout: float = defaults.CONTROL_WAIT, who: str = "") -> list[InstanceInfo]:
        """Set instance counts of process types; the infos of every instance of them."""
        who = who or "a control client"
        self.crew.sink.system(f"scale {counts} (asked by {who})")
        for ptype, n in counts.items():
            self.crew.rt.event(EventKind.ASKED, None, who=who, detail=f"scale {ptype}={n}")
        async with self.crew.membership:
            changed = await self._scale(counts)
        if wait:
            for inst in changed:
                if inst.name in self.crew.instances:
                    await inst.wait_until(lambda i: i.settled, timeout)
        await self.crew.written()
        return await self.crew.infos(i for i in self.crew.instances.values()
                                if i.spec.process_type in counts)


    # -- membership: reload and scale ----------------------------------------------------

    async def reload(self, names: Sequence[str] = (), all_: bool = False, *, who: str = "",
                     progress: rolling.Emit | None = None) -> rolling.ReloadResult:
        """Rolling reload (devcluster.supervisor.reload): apply the files' diff, and replace the
        instances named (or every one) too. Unknown names raise before anything changes.

        The work is a task of the cluster's own: a control client that goes away does
        not leave a reload half done.
        """
        if self.crew.stopping.is_set():
            raise DevclusterError("the cluster is shutting down; nothing to reload")
        targets = {i.name for i in self.crew.select(names, all_)} if names or all_ else set()
        what = "--all" if all_ else " ".join(names) or "changes only"
        self.crew.sink.system(f"reload {what} (asked by {who or 'a control client'})")

        def emit(event: rolling.Progress) -> None:
            self.crew.sink.system(event.text)
            if progress is not None:
                progress(event)

        async def work() -> rolling.ReloadResult:
            async with self.crew.membership:
                result = await rolling.run(self.crew, targets, emit)
            await self.crew.written()
            return result

        return await asyncio.shield(self.crew.spawn(work()))

    async def hangup(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.reload(who="SIGHUP")

    async def _scale(self, counts: dict[str, int]) -> list[Instance]:
        """Set the number of instances of process types; returns those added or removed.

        Shrinking stops the highest-numbered instances gracefully and forgets them;
        growing adds instances with the next names (``greeter.4``) and ports.
        """
        for ptype in counts:
            if ptype not in self.crew.types:
                raise UnknownInstanceError(ptype, self.crew.type_order)
        plan = [self._scale_plan(ptype, wanted) for ptype, wanted in counts.items()]
        changed: list[Instance] = []
        for extra, specs in plan:  # every spec is valid (ports...) before anything changes
            await asyncio.gather(*(i.stop(drain=True) for i in extra))
            for inst in extra:
                self.crew.instances.pop(inst.name)
                self.crew.records.deregister(inst.name)
                self.crew.rt.event(EventKind.REMOVED, inst.name)
                changed.append(inst)
            for spec in specs:
                inst = self.crew.add(spec)
                self.crew.records.register(inst.record())
                self.crew.rt.event(EventKind.ADDED, inst.name, detail=inst.address)
                inst.start()
                changed.append(inst)
        return changed

    def _scale_plan(self, ptype: str,
                    wanted: int) -> tuple[list[Instance], list[procfile.InstanceSpec]]:
        """(instances to remove, specs to add) to have ``wanted`` instances of ``ptype``."""
        mine = sorted((i for i in self.crew.instances.values() if i.spec.process_type == ptype),
                      key=lambda i: _number(i.name))
        index = self.crew.type_order.index(ptype)
        first = max((_number(i.name) for i in mine[:wanted]), default=0) + 1
        specs = [procfile.instance_spec(self.crew.types[ptype], f"{ptype}.{n}", index, n,
                                        self.crew.settings.base_port, self.crew.env)
                 for n in range(first, first + wanted - len(mine))]
        return mine[wanted:], specs




def _number(name: str) -> int:
    _, _, n = name.rpartition(".")
    return int(n) if n.isdigit() else 1
