"""What a write may change and how a changed record is checked, for every backend.

The file and the etcd backends apply the same rules, so a value one accepts the other
accepts too; both import them from here (neither reaches into the other's privates).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from devcluster import defaults
from devcluster.errors import UsageError
from devcluster.registry import codec
from devcluster.registry.record import RECORD_FIELDS, Record, State

__all__ = ["UPDATABLE", "check_updatable", "checked", "checked_all"]

#: Fields ``update``/``modify`` may change (the name is the key; ``updated_at`` is ours).
UPDATABLE = frozenset(RECORD_FIELDS) - {"name", "updated_at"}
_STATES = ", ".join(s.value for s in State)


def check_updatable(name: str, fields: Iterable[str]) -> None:
    """TypeError (a programming mistake, not user input) for a field no write may change."""
    bad = sorted(set(fields) - UPDATABLE)
    if bad:
        raise TypeError(f"cannot update field(s) {', '.join(bad)} of {name!r}; "
                        f"updatable: {', '.join(sorted(UPDATABLE))}")


def checked(record: Record, **changes: Any) -> Record:
    """``record`` with ``changes``, validated so no write can produce a record we reject."""
    weight = changes.get("weight", record.weight)
    if isinstance(weight, bool) or not isinstance(weight, int) \
            or not defaults.MIN_WEIGHT <= weight <= defaults.MAX_WEIGHT:
        raise UsageError(f"weight must be an integer {defaults.MIN_WEIGHT}..{defaults.MAX_WEIGHT}, "
                         f"got {weight!r}")
    state = changes.pop("state", record.state)
    try:
        changed = record.with_(state=state, **changes)
    except ValueError:
        msg = f"state of {record.name!r} must be one of {_STATES}, got {state!r}"
        raise UsageError(msg) from None
    try:
        return codec.check_record(changed)
    except codec.InvalidRecordError as e:
        raise UsageError(f"cannot store instance {record.name!r}: {e}") from e


def checked_all(changes: Mapping[str, Mapping[str, Any]], current: Mapping[str, Record],
                now: float) -> dict[str, Record]:
    """Every record ``changes`` names, changed and checked (nothing is written if one is bad)."""
    new: dict[str, Record] = {}
    for name, fields in changes.items():
        check_updatable(name, fields)
        new[name] = checked(current[name], **fields, updated_at=now)
    return new
