"""The control plane, by its old name: :mod:`devcluster.control.client` (what the
commands, the API and scripts use) and :mod:`devcluster.control.server` (what the
daemon runs), re-exported so ``from devcluster.control.plane import ...`` keeps working.

Importing this module pays for both; code of ours imports the half it needs.
"""

from __future__ import annotations

from devcluster.control.client import (
    ControlClient,
    as_dict,
    from_pb,
    reload_result_dict,
)
from devcluster.control.server import (
    ControlServer,
    ReloadOutcome,
    ReloadProgress,
    Supervised,
    bind_path,
    reload_result_to_pb,
    to_pb,
)

__all__ = ["ControlClient", "ControlServer", "ReloadOutcome", "ReloadProgress", "Supervised",
           "as_dict", "bind_path", "from_pb", "reload_result_dict", "reload_result_to_pb",
           "to_pb"]
