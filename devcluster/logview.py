"""``devcluster logs``: print the last lines of a log and optionally follow it."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from devcluster.defaults import instance_of_log, layout
from devcluster.errors import NoClusterError, UnknownInstanceError
from devcluster.logs import tail
from devcluster.procfile import check_name


def show_logs(state_dir: Path, name: str | None, follow: bool, lines: int) -> None:
    """Print ``lines`` last lines of ``name``'s log (merged log if None); follow with watchfiles."""
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
        print(line)
    if not follow:
        return
    import watchfiles

    with open(path, encoding="utf-8", errors="replace") as f:
        f.seek(0, 2)
        stop = threading.Event()
        try:
            for _ in watchfiles.watch(log_dir, stop_event=stop, debounce=50, step=20,
                                      watch_filter=lambda _c, p: Path(p) == path,
                                      raise_interrupt=False):
                chunk = f.read()
                if chunk:
                    sys.stdout.write(chunk)
                    sys.stdout.flush()
        except KeyboardInterrupt:
            pass
