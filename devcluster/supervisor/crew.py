"""The instances of one running cluster and what they share (the supervisor's state).

A :class:`Crew` is what the supervisor's collaborators work on: the control verbs
(:mod:`devcluster.supervisor.verbs`), membership (:mod:`devcluster.supervisor.membership`),
the rolling reload (:mod:`devcluster.supervisor.reload`) and the cluster's own life
(:mod:`devcluster.supervisor.runtime`). It holds the instance tables, the registry writer
and the files' current tables, and the operations on them every one of those needs
(look up, describe, add, remove); it starts and stops nothing by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from devcluster.config import procfile
from devcluster.config.policy import Policy
from devcluster.errors import DevclusterError, UnknownInstanceError
from devcluster.events import EventKind
from devcluster.registry import Record, Registry
from devcluster.schema import InstanceInfo
from devcluster.supervisor.instance import Instance
from devcluster.supervisor.logs import LogSink
from devcluster.supervisor.preload import Preloader
from devcluster.supervisor.recorder import Recorder, landed
from devcluster.supervisor.request import UpRequest
from devcluster.supervisor.shared import Runtime

#: Creates a task owned by the supervisor's task group.
Spawner = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


@dataclass(eq=False)
class Crew:
    """A cluster's instances, the tables they come from, and their shared services."""

    settings: UpRequest
    registry: Registry
    sink: LogSink
    records: Recorder
    rt: Runtime
    preload: Preloader
    spawn: Spawner
    types: dict[str, procfile.ProcessType]
    type_order: list[str]
    env: dict[str, str]
    tables: Any = None
    """devcluster.toml's per-type tables as last applied (a reload diffs against them)."""
    file_counts: dict[str, int] = field(default_factory=dict)
    """What the files (and ``up``'s flags) gave each type at the last load: a reload
    changes a type's count only when this changed (a runtime ``scale`` survives)."""
    instances: dict[str, Instance] = field(default_factory=dict)
    outside: set[Instance] = field(default_factory=set)
    """Instances of ours not in the name table: a replacement starting, an old instance
    stopping (see devcluster.supervisor.reload). They die with the cluster too."""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    membership: asyncio.Lock = field(default_factory=asyncio.Lock)
    """scale and reload add and remove instances across awaits: one at a time."""

    # -- lookup ------------------------------------------------------------------------

    def select(self, names: Iterable[str], all_: bool = False) -> list[Instance]:
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

    def of_types(self, types: Iterable[str]) -> list[Instance]:
        wanted = set(types)
        return [i for i in self.instances.values() if i.spec.process_type in wanted]

    async def infos(self, chosen: Iterable[Instance] | None = None) -> list[InstanceInfo]:
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

    async def written(self) -> None:
        """Wait (bounded) until every registry write queued so far landed, so a control
        client reading the registry right after a reply sees what the reply says."""
        await landed(self.records.flush(), self.settings.grace)

    # -- membership --------------------------------------------------------------------

    def make_instance(self, spec: procfile.InstanceSpec) -> Instance:
        """A new instance of ``spec`` with its type's settings, in no table yet."""
        policy = self.settings.restart.get(spec.process_type, Policy.ON_FAILURE)
        self.sink.widen(spec.name)
        return Instance(spec, policy, self.rt, self.settings.types.get(spec.process_type))

    def add(self, spec: procfile.InstanceSpec) -> Instance:
        """A new instance in the name table (not in the registry yet, not started)."""
        inst = self.instances[spec.name] = self.make_instance(spec)
        return inst

    def add_instance(self, spec: procfile.InstanceSpec) -> Instance:
        """A new instance in the table and the registry (not started)."""
        inst = self.add(spec)
        self.records.register(inst.record())
        self.rt.event(EventKind.ADDED, inst.name, detail=inst.address)
        return inst

    async def remove_instance(self, name: str) -> None:
        """Stop an instance gracefully and forget it."""
        inst = self.instances[name]
        await inst.stop(drain=True)
        self.instances.pop(name, None)
        self.records.deregister(name)
        self.rt.event(EventKind.REMOVED, name)

    def adopt_config(self, types: Sequence[procfile.ProcessType], env: dict[str, str],
                     tables: Any) -> None:
        """What the files say now (new instances and scaling follow it)."""
        self.types, self.type_order = {t.name: t for t in types}, [t.name for t in types]
        self.env, self.tables = env, tables
