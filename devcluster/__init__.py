"""devcluster: a real local gRPC cluster in one command.

>>> from devcluster import Cluster                      # doctest: +SKIP
>>> with Cluster("Procfile", port=0) as cluster:        # doctest: +SKIP
...     cluster.kill("server2")

Names are imported lazily so that servers importing :mod:`devcluster.server` start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AioBalancedChannel", "BalancedChannel", "Cluster", "DevclusterError", "__version__"]

if TYPE_CHECKING:
    from devcluster.api import Cluster
    from devcluster.client import AioBalancedChannel, BalancedChannel
    from devcluster.errors import DevclusterError

_LAZY = {
    "Cluster": "devcluster.api",
    "BalancedChannel": "devcluster.client",
    "AioBalancedChannel": "devcluster.client",
    "DevclusterError": "devcluster.errors",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'devcluster' has no attribute {name!r}")
