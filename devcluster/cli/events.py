"""``devcluster events``: the cluster's timeline, as the supervisor recorded it."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from typing import Annotated

import typer

from devcluster.cli.app import DEFAULT_PROCFILE, ProcfileOpt, StateDirOpt, _state_dir, app
from devcluster.errors import NoClusterError, UsageError
from devcluster.events import Event, follow_events, read_events


def _line(event: Event, as_json: bool) -> str:
    if as_json:
        return json.dumps(event.to_dict(), default=str)
    stamp = datetime.fromtimestamp(event.time).strftime("%H:%M:%S.%f")[:-3]
    return f"{stamp}  {event.describe()}"


@app.command()
def events(
    since: Annotated[float | None, typer.Option(
        "--since", metavar="SECONDS", help="Only the events of the last SECONDS seconds.",
        show_default=False)] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events "
                                         "(Ctrl-C to stop).")] = False,
    procfile: ProcfileOpt = DEFAULT_PROCFILE,
    state_dir: StateDirOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object a line: time, kind, "
                                        "instance, old, new, code, signal, who, source, "
                                        "detail.")] = False,
) -> None:
    """Show (and with -f follow) the cluster's timeline: starts, exits with code or
    signal, restarts, state, weight and enable changes, and who asked for each.

    The timeline of the current (or last) `up`; the one before is events.1.jsonl in the
    state dir.

    Example: devcluster events --since 60 -f"""
    if since is not None and since < 0:
        raise UsageError(f"--since must be 0 or more seconds, got {since:g}")
    directory = _state_dir(procfile, state_dir)
    from devcluster import defaults

    if not defaults.layout(directory).events.exists() and not follow:
        raise NoClusterError(f"no cluster has run in {directory}; start one with "
                             "`devcluster up`")
    after = None if since is None else time.time() - since
    if not follow:
        for event in read_events(directory, after):
            print(_line(event, json_))
        return
    stop = threading.Event()
    try:
        for event in follow_events(directory, stop, after):
            print(_line(event, json_), flush=True)
    except KeyboardInterrupt:
        stop.set()
