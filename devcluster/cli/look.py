"""``ps``, ``logs`` and ``registry``: looking at a cluster."""

from __future__ import annotations

from typing import Annotated

import typer

from devcluster.cli import fast as fastcli
from devcluster.cli.app import (
    DEFAULT_PROCFILE,
    JsonOpt,
    ProcfileOpt,
    RegistryOpt,
    StateDirOpt,
    _is_etcd,
    _registry,
    _state_dir,
    app,
)
from devcluster.cli.render import _print_instances
from devcluster.errors import UsageError


@app.command()
def ps(procfile: ProcfileOpt = DEFAULT_PROCFILE, state_dir: StateDirOpt = None,
       json_: JsonOpt = False, registry: RegistryOpt = None) -> None:
    """List instances: state, pid, address, weight, uptime, restarts, CPU, memory.

    With an etcd registry: every instance of every supervisor registered there.

    Example: devcluster ps --json"""
    if _is_etcd(registry):
        from devcluster.schema import InstanceInfo

        snap = _registry(procfile, state_dir, registry).snapshot()
        rows = [InstanceInfo.from_record(r).to_dict() for r in snap.records.values()]
        _print_instances(rows, json_)
        return
    fastcli.ps(_state_dir(procfile, state_dir), json_)


@app.command()
def logs(
    name: Annotated[str | None, typer.Argument(metavar="[NAME]", help="Instance (default: the merged log).")]
    = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")]
    = False,
    lines: Annotated[int, typer.Option("--lines", "-n", metavar="N", help="Lines to show.")] = 50,
    procfile: ProcfileOpt = DEFAULT_PROCFILE,
    state_dir: StateDirOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object a line: time, "
                                                        "instance, line.")] = False,
) -> None:
    """Show (and with -f follow) the log of one instance or of the whole cluster.

    Example: devcluster logs server1 -f -n 20"""
    if lines < 0:
        raise UsageError(f"--lines must be 0 or more, got {lines}")
    from devcluster.cli.logview import show_logs

    show_logs(_state_dir(procfile, state_dir), name, follow, lines, as_json=json_)


@app.command()
def registry(procfile: ProcfileOpt = DEFAULT_PROCFILE, state_dir: StateDirOpt = None,
             json_: JsonOpt = False, registry_url: RegistryOpt = None) -> None:
    """Print the registry: every record with weight, enabled and state.

    Example: devcluster registry --json"""
    reg = _registry(procfile, state_dir, registry_url)
    fastcli.registry(reg, json_, str(getattr(reg, "path", None) or registry_url))


