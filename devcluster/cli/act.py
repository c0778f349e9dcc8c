"""The verbs that change instances: kill/stop/start/restart/pause/resume, scale, weight,
enable, disable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from devcluster.api import control_client, instance_dict, parse_weight
from devcluster.cli import fast as fastcli
from devcluster.cli.app import (
    DEFAULT_PROCFILE,
    JsonOpt,
    ProcfileOpt,
    RegistryOpt,
    StateDirOpt,
    _registry,
    _state_dir,
    app,
)
from devcluster.cli.render import _print_instances
from devcluster.config import procfile as procfile_mod

NamesArg = Annotated[list[str] | None, typer.Argument(
    metavar="[NAME]...", help="Instances (server1, greeter.2) or process types (greeter).",
    show_default=False)]
AllOpt = Annotated[bool, typer.Option("--all", help="Every instance.")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Return without waiting for the "
                                                            "change to happen.")]


def _act(verb: str, names: list[str] | None, all_: bool, procfile: Path, state_dir: Path | None,
         as_json: bool, **kw: Any) -> None:
    fastcli.act(_state_dir(procfile, state_dir), verb, names or [], all_, as_json, **kw)


def _verb(verb: str, doc: str, waits: bool) -> None:
    """Register a verb; only a verb that waits for its change has --no-wait."""
    example = f"\n\nExample: devcluster {verb} server2   (or a type: {verb} greeter; or --all)"
    if waits:
        def command(names: NamesArg = None, all_: AllOpt = False, no_wait: NoWaitOpt = False,
                    procfile: ProcfileOpt = DEFAULT_PROCFILE, state_dir: StateDirOpt = None,
                    json_: JsonOpt = False) -> None:
            _act(verb, names, all_, procfile, state_dir, json_, wait=not no_wait)
    else:
        def command(names: NamesArg = None, all_: AllOpt = False,  # type: ignore[misc]
                    procfile: ProcfileOpt = DEFAULT_PROCFILE, state_dir: StateDirOpt = None,
                    json_: JsonOpt = False) -> None:
            _act(verb, names, all_, procfile, state_dir, json_, wait=False)

    command.__doc__ = doc + example
    app.command(verb)(command)


@app.command()
def kill(
    names: NamesArg = None,
    signal: Annotated[str, typer.Option("--signal", "-s", metavar="SIGNAL",
                                        help="Signal to send.")] = "SIGKILL",
    all_: AllOpt = False,
    procfile: ProcfileOpt = DEFAULT_PROCFILE,
    state_dir: StateDirOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Simulate a crash: SIGKILL (or --signal) to the instance's process group.

    Example: devcluster kill server2 --signal SIGTERM"""
    from devcluster.config.signals import parse_signal

    parse_signal(signal)
    _act("kill", names, all_, procfile, state_dir, json_, signal=signal)


_verb("stop", "Stop gracefully: draining, SIGINT, SIGKILL after the grace period.", False)
_verb("start", "Start a stopped/killed/exited/failed instance (same name, port, env).", True)
_verb("restart", "Graceful stop, then start again.", True)
_verb("pause", "Freeze with SIGSTOP: a hung server that stays registered.", False)
_verb("resume", "Thaw a paused instance with SIGCONT.", False)


@app.command()
def scale(
    counts: Annotated[list[str], typer.Argument(metavar="TYPE=N...", help="TYPE=N, e.g. greeter=5.")],
    no_wait: NoWaitOpt = False,
    procfile: ProcfileOpt = DEFAULT_PROCFILE,
    state_dir: StateDirOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Grow or shrink a process type while the cluster runs.

    Example: devcluster scale greeter=5 web=2"""
    wanted = procfile_mod.parse_scale(counts)
    with control_client(_state_dir(procfile, state_dir)) as control:
        reply = control.scale(wanted, wait=not no_wait)
    _print_instances([instance_dict(i) for i in reply.instances], json_)


@app.command()
def weight(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Instance or process type.")],
    value: Annotated[str, typer.Argument(metavar="WEIGHT", help="Integer 0..1000; 0 drains.")],
    procfile: ProcfileOpt = DEFAULT_PROCFILE,
    state_dir: StateDirOpt = None,
    registry: RegistryOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Set the weight of an instance in the registry (works without a supervisor).

    Example: devcluster weight server1 5   (server1 then gets 5/7 of the calls of three)"""
    w = parse_weight(value)
    _registry_write(procfile, state_dir, registry, name, {"weight": w}, f"weight {w}", json_)


def _registry_write(procfile: Path, state_dir: Path | None, registry: str | None, name: str,
                    change: dict[str, Any], said: str, as_json: bool) -> None:
    """Apply ``change`` to an instance (or every instance of a type) and say what it is now."""
    fastcli.registry_write(_registry(procfile, state_dir, registry), name, change, said, as_json)


def _enable(name: str, procfile: Path, state_dir: Path | None, enabled: bool,
            registry: str | None, as_json: bool) -> None:
    _registry_write(procfile, state_dir, registry, name, {"enabled": enabled},
                    "enabled" if enabled else "disabled", as_json)


@app.command()
def enable(name: Annotated[str, typer.Argument(metavar="NAME", help="Instance or process type.")],
            procfile: ProcfileOpt = DEFAULT_PROCFILE, state_dir: StateDirOpt = None,
            registry: RegistryOpt = None, json_: JsonOpt = False) -> None:
    """Let an instance receive calls again.

    Example: devcluster enable server3"""
    _enable(name, procfile, state_dir, True, registry, json_)


@app.command()
def disable(name: Annotated[str, typer.Argument(metavar="NAME", help="Instance or process type.")],
            procfile: ProcfileOpt = DEFAULT_PROCFILE, state_dir: StateDirOpt = None,
            registry: RegistryOpt = None, json_: JsonOpt = False) -> None:
    """Take an instance out of rotation (it keeps running).

    Example: devcluster disable server3"""
    _enable(name, procfile, state_dir, False, registry, json_)


