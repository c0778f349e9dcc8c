"""Membership of the supervisor: which instances the cluster has, and changing that.

:class:`Membership` is a part of :class:`~devcluster.supervisor.runtime.Supervisor` (a mixin:
the methods run on the supervisor itself): building instances, ``scale``, the rolling
``reload`` entry point (the work is :mod:`devcluster.supervisor.reload`'s), adding and removing
instances and adopting what the files say now. Scale and reload add and remove
instances across awaits, so they hold the supervisor's membership lock, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from devcluster import defaults
from devcluster.config import procfile
from devcluster.errors import DevclusterError, UnknownInstanceError
from devcluster.events import EventKind
from devcluster.schema import InstanceInfo
from devcluster.supervisor import reload as rolling
from devcluster.supervisor.instance import DRAIN_DELAY, Instance, Policy

if TYPE_CHECKING:
    from devcluster.supervisor.runtime import Supervisor


class Membership:
    """make_instance, scale, reload, add_instance, remove_instance, adopt_config."""

    def make_instance(self: Supervisor, spec: procfile.InstanceSpec) -> Instance:
        """A new instance of ``spec`` with its type's settings, in no table yet."""
        policy = self.settings.restart.get(spec.process_type, Policy.ON_FAILURE)
        self.sink.widen(spec.name)
        return Instance(spec, policy, self.rt, self.settings.types.get(spec.process_type))

    def _add(self: Supervisor, spec: procfile.InstanceSpec) -> Instance:
        inst = self.instances[spec.name] = self.make_instance(spec)
        return inst

    async def scale(self: Supervisor, counts: dict[str, int], *, wait: bool = False,
                    timeout: float = defaults.CONTROL_WAIT, who: str = "") -> list[InstanceInfo]:
        """Set instance counts of process types; the infos of every instance of them."""
        who = who or "a control client"
        self.sink.system(f"scale {counts} (asked by {who})")
        for ptype, n in counts.items():
            self.rt.event(EventKind.ASKED, None, who=who, detail=f"scale {ptype}={n}")
        async with self._membership:
            changed = await self._scale(counts)
        if wait:
            for inst in changed:
                if inst.name in self.instances:
                    await inst.wait_until(lambda i: i.settled, timeout)
        await self._written()
        return await self.infos(i for i in self.instances.values()
                                if i.spec.process_type in counts)


    # -- membership: reload and scale ----------------------------------------------------

    async def reload(self: Supervisor, names: Sequence[str] = (), all_: bool = False, *, who: str = "",
                     progress: rolling.Emit | None = None) -> rolling.ReloadResult:
        """Rolling reload (devcluster.supervisor.reload): apply the files' diff, and replace the
        instances named (or every one) too. Unknown names raise before anything changes.

        The work is a task of the cluster's own: a control client that goes away does
        not leave a reload half done.
        """
        if self.stopping.is_set():
            raise DevclusterError("the cluster is shutting down; nothing to reload")
        targets = {i.name for i in self.select(names, all_)} if names or all_ else set()
        what = "--all" if all_ else " ".join(names) or "changes only"
        self.sink.system(f"reload {what} (asked by {who or 'a control client'})")

        def emit(event: rolling.Progress) -> None:
            self.sink.system(event.text)
            if progress is not None:
                progress(event)

        async def work() -> rolling.ReloadResult:
            async with self._membership:
                result = await rolling.run(self, targets, emit)
            await self._written()
            return result

        return await asyncio.shield(self._spawn(work()))

    def add_instance(self: Supervisor, spec: procfile.InstanceSpec) -> Instance:
        """A new instance in the table and the registry (not started)."""
        inst = self._add(spec)
        self.records.register(inst.record())
        self.rt.event(EventKind.ADDED, inst.name, detail=inst.address)
        return inst

    async def remove_instance(self: Supervisor, name: str) -> None:
        """Stop an instance gracefully and forget it."""
        inst = self.instances[name]
        await inst.stop(drain=DRAIN_DELAY)
        self.instances.pop(name, None)
        self.records.deregister(name)
        self.rt.event(EventKind.REMOVED, name)

    def adopt_config(self: Supervisor, types: Sequence[procfile.ProcessType], env: dict[str, str],
                     tables: Any) -> None:
        """What the files say now (new instances and scaling follow it)."""
        self.types, self.type_order = {t.name: t for t in types}, [t.name for t in types]
        self.env, self.tables = env, tables

    async def _hangup(self: Supervisor) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.reload(who="SIGHUP")

    async def _scale(self: Supervisor, counts: dict[str, int]) -> list[Instance]:
        """Set the number of instances of process types; returns those added or removed.

        Shrinking stops the highest-numbered instances gracefully and forgets them;
        growing adds instances with the next names (``greeter.4``) and ports.
        """
        for ptype in counts:
            if ptype not in self.types:
                raise UnknownInstanceError(ptype, self.type_order)
        plan = [self._scale_plan(ptype, wanted) for ptype, wanted in counts.items()]
        changed: list[Instance] = []
        for extra, specs in plan:  # every spec is valid (ports...) before anything changes
            await asyncio.gather(*(i.stop(drain=DRAIN_DELAY) for i in extra))
            for inst in extra:
                self.instances.pop(inst.name)
                self.records.deregister(inst.name)
                self.rt.event(EventKind.REMOVED, inst.name)
                changed.append(inst)
            for spec in specs:
                inst = self._add(spec)
                self.records.register(inst.record())
                self.rt.event(EventKind.ADDED, inst.name, detail=inst.address)
                inst.start()
                changed.append(inst)
        return changed

    def _scale_plan(self: Supervisor, ptype: str,
                    wanted: int) -> tuple[list[Instance], list[procfile.InstanceSpec]]:
        """(instances to remove, specs to add) to have ``wanted`` instances of ``ptype``."""
        mine = sorted((i for i in self.instances.values() if i.spec.process_type == ptype),
                      key=lambda i: _number(i.name))
        index = self.type_order.index(ptype)
        first = max((_number(i.name) for i in mine[:wanted]), default=0) + 1
        specs = [procfile.instance_spec(self.types[ptype], f"{ptype}.{n}", index, n,
                                        self.settings.base_port, self.env)
                 for n in range(first, first + wanted - len(mine))]
        return mine[wanted:], specs




def _number(name: str) -> int:
    _, _, n = name.rpartition(".")
    return int(n) if n.isdigit() else 1
