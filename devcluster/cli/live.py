"""``top`` and ``console``: the cluster live, in the terminal and in a browser."""

from __future__ import annotations

import sys
import threading

from devcluster.cli import views
from devcluster.cli.interrupt import stop_on_signals
from devcluster.cli.place import Place
from devcluster.errors import UsageError


def top(at: Place) -> None:
    """The full-screen view (textual) until ``q``, Ctrl-C or SIGTERM."""
    from devcluster.console.model import ClusterView
    from devcluster.tui.top import TopApp

    at.require_registry()
    view = ClusterView(at.state_dir, at.registry_url)
    try:
        with stop_on_signals():
            TopApp(view).run()
    finally:
        view.close()


def console(at: Place, port: int, open_: bool) -> None:
    """Serve the web console until Ctrl-C or SIGTERM; the cluster keeps running."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {port}")
    at.require_registry()
    from devcluster.console import Console

    server = Console(at.state_dir, at.registry_url, port=port)
    with stop_on_signals():
        try:
            url = server.start()
            print(url)
            print(views.paint("Ctrl-C stops the console (the cluster keeps running).", "dim",
                              views.use_colour(sys.stdout)), flush=True)
            if open_:
                import webbrowser

                webbrowser.open(url)
            threading.Event().wait()  # until Ctrl-C or SIGTERM: exit 130, as interrupted
        finally:
            server.stop()
