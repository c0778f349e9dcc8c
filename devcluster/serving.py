"""Whether instances asked to serve do: the verdict ``up``, ``start``, ``restart`` and
``scale`` give (exit 1 with :class:`~devcluster.errors.NotReadyError`). Light on purpose:
the command line imports it without the supervisor side (:mod:`devcluster.launch`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from devcluster import defaults
from devcluster.errors import NotReadyError


def not_ready_message(state_dir: Path, bad: Mapping[str, Mapping[str, Any]]) -> str:
    """``NotReadyError``'s message: each instance that does not serve, why, its last log."""
    from devcluster.supervisor.logread import shown  # only when something failed

    parts = []
    for name, s in bad.items():
        why = s.get("last_exit") or ("not answering" if s["state"] == "starting" else "")
        log = shown(defaults.layout(state_dir).logs, name, 3)
        last = f"; last log: {' / '.join(log)}" if log else ""
        parts.append(f"{name} {s['state']}{f' ({why})' if why else ''}{last}")
    return "not serving: " + "; ".join(parts)


#: After ``scale`` (every instance of the types scaled is in the answer): the states
#: that say an instance asked to serve does not. ``stopped``, ``paused`` and the like
#: were asked for by someone and are no failure of the scale.
_SCALE_FAILED = frozenset({"failed", "exited", "killed", "backoff", "starting"})


def require_serving(state_dir: Path, rows: Sequence[Mapping[str, Any]], verb: str) -> None:
    """Raise NotReadyError (exit 1) when a waited-for ``start``, ``restart`` or ``scale``
    left an instance not serving: a script's ``devcluster restart X && run_tests`` must
    not go ahead on a broken instance."""
    bad = {str(r["name"]): r for r in rows
           if (r["state"] in _SCALE_FAILED if verb == "scale" else r["state"] != "serving")}
    if bad:
        raise NotReadyError(f"{verb}: " + not_ready_message(state_dir, bad),
                            {str(r["name"]): dict(r) for r in rows})
