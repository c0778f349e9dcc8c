"""Reaching a cluster by its parts, without a :class:`~devcluster.api.Cluster`: its
registry's weight and metadata by instance name, its control client, and the control
plane's instances as :class:`~devcluster.schema.InstanceInfo` (or ``ps --json`` dicts).
The CLI and :class:`Cluster` share these; they stay importable from :mod:`devcluster.api`.

grpc is imported only when a control client is made, not by importing this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devcluster.registry import Record, Registry, Snapshot
from devcluster.registry.record import parse_weight
from devcluster.schema import InstanceInfo

if TYPE_CHECKING:
    from devcluster._proto import control_pb2 as pb
    from devcluster.control.client import ControlClient

__all__ = ["control_client", "instance_dict", "instance_info", "set_metadata", "set_weight"]


def set_weight(registry: Registry, name: str, weight: str | int) -> None:
    """Set ``name``'s weight (``"5"`` or 5; checked: 0..1000) in one registry write."""
    registry.update(name, weight=parse_weight(weight))


def set_metadata(registry: Registry, name: str,
                 changes: Mapping[str, str | None]) -> Record:
    """Set (``"zone": "a"``) or remove (``"zone": None``) keys of ``name``'s metadata in
    one atomic read-modify-write (no concurrent change is lost); the record as stored."""
    def decide(snap: Snapshot) -> dict[str, dict[str, Any]]:
        if name not in snap.records:
            from devcluster.errors import UnknownInstanceError

            raise UnknownInstanceError(name, list(snap.records))
        metadata = dict(snap.records[name].metadata)
        for key, value in changes.items():
            if value is None:
                metadata.pop(key, None)
            else:
                metadata[key] = value
        return {name: {"metadata": metadata}}

    return registry.modify(decide).records[name]

def control_client(state_dir: Path) -> ControlClient:
    """A ControlClient for ``state_dir`` (grpc is imported here, not by this module)."""
    from devcluster.control.client import ControlClient

    return ControlClient(state_dir)


def instance_info(inst: pb.Instance) -> InstanceInfo:
    """A control-plane Instance as an :class:`InstanceInfo`."""
    from devcluster.control.client import from_pb

    return from_pb(inst)


def instance_dict(inst: pb.Instance) -> dict[str, Any]:
    """A control-plane Instance as the ``ps --json`` dict (:class:`InstanceInfo`'s keys)."""
    return instance_info(inst).to_dict()
