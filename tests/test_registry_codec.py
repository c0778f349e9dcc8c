"""The registry file format: round trips, and a precise error for every defect."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devcluster.errors import CorruptRegistryError
from devcluster.registry.codec import dumps, loads
from devcluster.registry.record import RECORD_FIELDS, Record, Snapshot, State

PATH = "/state/registry.json"


def snapshot_of(*records: Record, revision: int = 1) -> Snapshot:
    return Snapshot(revision, MappingProxyType({r.name: r for r in records}))


SERVER1 = Record(
    "server1", "server", "127.0.0.1:5000", weight=3, enabled=True, state=State.SERVING,
    pid=4242, restarts=2, started_at=1700000000.25, updated_at=1700000001.5,
)
SERVER2 = Record("server2", "server", "127.0.0.1:5001", updated_at=1700000002.0)


def test_round_trip_keeps_every_field() -> None:
    snap = snapshot_of(SERVER1, SERVER2, revision=7)
    assert loads(dumps(snap), PATH) == snap


def test_dumps_is_readable_and_stable() -> None:
    text = dumps(snapshot_of(SERVER2, SERVER1, revision=7))
    assert text.endswith("}\n")
    doc = json.loads(text)
    assert list(doc) == ["version", "revision", "instances"]
    assert list(doc["instances"]) == ["server1", "server2"]  # sorted, whatever the input order
    assert list(doc["instances"]["server1"]) == list(RECORD_FIELDS)
    assert '\n  "revision": 7,\n' in text  # indent 2
    assert dumps(snapshot_of(SERVER1, SERVER2, revision=7)) == text


def test_loads_accepts_utf8_bytes_and_int_timestamps() -> None:
    doc = json.loads(dumps(snapshot_of(SERVER1)))
    doc["instances"]["server1"]["updated_at"] = 1700000001
    snap = loads(json.dumps(doc).encode(), PATH)
    assert snap.records["server1"].updated_at == 1700000001.0
    assert isinstance(snap.records["server1"].updated_at, float)


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
finite = st.floats(allow_nan=False, allow_infinity=False)
records = st.builds(
    Record,
    name=names,
    service=st.text(max_size=8),
    address=st.text(max_size=20),
    weight=st.integers(0, 10**6),
    enabled=st.booleans(),
    state=st.sampled_from(list(State)),
    pid=st.none() | st.integers(1, 2**31),
    restarts=st.integers(0, 10**9),
    started_at=st.none() | finite,
    updated_at=finite,
)


@given(st.lists(records, max_size=6, unique_by=lambda r: r.name), st.integers(0, 2**53))
def test_round_trip_property(recs: list[Record], revision: int) -> None:
    snap = snapshot_of(*recs, revision=revision)
    back = loads(dumps(snap), PATH)
    assert back == snap
    assert list(back.records) == sorted(r.name for r in recs)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def mutate(doc: dict[str, Any]) -> None:
        node = doc
        for key in parents:
            node = node[key]
        node[last] = value

    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def mutate(doc: dict[str, Any]) -> None:
        node = doc
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


R = "instances.server1"
VIOLATIONS = {
    "version 2": (_set("version", 2), "version is 2"),
    "version bool": (_set("version", True), "version is True"),
    "no revision": (_drop("revision"), "lacks top-level key(s) revision"),
    "extra top key": (_set("extra", 1), "unknown top-level key(s) extra"),
    "negative revision": (_set("revision", -1), "revision must be an integer >= 0"),
    "float revision": (_set("revision", 1.5), "revision must be an integer >= 0"),
    "instances list": (_set("instances", []), "instances must be an object"),
    "record not object": (_set(R, "x"), f"{R} must be an object"),
    "missing field": (_drop(f"{R}.pid"), f"{R} lacks field(s) pid"),
    "extra field": (_set(f"{R}.colour", "red"), f"{R} has unknown field(s) colour"),
    "name mismatch": (_set(f"{R}.name", "server9"), "must equal its key 'server1'"),
    "service not str": (_set(f"{R}.service", 5), f"{R}.service must be a string"),
    "address null": (_set(f"{R}.address", None), f"{R}.address must be a string"),
    "weight negative": (_set(f"{R}.weight", -1), f"{R}.weight must be an integer >= 0"),
    "weight bool": (_set(f"{R}.weight", True), f"{R}.weight must be an integer >= 0, got True"),
    "weight float": (_set(f"{R}.weight", 1.0), f"{R}.weight must be an integer >= 0"),
    "weight str": (_set(f"{R}.weight", "3"), f"{R}.weight must be an integer >= 0"),
    "enabled int": (_set(f"{R}.enabled", 1), f"{R}.enabled must be true or false"),
    "bad state": (_set(f"{R}.state", "zombie"), f"{R}.state is 'zombie', must be one of"),
    "state null": (_set(f"{R}.state", None), f"{R}.state is None"),
    "pid str": (_set(f"{R}.pid", "42"), f"{R}.pid must be a positive integer or null"),
    "pid zero": (_set(f"{R}.pid", 0), f"{R}.pid must be a positive integer or null"),
    "pid bool": (_set(f"{R}.pid", True), f"{R}.pid must be a positive integer or null"),
    "restarts negative": (_set(f"{R}.restarts", -2), f"{R}.restarts must be an integer >= 0"),
    "started_at str": (_set(f"{R}.started_at", "now"), f"{R}.started_at must be a number or null"),
    "updated_at null": (_set(f"{R}.updated_at", None), f"{R}.updated_at must be a number"),
    "updated_at bool": (_set(f"{R}.updated_at", False), f"{R}.updated_at must be a number"),
}


@pytest.mark.parametrize("mutate, fragment", VIOLATIONS.values(), ids=VIOLATIONS.keys())
def test_each_schema_violation_names_file_and_field(
    mutate: Callable[[dict[str, Any]], None], fragment: str
) -> None:
    doc = copy.deepcopy(json.loads(dumps(snapshot_of(SERVER1))))
    mutate(doc)
    with pytest.raises(CorruptRegistryError) as info:
        loads(json.dumps(doc), PATH)
    message = str(info.value)
    assert message.startswith(f"corrupt registry {PATH}: ")
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "not valid JSON (Expecting value at line 1 column 1)"),
        ('{"version": 1,', "not valid JSON"),
        ("[]", "top level must be an object, got an array"),
        ('{"version": 1, "revision": NaN, "instances": {}}', "NaN is not a valid JSON number"),
        (b'{"version": 1, "revision": 0, "instances": {"\xff": 1}}', "not valid JSON"),
    ],
    ids=["empty", "truncated", "array", "nan", "bad-utf8"],
)
def test_unparsable_text_names_file(text: str | bytes, fragment: str) -> None:
    with pytest.raises(CorruptRegistryError, match=PATH) as info:
        loads(text, PATH)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_dumps_refuses_nan() -> None:
    with pytest.raises(ValueError):
        dumps(snapshot_of(SERVER1.with_(started_at=float("nan"))))
