"""The background supervisor of ``up -d`` and of the Python API.

``python -m devcluster.daemon SETTINGS_JSON`` runs :func:`devcluster.supervisor.serve`
with no console (the merged log goes to ``logs/devcluster.log``). It is started by
:class:`devcluster.api.Cluster` and skips the CLI's imports (typer, rich): the
daemon's start-up is on the path of every ``up -d``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any


def settings_json(**fields: Any) -> str:
    """Encode :class:`~devcluster.supervisor.Settings` fields for the daemon's argv."""
    return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in fields.items()})


def main(argv: list[str]) -> int:
    from devcluster.errors import DevclusterError
    from devcluster.policy import Policy
    from devcluster.supervisor import Settings, serve

    raw = json.loads(argv[0])
    settings = Settings(
        procfile=Path(raw["procfile"]), state_dir=Path(raw["state_dir"]),
        env_files=tuple(Path(p) for p in raw.get("env_files", ())),
        scale=dict(raw.get("scale", {})), base_port=int(raw["base_port"]),
        grace=float(raw["grace"]), ready_timeout=float(raw["ready_timeout"]),
        restart={k: Policy(v) for k, v in raw.get("restart", {}).items()},
        ready_fd=raw.get("ready_fd"), lifeline_fd=raw.get("lifeline_fd"),
        registry=raw.get("registry"))
    try:
        return asyncio.run(serve(settings, None))
    except DevclusterError as e:
        print(f"devcluster: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
