"""The daemon's settings and its ready report: one type each, a lossless round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType

import pytest

from devcluster.config.policy import Policy
from devcluster.config.project import Flags, Ready, TypeSettings
from devcluster.registry import State
from devcluster.schema import RUNNING_STATES
from devcluster.supervisor.request import ReadyReport, UpRequest, boot_view


def _full() -> UpRequest:
    api = TypeSettings(restart=Policy.ALWAYS, ready=Ready("log", "listening on"),
                       ready_timeout=7.5, grace=2.0, weight=3,
                       env=MappingProxyType({"A": "1"}), metadata=MappingProxyType({"z": "y"}),
                       depends_on=("db",), watch=("src",), preload=("json", "grpc"))
    return UpRequest(
        procfile=Path("/p/Procfile"), state_dir=Path("/p/.devcluster"),
        env_files=(Path("/p/.env"),), scale={"api": 3}, base_port=6000, grace=4.0,
        ready_timeout=12.0, restart={"api": Policy.NO}, ready_fd=7, registry="etcd://h:1/x",
        lock_fd=8, lifeline_fd=9, watch=(Path("/p/src"),), console=True, console_port=8081,
        config=Path("/p/devcluster.toml"), types={"api": api, "db": TypeSettings()},
        waves=(("db",), ("api",)),
        flags=Flags(port=6000, grace=4.0, ready_timeout=None, registry="etcd://h:1/x",
                    scale={"api": 3}, restart={"api": Policy.NO}))


def test_a_request_survives_its_json_round_trip() -> None:
    request = _full()
    again = UpRequest.from_json(request.to_json())
    assert again == request
    assert again.to_json() == request.to_json()


def test_every_field_is_in_the_json() -> None:
    """A field added to the class but not to to_json would be lost on the way."""
    import json

    written = set(json.loads(_full().to_json()))
    assert written == {f.name for f in dataclasses.fields(UpRequest)}


def test_the_defaults_round_trip_too() -> None:
    request = UpRequest(procfile=Path("Procfile"), state_dir=Path(".devcluster"))
    assert UpRequest.from_json(request.to_json()) == request
    assert request.watch is None and request.config is None and request.waves == ()


def test_a_request_is_frozen_and_copies_what_it_is_given() -> None:
    scale = {"api": 2}
    request = UpRequest(procfile=Path("P"), state_dir=Path("S"), scale=scale,
                        env_files=[Path("e")], waves=[["a"], ["b"]])  # type: ignore[arg-type]
    scale["api"] = 5
    assert request.scale == {"api": 2}
    assert request.env_files == (Path("e"),) and request.waves == (("a",), ("b",))
    with pytest.raises(TypeError):
        request.scale["api"] = 3  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.grace = 1.0  # type: ignore[misc]


def test_the_boot_reader_reads_the_same_fields() -> None:
    request = _full()
    view = boot_view(request.to_json())
    assert (view.procfile, view.state_dir, view.env_files) == (
        request.procfile, request.state_dir, request.env_files)
    assert view.scale == request.scale and view.base_port == request.base_port
    assert view.registry == request.registry and view.depends
    assert set(view.preloaded) == {"api"}
    api = view.preloaded["api"]
    assert (api.preload, dict(api.env), api.grace) == (("json", "grpc"), {"A": "1"}, 2.0)


def test_the_boot_reader_sees_no_dependency_when_there_is_none() -> None:
    request = UpRequest(procfile=Path("P"), state_dir=Path("S"), types={"a": TypeSettings()})
    view = boot_view(request.to_json())
    assert not view.depends and view.preloaded == {}


def test_preboot_and_the_registry_agree_on_which_records_may_have_a_process() -> None:
    """backoff has no process (it waits between runs): a crashed run's record in
    backoff leaves nothing to kill, so it does not stop instances starting ahead."""
    assert {s.value for s in State if s.running} == RUNNING_STATES
    assert State.BACKOFF.value not in RUNNING_STATES


def test_a_ready_report_round_trips() -> None:
    report = ReadyReport(instances={"a.1": {"name": "a.1", "state": "serving", "pid": 4}},
                         notes=("cleaned stale state",), stopped_by=None)
    assert ReadyReport.from_json(report.to_json()) == report
    stopped = ReadyReport(stopped_by="SIGTERM")
    assert ReadyReport.from_json(stopped.to_json()).stopped_by == "SIGTERM"


def test_an_error_report_carries_only_the_error() -> None:
    report = ReadyReport(error={"type": "UsageError", "message": "bad", "exit_code": 2})
    again = ReadyReport.from_json(report.to_json())
    assert again == report and again.instances == {}
    assert "\n" not in report.to_json()  # one line on the pipe
