"""Where a command works: the Procfile, the state dir and the registry, resolved once.

Every command gets its :class:`Place` from :func:`resolve`, so ``-f``, ``--procfile``,
``--state-dir`` (an empty one included) and ``--registry`` mean the same everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from devcluster import defaults
from devcluster.errors import NoClusterError

if TYPE_CHECKING:
    from devcluster.registry import Registry


@dataclass(frozen=True)
class Place:
    """The Procfile, the state dir (absolute) and the ``--registry`` URL of a command.

    ``state_dir_given``: ``--state-dir`` named one (``client --target`` refuses it)."""

    procfile: Path
    state_dir: Path
    state_dir_given: bool = False
    registry_url: str | None = None

    @property
    def is_etcd(self) -> bool:
        """An etcd registry (``--registry`` or $DEVCLUSTER_REGISTRY), not the state dir's file."""
        url = self.registry_url or os.environ.get(defaults.ENV_REGISTRY) or ""
        return url.startswith("etcd://")

    @property
    def is_default_state_dir(self) -> bool:
        return self.state_dir == defaults.state_dir(self.procfile)

    def registry(self) -> Registry:
        """The registry: etcd when asked for, else the state dir's registry.json."""
        from devcluster.registry import open_registry, registry_spec

        return open_registry(registry_spec(self.registry_url, self.state_dir))

    def require_registry(self, hint: str = "or pass --state-dir or --registry") -> None:
        """NoClusterError unless a registry is there to read (etcd always is)."""
        if not self.is_etcd and not defaults.layout(self.state_dir).registry.exists():
            raise NoClusterError(f"no registry in {self.state_dir}; start a cluster with "
                                 f"`devcluster up` ({hint})")


def resolve(before: str | None, procfile: str | None, state_dir: str | None,
            registry: str | None = None) -> Place:
    """The place of a command line: ``--procfile`` after the command wins over ``-f``
    before it, else ./Procfile; an empty ``--state-dir`` is the default one (beside the
    Procfile), as if it were not given."""
    path = Path(procfile or before or "Procfile")
    return Place(path, defaults.state_dir(path, state_dir or None), bool(state_dir), registry)
