"""``reload``: replace instances one at a time, losing no call (devcluster.supervisor.reload)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from devcluster.cli import views
from devcluster.cli.place import Place


def reload(at: Place, names: Sequence[str], all_: bool, as_json: bool) -> int:
    """Rolling reload, its progress printed as it happens; exit 1 if a replacement did
    not serve, 2 if the reload was refused as a usage mistake."""
    from devcluster.control.client import ControlClient

    def progress(kind: str, instance: str, text: str) -> None:
        if not as_json:
            print(text, flush=True)

    with ControlClient(at.state_dir) as control:
        result: dict[str, Any] = control.reload(list(names), all_, progress)
    if as_json:
        views.print_json(result)
    if result["ok"]:
        return 0
    if not as_json and result["failed"] and result["log"]:
        print(f"last lines of {result['failed']}'s replacement:")
        for line in result["log"]:
            print(f"  {line}")
    sys.stdout.flush()
    views.error_line(result["error"] or "the reload failed")
    return 2 if result["usage_error"] else 1
