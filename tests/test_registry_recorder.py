"""The supervisor's registry writer (devcluster.supervisor.recorder): order, merging, failures."""

from __future__ import annotations

from pathlib import Path

from devcluster.registry import FileRegistry, Record
from devcluster.supervisor.recorder import Recorder


def _records(n: int) -> list[Record]:
    return [Record(f"greeter.{i}", "greeter", f"127.0.0.1:{5000 + i}") for i in range(1, n + 1)]


def test_writes_apply_in_order_and_queued_updates_merge(tmp_path: Path) -> None:
    reg = FileRegistry(tmp_path)
    errors: list[str] = []
    rec = Recorder(reg, errors.append)
    rec.reset(_records(3)).result(5)
    before = reg.snapshot().revision
    futures = [rec.update(f"greeter.{i % 3 + 1}", restarts=i) for i in range(30)]
    rec.deregister("greeter.3")
    rec.update("greeter.3", restarts=99)  # removed meanwhile: skipped, not an error
    rec.flush().result(5)
    assert all(f.done() and f.exception() is None for f in futures)
    snap = reg.snapshot()
    assert sorted(snap.records) == ["greeter.1", "greeter.2"]
    assert snap.records["greeter.1"].restarts == 27 and snap.records["greeter.2"].restarts == 28
    assert snap.revision - before < 30  # merged: fewer writes than updates
    assert errors == []
    assert rec.close(5)


def test_a_failed_write_is_reported_and_the_writer_goes_on(tmp_path: Path) -> None:
    reg = FileRegistry(tmp_path)
    errors: list[str] = []
    rec = Recorder(reg, errors.append)
    rec.reset(_records(1)).result(5)
    kept = tmp_path / "kept.json"
    reg.path.rename(kept)
    reg.path.mkdir()  # registry.json is a directory now: every write fails
    failed = rec.update("greeter.1", restarts=1)
    assert failed.exception(5) is not None
    assert errors and errors[0].startswith("registry write failed: cannot read registry")
    reg.path.rmdir()
    kept.rename(reg.path)
    rec.update("greeter.1", restarts=2).result(5)
    assert reg.snapshot().records["greeter.1"].restarts == 2
    assert rec.close(5)


def test_a_write_resolves_to_the_revision_it_made(tmp_path: Path) -> None:
    """What a drain asks the watchers to have applied (devcluster.supervisor.drain)."""
    reg = FileRegistry(tmp_path)
    rec = Recorder(reg, [].append)
    assert rec.reset(_records(2)).result(5) == reg.snapshot().revision
    drained = rec.update("greeter.1", state="draining").result(5)
    assert drained == reg.snapshot().revision == rec.revision
    assert reg.snapshot().records["greeter.1"].state.value == "draining"
    assert rec.register(Record("greeter.9", "greeter", "127.0.0.1:5009")).result(5) is None
    assert rec.flush().result(5) is None
    assert rec.close(5)
