"""``devcluster logs``: print the last lines of a log and optionally follow it."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from devcluster.errors import NoClusterError, UsageError
from devcluster.logs import SYSTEM, tail


def show_logs(state_dir: Path, name: str | None, follow: bool, lines: int) -> None:
    """Print ``lines`` last lines of ``name``'s log (merged log if None); follow with watchfiles."""
    log_dir = state_dir / "logs"
    path = log_dir / f"{name or SYSTEM}.log"
    if not path.exists():
        if not log_dir.is_dir() or name is None:
            raise NoClusterError(f"no cluster running in {state_dir}; start one with "
                                 "`devcluster up`")
        known = sorted(p.stem for p in log_dir.glob("*.log") if p.stem != SYSTEM)
        raise UsageError(f"no log for {name!r} in {log_dir}; instances with logs: "
                         f"{', '.join(known) or 'none'}")
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
