"""Where instances are registered and found: records, snapshots, backends.

>>> reg = open_registry(".devcluster")                     # doctest: +SKIP
>>> [r.name for r in reg.snapshot().usable("server")]      # doctest: +SKIP
['server1', 'server2']
"""

from __future__ import annotations

import os

from devcluster.errors import UsageError
from devcluster.registry.base import Registry
from devcluster.registry.file import FileRegistry
from devcluster.registry.record import DOWN_STATES, RECORD_FIELDS, Record, Snapshot, State

__all__ = [
    "DOWN_STATES",
    "RECORD_FIELDS",
    "FileRegistry",
    "Record",
    "Registry",
    "Snapshot",
    "State",
    "open_registry",
]


def open_registry(spec_or_state_dir: str | os.PathLike[str]) -> Registry:
    """The registry a spec names: ``etcd://host:port`` or a state dir path (file backend).

    >>> open_registry("/tmp/x/.devcluster")
    FileRegistry('/tmp/x/.devcluster')
    """
    spec = os.fspath(spec_or_state_dir)
    if spec.startswith("etcd://"):
        raise UsageError(
            f"cannot use registry {spec!r}: etcd backend not installed yet; "
            "give a state dir path to use the file registry"
        )
    return FileRegistry(spec)
