"""``devcluster logs``: print the last lines of a log and optionally follow it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from devcluster.config.procfile import check_name
from devcluster.defaults import SYSTEM_LOG, instance_of_log, layout
from devcluster.errors import NoClusterError, UnknownInstanceError
from devcluster.supervisor.logs import tail


def as_json_line(name: str | None, text: str) -> str:
    """One log line as JSON: ``{"time", "instance", "line"}`` (merged lines name their instance)."""
    stamp, _, rest = text.partition(" ")
    instance = name
    if name is None:
        label, sep, body = rest.partition(" | ")
        instance, rest = (label.strip(), body) if sep else (SYSTEM_LOG, rest)
    return json.dumps({"time": stamp, "instance": instance, "line": rest})


def show_logs(state_dir: Path, name: str | None, follow: bool, lines: int,
              as_json: bool = False) -> None:
    """Print ``lines`` last lines of ``name``'s log (merged log if None); follow with watchfiles.

    ``as_json``: one JSON object a line (:func:`as_json_line`)."""

    def emit(text: str) -> None:
        print(as_json_line(name, text) if as_json else text, flush=follow)

    where = layout(state_dir)
    log_dir = where.logs
    path = where.log(check_name(name) if name is not None else None)
    if not path.exists():
        if not log_dir.is_dir() or name is None:
            raise NoClusterError(f"no cluster running in {state_dir}; start one with "
                                 "`devcluster up`")
        known = [instance_of_log(p.name) for p in log_dir.glob("*.log")]
        raise UnknownInstanceError(name, [k for k in known if k])
    for line in tail(path, lines):
        emit(line)
    if not follow:
        return
    import watchfiles

    with open(path, encoding="utf-8", errors="replace") as f:
        f.seek(0, 2)
        stop = threading.Event()
        pending = ""  # a line the writer has not finished yet
        try:
            for _ in watchfiles.watch(log_dir, stop_event=stop, debounce=50, step=20,
                                      watch_filter=lambda _c, p: Path(p) == path,
                                      raise_interrupt=False):
                *complete, pending = (pending + f.read()).split("\n")
                for text in complete:
                    emit(text)
        except KeyboardInterrupt:
            pass
