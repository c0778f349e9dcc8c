"""The web console: ``devcluster console`` (see :mod:`devcluster.console.server`).

>>> with Console(Path(".devcluster")) as console:    # doctest: +SKIP
...     print(console.url)
http://127.0.0.1:40423/?token=...
"""

from __future__ import annotations

from devcluster.console.model import ACTIONS, ClusterView
from devcluster.console.server import Console

__all__ = ["ACTIONS", "ClusterView", "Console"]
