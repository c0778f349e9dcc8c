"""What the fixture's channels record, from the calls they report (plain values)."""

from __future__ import annotations

from devcluster.client import CallInfo
from devcluster.events import EventKind
from devcluster.pytest_plugin.recording import CallRecorder, Timeline


def _call(seq: int, instance: str, ok: bool = True, code: str = "OK",
          retried: list[tuple[str, str]] | None = None) -> CallInfo:
    return CallInfo(seq, instance, "127.0.0.1:1", ok, code, 1.0, retried or [])


def test_a_failover_names_every_instance_tried_and_ejects_the_unreachable() -> None:
    timeline = Timeline()
    seen: list[CallInfo] = []
    rec = CallRecorder(timeline, then=seen.append)
    rec(_call(1, "s3", retried=[("s1", "UNAVAILABLE"), ("s2", "DEADLINE_EXCEEDED")]))
    said = [(e.kind, e.instance, e.code, e.new) for e in timeline.events()]
    assert said == [
        (EventKind.FAILOVER, "s1", "UNAVAILABLE", "s2"),
        (EventKind.EJECTED, "s1", None, None),
        (EventKind.FAILOVER, "s2", "DEADLINE_EXCEEDED", "s3"),
    ]
    assert len(seen) == 1  # the user's own on_call still gets every call
    assert rec.counts == {("s3", True): 1}


def test_timeouts_in_a_row_eject_and_an_answer_readmits() -> None:
    timeline = Timeline()
    rec = CallRecorder(timeline, eject_after=2)
    rec(_call(1, "s1", ok=False, code="DEADLINE_EXCEEDED"))
    assert timeline.events() == []
    rec(_call(2, "s1", ok=False, code="DEADLINE_EXCEEDED"))
    rec(_call(3, "s1", ok=False, code="DEADLINE_EXCEEDED"))  # ejected once, not twice
    rec(_call(4, "s1"))
    said = [(e.kind, e.detail) for e in timeline.events()]
    assert said == [(EventKind.EJECTED, "hung (2 calls in a row timed out)"),
                    (EventKind.READMITTED, "")]
    assert rec.counts == {("s1", False): 3, ("s1", True): 1}
