"""The registry's data: instance states, one record per instance, snapshots.

Pure data, no I/O. Both backends (file, etcd) store exactly these records.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from devcluster import defaults
from devcluster.defaults import DEFAULT_WEIGHT
from devcluster.errors import UsageError
from devcluster.registry.faults import Fault

__all__ = ["DOWN_STATES", "RECORD_FIELDS", "Record", "Snapshot", "State", "parse_weight"]

class State(enum.StrEnum):
    """Life-cycle state of one instance, as the supervisor drives it."""

    STARTING = "starting"
    """Spawned; not yet answering its health check."""
    SERVING = "serving"
    """Health check answered SERVING (or its port accepts connections)."""
    DRAINING = "draining"
    """Told to stop: clients send no new calls, in-flight calls may finish."""
    STOPPED = "stopped"
    """Stopped gracefully by the user or at shutdown."""
    EXITED = "exited"
    """Ran out by itself (or its process vanished)."""
    KILLED = "killed"
    """Killed by the user (``devcluster kill``): a simulated crash."""
    BACKOFF = "backoff"
    """Crashed; waiting to be restarted by the restart policy."""
    FAILED = "failed"
    """Crashed too often in a row; the restart policy gave up."""
    PAUSED = "paused"
    """Frozen with SIGSTOP. Shown by ``ps`` only; the registry keeps advertising it."""
    UNHEALTHY = "unhealthy"
    """Serving, but it missed ``health_failures`` health checks in a row (a hung
    server): clients route no calls to it until one check succeeds again."""

    @property
    def running(self) -> bool:
        """True while a process of the instance exists."""
        return self in _RUNNING


_RUNNING = frozenset({State.STARTING, State.SERVING, State.DRAINING, State.PAUSED,
                      State.UNHEALTHY})

#: States with no process behind them.
DOWN_STATES = frozenset({State.STOPPED, State.EXITED, State.KILLED, State.BACKOFF, State.FAILED})

#: The fields of a record, in the order they are written to disk.
RECORD_FIELDS = (
    "name",
    "service",
    "address",
    "weight",
    "enabled",
    "state",
    "pid",
    "restarts",
    "started_at",
    "updated_at",
    "metadata",
    "fault",
)


@dataclass(frozen=True)
class Record:
    """One instance as the registry knows it.

    >>> Record("server1", "server", "127.0.0.1:50051").usable
    False
    """

    name: str
    service: str
    address: str
    weight: int = DEFAULT_WEIGHT
    enabled: bool = True
    state: State = State.STARTING
    pid: int | None = None
    restarts: int = 0
    started_at: float | None = None
    updated_at: float = 0.0
    metadata: Mapping[str, str] = field(default_factory=dict)
    """Free-form labels (string to string): ``devcluster.toml``'s ``metadata``, ``devcluster
    meta``; clients select instances with them (``--where zone=a``)."""
    fault: Fault | None = None
    """Calls this instance serves are delayed or aborted (``devcluster fault``), by xDS
    clients and the balanced clients alike; None: no fault."""

    @property
    def usable(self) -> bool:
        """True when this instance should receive new calls."""
        return self.state is State.SERVING and self.enabled and self.weight > 0

    def with_(self, **changes: Any) -> Record:
        """A copy with ``changes`` applied (``state`` may be given as a string)."""
        if "state" in changes:
            changes["state"] = State(changes["state"])
        if "metadata" in changes:  # a copy: the caller's dict may change later
            changes["metadata"] = dict(changes["metadata"])
        if isinstance(changes.get("fault"), dict):
            changes["fault"] = Fault.from_dict(changes["fault"])
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the stable field order."""
        out = {name: getattr(self, name) for name in RECORD_FIELDS}
        out["state"] = self.state.value
        out["metadata"] = dict(self.metadata)
        out["fault"] = None if self.fault is None else self.fault.to_dict()
        return out


@dataclass(frozen=True)
class Snapshot:
    """The whole registry at one ``revision``: records by name, sorted by name."""

    revision: int
    records: Mapping[str, Record] = field(default_factory=lambda: MappingProxyType({}))

    def usable(self, service: str | None = None) -> list[Record]:
        """Records that may receive new calls, optionally of one service, by name."""
        return [
            r for r in self.records.values()
            if r.usable and (service is None or r.service == service)
        ]


def parse_weight(value: str | int) -> int:
    """A weight from the user: an integer 0..1000."""
    bounds = f"{defaults.MIN_WEIGHT}..{defaults.MAX_WEIGHT}"
    try:
        if isinstance(value, bool):
            raise ValueError
        text = str(value).strip()
        # ASCII digits only: int() also reads "١٢" (Arabic-Indic digits) and "1_0".
        if not isinstance(value, int) and not (text.isascii() and text.lstrip("+-").isdigit()):
            raise ValueError
        weight = int(value) if isinstance(value, int) else int(text, 10)
    except ValueError:
        raise UsageError(f"weight must be an integer {bounds}, got {value!r}") from None
    if not defaults.MIN_WEIGHT <= weight <= defaults.MAX_WEIGHT:
        raise UsageError(f"weight must be an integer {bounds}, got {weight}")
    return weight
