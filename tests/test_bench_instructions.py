"""Scenario 20's arithmetic: instructions per call from two counted runs, and its verdict."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench.instructions import by_function, per_call, rows


def _raw(ours: float | None, native: float | None) -> dict[str, object]:
    return {"counter": "callgrind", "calls": [200, 1200], "rounds": 2,
            "ours": {"median": ours, "profile": {"objects": {"libpython3.11.so.1.0": 150_000.0,
                                                             "cygrpc.so": 90_000.0}}},
            "native": {"median": native, "profile": {"objects": {"libpython3.11.so.1.0": 100_000.0}}}}


def test_a_client_dearer_than_native_by_more_than_5_percent_misses_the_goal() -> None:
    first, *split = rows(_raw(297_800.0, 256_300.0))
    assert (first.devcluster, first.anchor, first.ratio) == ("297,800", "256,300", "1.16x")
    assert first.goal == "<= 1.05x" and first.met == "NO (1.162x)"
    assert [r.what for r in split] == ["of which in `libpython3.11.so.1.0`", "of which in `cygrpc.so`"]
    assert split[0].ratio == "1.50x" and split[1].anchor == "0"
    assert rows(_raw(260_000.0, 256_300.0))[0].met == "yes"
    assert rows(_raw(None, None))[0].met == "-"  # --quick: nothing counted


def test_bytecodes_per_call_get_a_row_and_the_extra_functions_a_note() -> None:
    from bench.instructions import notes

    raw = {**_raw(297_800.0, 256_300.0),
           "bytecodes": {"per_call": {"ours": 1493.0, "native": 1073.0},
                         "ours_extra": [["sync_calls.py:UnaryUnary._invoke", 102.0]]}}
    last = rows(raw)[-1]
    assert last.what.startswith("Python bytecodes per call") and last.ratio == "1.39x"
    assert "`sync_calls.py:UnaryUnary._invoke` +102." in notes(raw)[-1]


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_per_call_takes_the_difference_of_two_real_callgrind_runs(tmp_path: Path) -> None:
    files = {}
    for n in (1, 3):
        files[n] = tmp_path / f"cg.{n}.out"
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={files[n]}",
                        "sh", "-c", "true; " * n], check=True, capture_output=True, timeout=60)
    small, big = by_function(files[1]), by_function(files[3])
    total = int(next(line for line in files[3].read_text().splitlines()
                     if line.startswith(("summary:", "totals:"))).split()[1])
    assert sum(big.values()) == total  # every instruction lands in some (object, function)
    assert all(isinstance(obj, str) and obj for obj, _ in big)
    diff = per_call(small, big, 2)
    assert sum(diff.values()) == pytest.approx((sum(big.values()) - sum(small.values())) / 2)


def test_the_aio_pair_gets_its_row_beside_the_sync_one() -> None:
    from bench.instructions import notes

    raw = {**_raw(284_000.0, 252_000.0),
           "ours_aio": {"median": 330_000.0, "profile": {"objects": {"cygrpc.so": 1.0}}},
           "native_aio": {"median": 300_000.0, "profile": {"objects": {}}},
           "bytecodes": {"per_call": {"ours": 1493.0, "native": 1073.0,
                                      "ours_aio": 2000.0, "native_aio": 1600.0},
                         "ours_aio_extra": [["aio_calls.py:AioBalancedCall._run", 40.0]]}}
    out = rows(raw)
    sync, aio = out[0], out[1]
    assert sync.what.startswith("sequential SayHello, BalancedChannel")
    assert aio.what.startswith("sequential awaited SayHello (grpc.aio), AioBalancedChannel")
    assert (aio.devcluster, aio.anchor, aio.ratio, aio.met) == ("330,000", "300,000", "1.10x",
                                                                "NO (1.100x)")
    assert [r.what for r in out if r.what.endswith("(aio)")] == ["of which in `cygrpc.so` (aio)"]
    assert out[-1].what.startswith("Python bytecodes per call, the event loop's thread (aio)")
    assert out[-1].ratio == "1.25x"
    assert "AioBalancedChannel's calling thread" in notes(raw)[-1]
    # --quick: both pairs run, nothing counted
    quick = {"counter": "none", "calls": [1, 3], "rounds": 1,
             **{side: {"median": None} for side in ("ours", "native", "ours_aio", "native_aio")}}
    assert [r.met for r in rows(quick)] == ["-", "-"]


def test_the_calling_thread_gets_its_row_when_callgrind_split_the_threads() -> None:
    raw = _raw(284_000.0, 252_000.0)
    raw["ours"]["profile"]["main"] = 224_000.0  # type: ignore[index]
    raw["native"]["profile"]["main"] = 205_000.0  # type: ignore[index]
    row = rows(raw)[1]
    assert row.what.startswith("of which the calling thread")
    assert (row.devcluster, row.anchor, row.ratio, row.goal) == ("224,000", "205,000", "1.09x", "-")
