"""``devcluster events``: the cluster's timeline, as the supervisor recorded it."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from pathlib import Path

from devcluster import defaults
from devcluster.cli import views
from devcluster.cli.interrupt import stop_on_signals
from devcluster.cli.place import Place
from devcluster.errors import NoClusterError, UsageError
from devcluster.events import Event, bad_lines, follow_events, read_events


def _line(event: Event, as_json: bool) -> str:
    if as_json:
        return json.dumps(event.to_dict(), default=str)
    stamp = datetime.fromtimestamp(event.time).strftime("%H:%M:%S.%f")[:-3]
    return f"{stamp}  {event.describe()}"


def _say_skipped(directory: Path) -> None:
    """One note on stderr if some lines of the log are not events (stdout stays clean)."""
    bad = bad_lines(directory)
    if bad:
        shown = ", ".join(map(str, bad[:3])) + (", ..." if len(bad) > 3 else "")
        views.note(f"note: skipped {len(bad)} line(s) of {defaults.EVENTS_FILE} that are not "
                   f"events (line {shown})")


def events(at: Place, since: float | None, follow: bool, as_json: bool) -> None:
    """Print the timeline (of the last ``since`` seconds), then (``follow``) new events
    until interrupted. One line per event, as it happens: nothing to render after."""
    if since is not None and since < 0:
        raise UsageError(f"--since must be 0 or more seconds, got {since:g}")
    directory = at.state_dir
    if not defaults.layout(directory).events.exists() and not follow:
        raise NoClusterError(f"no cluster has run in {directory}; start one with "
                             "`devcluster up`")
    after = None if since is None else time.time() - since
    if not follow:
        for event in read_events(directory, after):
            print(_line(event, as_json))
        _say_skipped(directory)
        return
    stop = threading.Event()
    with stop_on_signals():
        try:
            for event in follow_events(directory, stop, after):
                print(_line(event, as_json), flush=True)
        except KeyboardInterrupt:
            stop.set()
