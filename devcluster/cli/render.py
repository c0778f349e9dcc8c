"""How instances look on a terminal, or as JSON for a script (see :mod:`devcluster.cli.views`)."""

from __future__ import annotations

from typing import Any

from devcluster.cli.views import print_instances


def _print_instances(rows: list[dict[str, Any]], as_json: bool) -> None:
    print_instances(rows, as_json)
