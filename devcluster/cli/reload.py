"""``reload``: replace instances one at a time, losing no call (devcluster.supervisor.reload)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from devcluster.api import control_client
from devcluster.cli.app import (
    DEFAULT_PROCFILE,
    JsonOpt,
    ProcfileOpt,
    StateDirOpt,
    _state_dir,
    app,
    error_line,
    out,
)

NamesArg = Annotated[list[str] | None, typer.Argument(
    metavar="[NAME|TYPE]...", help="Instances or process types to replace even if unchanged.",
    show_default=False)]


@app.command()
def reload(
    names: NamesArg = None,
    all_: Annotated[bool, typer.Option("--all", help="Replace every instance.")] = False,
    procfile: ProcfileOpt = DEFAULT_PROCFILE,
    state_dir: StateDirOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Rolling reload: start each replacement, wait until it serves, switch the registry,
    drain and stop the old process; one instance at a time, so no call fails.

    Re-reads the Procfile, .env and devcluster.toml first: changed types reload, new
    types start, removed types stop. With no NAME, only that. A replacement that does
    not serve is stopped, the old instance keeps serving, and the reload stops (exit 1).

    Example: devcluster reload greeter   (or: reload --all; reload to apply edits)"""
    def progress(kind: str, instance: str, text: str) -> None:
        if not json_:
            out.print(text, markup=False, highlight=False)

    with control_client(_state_dir(procfile, state_dir)) as control:
        result = control.reload(names or [], all_, progress)
    if json_:
        print(json.dumps(result, indent=2))
    if result["ok"]:
        return
    if not json_ and result["failed"] and result["log"]:
        out.print(f"last lines of {result['failed']}'s replacement:", markup=False)
        for line in result["log"]:
            out.print(f"  {line}", markup=False, highlight=False)
    error_line(result["error"] or "the reload failed")
    raise typer.Exit(2 if result["usage_error"] else 1)
