"""``devcluster logs``: print the last lines of a log, or of the merged view, and follow."""

from __future__ import annotations

from pathlib import Path

from devcluster.config.procfile import check_name
from devcluster.defaults import instance_of_log, layout
from devcluster.errors import NoClusterError, UnknownInstanceError
from devcluster.supervisor import logread


def show_logs(state_dir: Path, name: str | None, follow: bool, lines: int,
              as_json: bool = False) -> None:
    """Print ``lines`` last lines of ``name``'s log (the merged view of every log if
    None); follow with watchfiles. ``as_json``: one JSON object a line
    (:meth:`~devcluster.supervisor.logread.LogLine.to_json`)."""
    log_dir = layout(state_dir).logs
    if name is not None:
        name = check_name(name)
        if not layout(state_dir).log(name).exists():
            if not log_dir.is_dir():
                raise NoClusterError(f"no cluster running in {state_dir}; start one with "
                                     "`devcluster up`")
            known = [instance_of_log(p.name) for p in log_dir.glob("*.log")]
            raise UnknownInstanceError(name, [k for k in known if k])
    elif not logread.logs_in(log_dir):
        raise NoClusterError(f"no cluster running in {state_dir}; start one with "
                             "`devcluster up`")
    column = None if name is not None else logread.width(logread.logs_in(log_dir))

    def emit(line: logread.LogLine) -> None:
        nonlocal column
        if column is not None:
            column = max(column, len(line.name))
        print(line.to_json() if as_json else line.show(column), flush=follow)

    if not follow:
        for line in logread.last(log_dir, name, lines):
            emit(line)
        return
    try:
        for batch in logread.follow(log_dir, name, lines):
            for line in batch:
                emit(line)
    except KeyboardInterrupt:
        pass
