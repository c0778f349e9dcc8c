"""From ``devcluster.toml`` and the flags to what a cluster runs: :func:`plan`, and the
per-type settings on their way to the background supervisor (JSON).

>>> plan("Procfile", Flags(port=0)).port                                  # doctest: +SKIP
0
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from devcluster import defaults
from devcluster.config.policy import Policy
from devcluster.config.preloadcheck import check_preload
from devcluster.config.procfile import parse_procfile, read_text
from devcluster.config.project import Flags, Ready, Resolved, TypeSettings, find_project, resolve


def plan(procfile: str | Path, flags: Flags, config: str | Path | None = None) -> Resolved:
    """What ``up`` will run: the Procfile's types, the project file (``config`` or the one
    beside the Procfile, if any) and the flags. Raises before anything starts: a bad
    Procfile or project file, a flag or table naming no type."""
    path = Path(procfile)
    types = parse_procfile(read_text(path, "Procfile"), str(path))
    project = find_project(path, config)
    resolved = resolve(project, flags, [t.name for t in types])
    check_preload(project, types, str(path))
    return resolved


# -- to the background supervisor and back (JSON) ----------------------------------------

def types_to_json(types: Mapping[str, TypeSettings]) -> dict[str, dict[str, Any]]:
    """Per-type settings as JSON-ready dicts (for ``python -m devcluster.daemon``)."""
    out = {}
    for name, t in types.items():
        out[name] = {
            "restart": t.restart.value, "ready": [t.ready.kind, t.ready.arg] if t.ready else None,
            "ready_timeout": t.ready_timeout, "grace": t.grace, "weight": t.weight,
            "env": dict(t.env), "metadata": dict(t.metadata), "depends_on": list(t.depends_on),
            "watch": list(t.watch), "preload": list(t.preload),
            "health_period": t.health_period, "health_failures": t.health_failures,
            "liveness": t.liveness, "log_max": t.log_max, "log_keep": t.log_keep}
    return out


def types_from_json(raw: Mapping[str, Mapping[str, Any]]) -> dict[str, TypeSettings]:
    """The inverse of :func:`types_to_json`."""
    return {name: TypeSettings(
        restart=Policy(t["restart"]), ready=Ready(*t["ready"]) if t["ready"] else None,
        ready_timeout=float(t["ready_timeout"]), grace=float(t["grace"]),
        weight=int(t["weight"]), env=MappingProxyType(dict(t["env"])),
        metadata=MappingProxyType(dict(t["metadata"])), depends_on=tuple(t["depends_on"]),
        watch=tuple(t["watch"]), preload=tuple(t["preload"]),
        health_period=float(t["health_period"]), health_failures=int(t["health_failures"]),
        liveness=bool(t["liveness"]),
        log_max=int(t.get("log_max", defaults.LOG_MAX)),
        log_keep=int(t.get("log_keep", defaults.LOG_KEEP))) for name, t in raw.items()}


def settle_budget(types: Mapping[str, TypeSettings], waves: Iterable[Iterable[str]],
                  ready_timeout: float) -> float:
    """Longest start-up can take before every instance settled: one ready timeout per
    wave (each waits for the one before), the longest of its types."""
    total = 0.0
    for wave in waves:
        total += max((types[t].ready_timeout for t in wave if t in types), default=ready_timeout)
    return max(total, ready_timeout)


def flags_to_json(flags: Flags) -> dict[str, Any]:
    """The flags as JSON (the daemon's request carries them for its reloads)."""
    return {"port": flags.port, "grace": flags.grace, "ready_timeout": flags.ready_timeout,
            "registry": flags.registry, "scale": dict(flags.scale),
            "restart": {k: v.value for k, v in flags.restart.items()}}


def flags_from_json(raw: Mapping[str, Any]) -> Flags:
    """What :func:`flags_to_json` wrote."""
    return Flags(port=raw.get("port"), grace=raw.get("grace"),
                 ready_timeout=raw.get("ready_timeout"), registry=raw.get("registry"),
                 scale={k: int(v) for k, v in raw.get("scale", {}).items()},
                 restart={k: Policy(v) for k, v in raw.get("restart", {}).items()})
