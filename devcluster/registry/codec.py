"""The on-disk form of a registry snapshot: pure text <-> data, no I/O.

The file is meant to be read (and, at a pinch, fixed) by a person, so it is
indented JSON with a stable key order and one instance per name, sorted::

    {
      "version": 1,
      "revision": 7,
      "instances": {
        "server1": {"name": "server1", "service": "server", ...}
      }
    }

:func:`loads` trusts nothing: every field is checked, and any problem is one
:class:`~devcluster.errors.CorruptRegistryError` naming the file and the field.

>>> snap = loads(dumps(Snapshot(3)), "registry.json")
>>> snap.revision, dict(snap.records)
(3, {})
"""

from __future__ import annotations

import json
import math
from os import PathLike
from types import MappingProxyType
from typing import Any

from devcluster import defaults
from devcluster.errors import CorruptRegistryError
from devcluster.registry.faults import Fault
from devcluster.registry.record import RECORD_FIELDS, Record, Snapshot, State

#: The schema version this module writes and the only one it reads.
FORMAT_VERSION = defaults.REGISTRY_FORMAT_VERSION

_TOP_KEYS = ("version", "revision", "instances")
#: Record fields a stored record may lack (they have a default).
_OPTIONAL = frozenset({"metadata", "fault"})
_STATE_VALUES = ", ".join(s.value for s in State)


class InvalidRecordError(ValueError):
    """A record (or a field of one) that does not fit the schema; the message says why."""


def dumps(snapshot: Snapshot) -> str:
    """The file text for ``snapshot``: indent 2, stable key order, trailing newline."""
    doc = {
        "version": FORMAT_VERSION,
        "revision": snapshot.revision,
        "instances": {name: snapshot.records[name].to_dict() for name in sorted(snapshot.records)},
    }
    # allow_nan=False: NaN/Infinity are not JSON, and other readers (jq, etcd tools) reject them.
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def loads(text: str | bytes, path_for_errors: str | PathLike[str]) -> Snapshot:
    """Parse and validate file text (bytes must be UTF-8); any defect -> CorruptRegistryError
    naming the file."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")  # strict: json.loads would also guess UTF-16/32
        doc = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        where = f"line {e.lineno} column {e.colno}"
        raise _corrupt(path_for_errors, f"not valid JSON ({e.msg} at {where})") from e
    except (ValueError, RecursionError) as e:  # bad UTF-8, NaN/Infinity, absurd ints or nesting
        raise _corrupt(path_for_errors, f"not valid JSON ({e})") from e
    try:
        return _snapshot_from_json(doc)
    except InvalidRecordError as e:
        raise _corrupt(path_for_errors, str(e)) from e


def record_from_json(key: str, obj: Any) -> Record:
    """Build a Record from its JSON object stored under ``key``; InvalidRecordError if bad."""
    where = f"instances.{key}"
    if not isinstance(obj, dict):
        raise InvalidRecordError(f"{where} must be an object, got {_kind(obj)}")
    # metadata and fault came later: a record written before them simply has none.
    missing = [f for f in RECORD_FIELDS if f not in obj and f not in _OPTIONAL]
    extra = sorted(set(obj) - set(RECORD_FIELDS))
    if missing:
        raise InvalidRecordError(f"{where} lacks field(s) {', '.join(missing)}")
    if extra:
        raise InvalidRecordError(f"{where} has unknown field(s) {', '.join(extra)}")
    for text_field in ("name", "service", "address"):
        if not isinstance(obj[text_field], str):
            raise InvalidRecordError(
                f"{where}.{text_field} must be a string, got {obj[text_field]!r}"
            )
    if obj["name"] != key:
        raise InvalidRecordError(f"{where}.name is {obj['name']!r}, must equal its key {key!r}")
    if not key:
        raise InvalidRecordError("an instance has an empty name")
    _check_count(obj["weight"], f"{where}.weight")
    _check_count(obj["restarts"], f"{where}.restarts")
    if not isinstance(obj["enabled"], bool):
        raise InvalidRecordError(f"{where}.enabled must be true or false, got {obj['enabled']!r}")
    try:
        state = State(obj["state"])
    except (ValueError, TypeError):
        raise InvalidRecordError(
            f"{where}.state is {obj['state']!r}, must be one of {_STATE_VALUES}"
        ) from None
    pid = obj["pid"]
    if pid is not None and (not _is_int(pid) or pid <= 0):
        raise InvalidRecordError(f"{where}.pid must be a positive integer or null, got {pid!r}")
    started_at = obj["started_at"]
    if started_at is not None:
        started_at = _number(started_at, f"{where}.started_at", nullable=True)
    return Record(
        name=key,
        service=obj["service"],
        address=obj["address"],
        weight=obj["weight"],
        enabled=obj["enabled"],
        state=state,
        pid=pid,
        restarts=obj["restarts"],
        started_at=started_at,
        updated_at=_number(obj["updated_at"], f"{where}.updated_at", nullable=False),
        metadata=_metadata(obj.get("metadata", {}), f"{where}.metadata"),
        fault=_fault(obj.get("fault"), f"{where}.fault"),
    )


def _fault(value: Any, where: str) -> Fault | None:
    if value is None:
        return None
    try:
        return Fault.from_dict(value)
    except ValueError as e:
        raise InvalidRecordError(f"{where} {e}") from None


def _metadata(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidRecordError(f"{where} must be an object of strings, got {_kind(value)}")
    for key, item in value.items():
        if not key or "=" in key or not isinstance(item, str):
            raise InvalidRecordError(f"{where}.{key} must be a string under a key without "
                                     f"'=', got {item!r}")
    return dict(value)


def check_record(record: Record) -> Record:
    """``record`` re-validated through the file schema, so a write can never produce a
    file that :func:`loads` rejects. Returns the normalised copy (floats, State)."""
    try:
        data = record.to_dict()
    except AttributeError:  # state given as a plain string that is not a State
        raise InvalidRecordError(
            f"instances.{record.name}.state is {record.state!r}, must be one of {_STATE_VALUES}"
        ) from None
    return record_from_json(record.name, data)


def _snapshot_from_json(doc: Any) -> Snapshot:
    if not isinstance(doc, dict):
        raise InvalidRecordError(f"top level must be an object, got {_kind(doc)}")
    missing = [k for k in _TOP_KEYS if k not in doc]
    extra = sorted(set(doc) - set(_TOP_KEYS))
    if missing:
        raise InvalidRecordError(f"lacks top-level key(s) {', '.join(missing)}")
    if extra:
        raise InvalidRecordError(f"has unknown top-level key(s) {', '.join(extra)}")
    if doc["version"] != FORMAT_VERSION or not _is_int(doc["version"]):
        raise InvalidRecordError(
            f"version is {doc['version']!r}; this devcluster reads version {FORMAT_VERSION}"
        )
    _check_count(doc["revision"], "revision")
    instances = doc["instances"]
    if not isinstance(instances, dict):
        raise InvalidRecordError(f"instances must be an object, got {_kind(instances)}")
    records = {key: record_from_json(key, instances[key]) for key in sorted(instances)}
    return Snapshot(doc["revision"], MappingProxyType(records))


def _is_int(value: Any) -> bool:
    # bool is an int subclass: `true` must not pass as weight 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_count(value: Any, where: str) -> None:
    if not _is_int(value) or value < 0:
        raise InvalidRecordError(f"{where} must be an integer >= 0, got {value!r}")


def _number(value: Any, where: str, *, nullable: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        allowed = "a number or null" if nullable else "a number"
        raise InvalidRecordError(f"{where} must be {allowed}, got {value!r}")
    return float(value)


def _reject_constant(name: str) -> Any:
    raise InvalidRecordError(f"{name} is not a valid JSON number")


def _kind(value: Any) -> str:
    names: dict[type, str] = {dict: "an object", list: "an array", str: "a string"}
    return names.get(type(value), repr(value))


def _corrupt(path: str | PathLike[str], what: str) -> CorruptRegistryError:
    return CorruptRegistryError(
        f"corrupt registry {path}: {what}; fix or delete the file "
        "(`devcluster up` moves a corrupt registry aside and starts fresh)"
    )
