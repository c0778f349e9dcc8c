"""The typer app, the consoles and the options every command shares."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from devcluster.api import default_state_dir

app = typer.Typer(
    name="devcluster",
    help="A real local gRPC cluster in one command: run a Procfile of servers, then kill, "
         "pause, drain and reweight single instances while a balancing client shows "
         "which instance served each call.\n\n"
         "Example: devcluster up -d && devcluster client",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Help text is plain text on purpose: it is full of brackets (etcd://host:2379[/prefix],
    # [NAME]) that rich markup would read as tags, and a tag it cannot close is a traceback.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Tables piped to a file or a script must not be cut at 80 columns.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DEFAULT_PROCFILE = Path("Procfile")
#: The Procfile given before the command (``devcluster -f FILE up``), as docker compose does.
_global_procfile: Path | None = None


def _version(value: bool) -> None:
    if value:
        from devcluster import __version__

        print(f"devcluster {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    file: Annotated[Path | None, typer.Option(
        "--file", "-f", "--procfile", metavar="PROCFILE",
        help="Procfile to use, before the command as in docker compose: "
             "devcluster -f other/Procfile up. Default: ./Procfile.", show_default=False)]
    = None,
    version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    global _global_procfile
    _global_procfile = file


def _procfile(ctx: typer.Context, param: typer.CallbackParam, value: Path) -> Path:
    """A command's ``--procfile`` wins; otherwise the one before the command; else ./Procfile."""
    source = ctx.get_parameter_source(param.name or "procfile")
    if source is not None and source.name == "DEFAULT" and _global_procfile is not None:
        return _global_procfile
    return value


# `-f` means one thing per position, as in docker compose: the Procfile before the command,
# follow after `logs`. The long spellings work after every command, as they always did.
ProcfileOpt = Annotated[Path, typer.Option(
    "--procfile", "--file", help="Procfile to use (or -f FILE before the command).",
    callback=_procfile, metavar="FILE", show_default=True)]
StateDirOpt = Annotated[Path | None, typer.Option(
    "--state-dir", metavar="DIR", help="State dir (default: .devcluster beside the Procfile; "
                        "env DEVCLUSTER_HOME).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
RegistryOpt = Annotated[str | None, typer.Option(
    "--registry", metavar="URL", help="etcd://host:2379[/prefix] to use etcd (env DEVCLUSTER_REGISTRY); "
                       "default: the state dir's registry.json.", show_default=False)]


def _registry(procfile: Path, state_dir: Path | None, registry: str | None) -> Any:
    from devcluster.registry import open_registry, registry_spec

    return open_registry(registry_spec(registry, _state_dir(procfile, state_dir)))


def _is_etcd(registry: str | None) -> bool:
    return (registry or os.environ.get("DEVCLUSTER_REGISTRY") or "").startswith("etcd://")


def _state_dir(procfile: Path, state_dir: Path | None) -> Path:
    return default_state_dir(procfile, state_dir)


def fail(message: str, code: int = 1) -> NoReturn:
    error_line(message)
    raise typer.Exit(code)


def error_line(message: str) -> None:
    """The one line every mistake gets on stderr (the message is never read as markup)."""
    err.print(f"[red]devcluster: error:[/red] {escape(message)}", markup=True)


