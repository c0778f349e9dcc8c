"""The verbs that change instances: kill/stop/start/restart/pause/resume, scale, weight,
enable, disable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from devcluster import procfile as procfile_mod
from devcluster.api import control_client, instance_dict, parse_weight
from devcluster.cli.app import (
    JsonOpt,
    ProcfileOpt,
    RegistryOpt,
    StateDirOpt,
    _registry,
    _state_dir,
    app,
    out,
)
from devcluster.cli.render import _print_instances
from devcluster.errors import UsageError
from devcluster.registry import FileRegistry

NamesArg = Annotated[list[str] | None, typer.Argument(
    help="Instances (server1, greeter.2) or process types (greeter).", show_default=False)]
AllOpt = Annotated[bool, typer.Option("--all", help="Every instance.")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Return without waiting for the "
                                                            "change to happen.")]


def _act(verb: str, names: list[str] | None, all_: bool, procfile: Path, state_dir: Path | None,
         as_json: bool, **kw: Any) -> None:
    if not names and not all_:
        raise UsageError(f"name an instance or process type to {verb}, or pass --all")
    with control_client(_state_dir(procfile, state_dir)) as control:
        reply = control.act(verb, names or [], all_=all_, **kw)
    rows = [instance_dict(i) for i in reply.instances]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        extra = f" ({r['last_exit']})" if r.get("last_exit") and r["state"] in {
            "exited", "failed", "killed", "backoff", "stopped"} else ""
        where = f" on {r['address']}" if r["state"] == "serving" and r["address"] else ""
        if r["name"] in reply.unchanged:
            out.print(f"{r['name']} is already {r['state']}{where}; nothing to do")
        else:
            out.print(f"{r['name']}: {r['state']}{where}{extra}")


def _verb(verb: str, doc: str, waits: bool) -> None:
    def command(
        names: NamesArg = None,
        all_: AllOpt = False,
        no_wait: NoWaitOpt = False,
        procfile: ProcfileOpt = Path("Procfile"),
        state_dir: StateDirOpt = None,
        json_: JsonOpt = False,
    ) -> None:
        _act(verb, names, all_, procfile, state_dir, json_, wait=waits and not no_wait)

    command.__doc__ = doc
    app.command(verb)(command)


@app.command()
def kill(
    names: NamesArg = None,
    signal: Annotated[str, typer.Option("--signal", "-s", help="Signal to send.")] = "SIGKILL",
    all_: AllOpt = False,
    procfile: ProcfileOpt = Path("Procfile"),
    state_dir: StateDirOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Simulate a crash: SIGKILL (or --signal) to the instance's process group."""
    from devcluster.process import parse_signal

    parse_signal(signal)
    _act("kill", names, all_, procfile, state_dir, json_, signal=signal)


_verb("stop", "Stop gracefully: draining, SIGINT, SIGKILL after the grace period.", False)
_verb("start", "Start a stopped/killed/exited/failed instance (same name, port, env).", True)
_verb("restart", "Graceful stop, then start again.", True)
_verb("pause", "Freeze with SIGSTOP: a hung server that stays registered.", False)
_verb("resume", "Thaw a paused instance with SIGCONT.", False)


@app.command()
def scale(
    counts: Annotated[list[str], typer.Argument(help="TYPE=N, e.g. greeter=5.")],
    no_wait: NoWaitOpt = False,
    procfile: ProcfileOpt = Path("Procfile"),
    state_dir: StateDirOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Grow or shrink a process type while the cluster runs."""
    wanted = procfile_mod.parse_scale(counts)
    with control_client(_state_dir(procfile, state_dir)) as control:
        reply = control.scale(wanted, wait=not no_wait)
    _print_instances([instance_dict(i) for i in reply.instances], json_)


def _registry_names(reg: FileRegistry, name: str) -> list[str]:
    procfile_mod.check_name(name)
    snap = reg.snapshot()
    if name in snap.records:
        return [name]
    of_type = [r.name for r in snap.records.values()
               if r.name.split(".")[0] == name]
    if of_type:
        return of_type
    from devcluster.errors import UnknownInstanceError

    raise UnknownInstanceError(name, list(snap.records))


@app.command()
def weight(
    name: Annotated[str, typer.Argument(help="Instance or process type.")],
    value: Annotated[str, typer.Argument(metavar="WEIGHT", help="Integer 0..1000; 0 drains.")],
    procfile: ProcfileOpt = Path("Procfile"),
    state_dir: StateDirOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Set the weight of an instance in the registry (works without a supervisor)."""
    w = parse_weight(value)
    reg = _registry(procfile, state_dir, registry)
    names = _registry_names(reg, name)
    reg.update_many({n: {"weight": w} for n in names})
    for n in names:
        out.print(f"{n}: weight {w}")


def _enable(name: str, procfile: Path, state_dir: Path | None, enabled: bool,
            registry: str | None = None) -> None:
    reg = _registry(procfile, state_dir, registry)
    names = _registry_names(reg, name)
    reg.update_many({n: {"enabled": enabled} for n in names})
    for n in names:
        out.print(f"{n}: {'enabled' if enabled else 'disabled'}")


@app.command()
def enable(name: Annotated[str, typer.Argument(help="Instance or process type.")],
            procfile: ProcfileOpt = Path("Procfile"), state_dir: StateDirOpt = None,
            registry: RegistryOpt = None) -> None:
    """Let an instance receive calls again."""
    _enable(name, procfile, state_dir, True, registry)


@app.command()
def disable(name: Annotated[str, typer.Argument(help="Instance or process type.")],
            procfile: ProcfileOpt = Path("Procfile"), state_dir: StateDirOpt = None,
            registry: RegistryOpt = None) -> None:
    """Take an instance out of rotation (it keeps running)."""
    _enable(name, procfile, state_dir, False, registry)


