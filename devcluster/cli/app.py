"""The typer app, the consoles and the options every command shares."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from devcluster.api import default_state_dir

app = typer.Typer(
    name="devcluster",
    help="A real local gRPC cluster in one command: run a Procfile of servers, then kill, "
         "pause, drain and reweight single instances while a balancing client shows "
         "which instance served each call.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Tables piped to a file or a script must not be cut at 80 columns.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ProcfileOpt = Annotated[Path, typer.Option("--procfile", "-f", help="Procfile to run.",
                                           show_default=True)]
StateDirOpt = Annotated[Path | None, typer.Option(
    "--state-dir", help="State dir (default: .devcluster beside the Procfile; "
                        "env DEVCLUSTER_HOME).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
RegistryOpt = Annotated[str | None, typer.Option(
    "--registry", help="etcd://host:2379[/prefix] to use etcd (env DEVCLUSTER_REGISTRY); "
                       "default: the state dir's registry.json.", show_default=False)]


def _registry(procfile: Path, state_dir: Path | None, registry: str | None) -> Any:
    from devcluster.registry import open_registry, registry_spec

    return open_registry(registry_spec(registry, _state_dir(procfile, state_dir)))


def _is_etcd(registry: str | None) -> bool:
    return (registry or os.environ.get("DEVCLUSTER_REGISTRY") or "").startswith("etcd://")


def _state_dir(procfile: Path, state_dir: Path | None) -> Path:
    return default_state_dir(procfile, state_dir)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]devcluster: error:[/red] {message}", markup=True)
    raise typer.Exit(code)


