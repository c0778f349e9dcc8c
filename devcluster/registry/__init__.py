"""Where instances are registered and found: records, snapshots, backends.

>>> reg = open_registry(".devcluster")                     # doctest: +SKIP
>>> [r.name for r in reg.snapshot().usable("server")]      # doctest: +SKIP
['server1', 'server2']
"""

from __future__ import annotations

import os

from devcluster import defaults
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
    "registry_spec",
]


def open_registry(spec_or_state_dir: str | os.PathLike[str]) -> Registry:
    """The registry a spec names: ``etcd://host:port[/prefix]`` or a state dir path (file backend).

    The etcd client is imported only here, when an ``etcd://`` spec asks for it, so the
    file backend works without the ``[etcd]`` extra installed.

    >>> open_registry("/tmp/x/.devcluster")
    FileRegistry('/tmp/x/.devcluster')
    """
    spec = os.fspath(spec_or_state_dir)
    if spec.startswith("etcd://"):
        try:
            from devcluster.registry.etcd import EtcdRegistry
        except ModuleNotFoundError as e:
            raise UsageError(
                f"cannot use registry {spec!r}: the etcd client is not installed ({e.name} "
                "missing); install it with: pip install 'devcluster[etcd]'"
            ) from None
        spec, _, query = spec.partition("?")
        options = dict(part.partition("=")[::2] for part in query.split("&") if part)
        if "ttl" in options:  # etcd://host:port/prefix?ttl=2: a short lease, for tests
            try:
                ttl = float(options["ttl"])
            except ValueError:
                raise UsageError(f"bad ttl in registry {spec!r}: {options['ttl']!r}") from None
            return EtcdRegistry(spec, lease_ttl=ttl, keepalive_every=ttl / 3)
        return EtcdRegistry(spec)
    return FileRegistry(spec)


def registry_spec(explicit: str | None, state_dir: os.PathLike[str] | str) -> str:
    """``--registry`` > ``$DEVCLUSTER_REGISTRY`` > the state dir (file backend)."""
    return defaults.registry_url(explicit) or os.fspath(state_dir)
