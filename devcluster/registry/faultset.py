"""Setting a fault in a registry: ``devcluster fault`` and ``Cluster.fault`` alike."""

from __future__ import annotations

from devcluster.registry.base import Registry
from devcluster.registry.faults import Fault, targets
from devcluster.registry.record import Record, Snapshot

__all__ = ["set_fault"]


def set_fault(registry: Registry, target: str, fault: Fault | None) -> list[Record]:
    """Set ``fault`` (None: clear it) on every instance ``target`` names (an instance, a
    process type or a service), in one atomic write; those records after it.
    UnknownInstanceError when ``target`` names none."""
    names: list[str] = []

    def decide(snap: Snapshot) -> dict[str, dict[str, Fault | None]]:
        names[:] = targets({r.name: r.service for r in snap.records.values()}, target)
        return {n: {"fault": fault} for n in names}

    after = registry.modify(decide)
    return [after.records[n] for n in names if n in after.records]
