"""devcluster: a real local gRPC cluster in one command.

>>> from devcluster import Cluster                      # doctest: +SKIP
>>> with Cluster("Procfile", port=0) as cluster:        # doctest: +SKIP
...     cluster.kill("server2")

Names are imported lazily so that servers importing :mod:`devcluster.server` start fast.

The public modules: :mod:`devcluster.api` (:class:`Cluster`), :mod:`devcluster.client`
(the balancing channels), :mod:`devcluster.registry`, :mod:`devcluster.schema`
(:class:`InstanceInfo`), :mod:`devcluster.errors`, :mod:`devcluster.server` and
:mod:`devcluster.handoff` (for servers), :mod:`devcluster.events` and
:mod:`devcluster.statedir` (what the state dir holds). The other packages (config,
supervisor, control, cli, tui, console) are internal: no compatibility promise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"  # the one place: pyproject.toml reads it (dynamic version), CHANGELOG.md names it
__all__ = [
    "AioBalancedChannel",
    "BalancedChannel",
    "Cluster",
    "DevclusterError",
    "InstanceInfo",
    "NoClusterError",
    "NotReadyError",
    "ReloadError",
    "UnknownInstanceError",
    "UsageError",
    "__version__",
]

if TYPE_CHECKING:
    from devcluster.api import Cluster, NotReadyError, ReloadError
    from devcluster.client import AioBalancedChannel, BalancedChannel
    from devcluster.errors import DevclusterError, NoClusterError, UnknownInstanceError, UsageError
    from devcluster.schema import InstanceInfo

#: Where each exported name lives; imported on first use.
_LAZY = {
    "Cluster": "devcluster.api",
    "NotReadyError": "devcluster.api",
    "ReloadError": "devcluster.api",
    "BalancedChannel": "devcluster.client",
    "AioBalancedChannel": "devcluster.client",
    "DevclusterError": "devcluster.errors",
    "NoClusterError": "devcluster.errors",
    "UnknownInstanceError": "devcluster.errors",
    "UsageError": "devcluster.errors",
    "InstanceInfo": "devcluster.schema",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'devcluster' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazy names are not in the module's dict until used: list them anyway, so
    # dir(devcluster) and completion show what the package exports.
    return sorted({*globals(), *__all__})
