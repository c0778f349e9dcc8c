"""``top`` and ``console``: the cluster live, in the terminal and in a browser."""

from __future__ import annotations

import threading
import webbrowser
from pathlib import Path
from typing import Annotated

import typer

from devcluster.cli.app import ProcfileOpt, RegistryOpt, StateDirOpt, _is_etcd, _state_dir, app, out
from devcluster.errors import NoClusterError


def _check_cluster(state_dir: Path, registry: str | None) -> None:
    if not _is_etcd(registry) and not (state_dir / "registry.json").exists():
        raise NoClusterError(f"no registry in {state_dir}; start a cluster with "
                             "`devcluster up` (or pass --state-dir or --registry)")


@app.command()
def top(procfile: ProcfileOpt = Path("Procfile"), state_dir: StateDirOpt = None,
        registry: RegistryOpt = None) -> None:
    """Full-screen live view: state, weight, CPU, memory and calls/s per instance.

    Keys: k kill, s stop/start, r restart, p pause/resume, +/- weight,
    d disable/enable, q quit. Destructive keys ask first."""
    from devcluster.console.model import ClusterView
    from devcluster.tui.top import TopApp

    directory = _state_dir(procfile, state_dir)
    _check_cluster(directory, registry)
    view = ClusterView(directory, registry)
    try:
        TopApp(view).run()
    finally:
        view.close()


@app.command()
def console(
    port: Annotated[int, typer.Option("--port", "-p", help="Port on 127.0.0.1 (default: a "
                                                           "free one).", show_default=False)] = 0,
    open_: Annotated[bool, typer.Option("--open", help="Open the page in a browser.")] = False,
    procfile: ProcfileOpt = Path("Procfile"),
    state_dir: StateDirOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Web console on 127.0.0.1: live instances, weights, actions, a calls/s chart.

    Prints its URL with an access token. Scripts use the same JSON API as the page
    with `Authorization: Bearer TOKEN` (see the README)."""
    from devcluster.console import Console

    if not 0 <= port <= 65535:
        raise typer.BadParameter(f"--port must be 0..65535, got {port}")
    directory = _state_dir(procfile, state_dir)
    _check_cluster(directory, registry)
    server = Console(directory, registry, port=port)
    try:
        url = server.start()
        out.print(url, markup=False, highlight=False)
        out.print("Ctrl-C stops the console (the cluster keeps running).", style="dim")
        if open_:
            webbrowser.open(url)
        threading.Event().wait()  # until Ctrl-C
    finally:
        server.stop()
