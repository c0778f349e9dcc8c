"""The benchmarks still run: ``python -m bench --quick`` end to end, plus their arithmetic.

The quick run uses tiny sizes (its figures mean nothing) and writes into the test's
own directory, never over the committed ``bench/results.*``. Every process it starts
carries a marker in its environment, so the test can prove none is left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from bench.failover import analyse
from bench.report import SCENARIOS
from bench.weights import share_stats

ROOT = Path(__file__).resolve().parent.parent
MARKER = "DEVCLUSTER_BENCH_SMOKE"


def _marked(tag: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        if proc.info["pid"] == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if proc.environ().get(MARKER) == tag:
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.timeout(330)
def test_quick_bench_runs_every_scenario(tmp_path: Path) -> None:
    committed = {p: p.stat().st_mtime_ns for p in (ROOT / "bench").glob("results.*")}
    tag = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != "DEVCLUSTER_HOME"}
    env.update({MARKER: tag, "NO_COLOR": "1"})
    out = tmp_path / "out"
    began = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
    finally:
        deadline = time.monotonic() + 5
        left = _marked(tag)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = _marked(tag)
        for p in left:
            p.kill()
    took = time.monotonic() - began
    assert not left, f"processes left behind: {[' '.join(p.cmdline()) for p in left]}"
    assert proc.returncode == 0, proc.stderr[-4000:]

    data = json.loads((out / "results.json").read_text())
    assert data["errors"] == {}
    assert data["meta"]["quick"] is True
    assert set(data["raw"]) == {"supervisor", "client", "failover", "weights", "commands",
                                "pause", "reload", "waterfall", "log_flood", "xds",
                                "instructions"}
    for number in SCENARIOS:
        assert data["scenarios"][number]["rows"], f"scenario {number} has no figures"
    md = (out / "results.md").read_text()
    assert "| scenario | devcluster | anchor | ratio | goal | met? |" in md
    for number, title in SCENARIOS.items():
        assert f"| {number}. {title}: " in md
    for fact in ("CPUs:", "GiB RAM", "grpcio", "python -m bench --quick"):
        assert fact in md
    # The committed results are the lead's full run: a smoke run never touches them.
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "bench").glob("results.*")} == committed
    print(f"python -m bench --quick took {took:.0f} s")


def test_share_stats_counts_errors_and_runs() -> None:
    served = list("aabacaa" * 10)
    s = share_stats(served, {"a": 5, "b": 1, "c": 1})
    assert s["max_error_pp"] == pytest.approx(0.0, abs=1e-9)
    assert s["longest_run"] == 4  # "...caa" + "aab..." at the period's seam
    s = share_stats(["a", "a", "a", "b"], {"a": 1, "b": 1})
    assert s["max_error_pp"] == pytest.approx(25.0)
    assert s["longest_run_by_instance"] == {"a": 3, "b": 1}


def test_analyse_counts_failures_and_steady_state() -> None:
    calls = [
        (0.0, 0.1, "x", "OK", ()),
        (1.0, 1.1, None, "UNAVAILABLE", ()),  # failed, after the action at 0.9
        (1.1, 1.3, "y", "OK", ("x",)),  # failed over from x: touched it
        (1.3, 1.4, "y", "OK", ()),
        (2.0, 2.1, "x", "OK", ()),  # after the restore at 1.9: back, not unsteady
    ]
    row = analyse(calls, "x", t_act=0.9, t_restore=1.9, t_end=3.0)
    assert row["failed"] == 1
    assert row["retried_attempts"] == 1
    assert row["steady_s"] == pytest.approx(1.3 - 0.9)
    assert row["calls"] == 4


def test_a_full_run_rewrites_only_the_readme_block(tmp_path: Path) -> None:
    """docs/performance.md's table is written by the bench, between its markers, and
    nothing else of the page changes."""
    from bench.report import README_END, README_START, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{README_START}\nold table\n{README_END}\nafter\n")
    results = {"meta": {"machine": {"nproc": 2, "cpu_model": "cpu", "ram_gib": 1, "python": "3",
                                    "grpcio": "1", "honcho": "2", "devcluster_commit": "abc1234",
                                    "loadavg_at_start": [0.1], "date": "today"}},
               "raw": {"commands": {"anchors": {"honcho --version": {"cpu_s": 0.07, "wall_s": 0.1},
                                                "python -c pass": {"cpu_s": 0.02, "wall_s": 0.03}},
                                    "commands": {"ps": {"cpu_s": 0.12, "wall_s": 0.15}}}}}
    assert update_readme(results, readme)
    text = readme.read_text()
    assert "old table" not in text and "`devcluster ps` as a command" in text
    assert "abc1234" in text
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{README_END}\nafter\n")


def test_a_merge_replaces_only_its_own_rows_and_notes(tmp_path: Path) -> None:
    """`python -m bench --only xds --merge`: the xds rows and notes go into the committed
    results.md and README's table; every other row stays as it was measured, and a second
    merge replaces the first instead of adding to it."""
    from bench.report import README_END, README_START, SCENARIOS, merge

    old_row = "| 7. Weight accuracy: max share error at 5:1:1, 10,000 calls | 0.006 pp | x | - | y | yes |"
    stale = "| 13. xDS weight propagation: stale | 9 ms | - | - | - | - |"
    (tmp_path / "results.md").write_text(
        f"# b\n\n| scenario | devcluster | anchor | ratio | goal | met? |\n| --- |\n{old_row}\n"
        f"{stale}\n\n## Notes\n\n- 7: the anchor.\n- 13: stale note.\n\n## Other\n")
    (tmp_path / "results.json").write_text(json.dumps(
        {"meta": {}, "raw": {"weights": {"kept": 1}}, "errors": {"xds": "old"},
         "table": [{"scenario": "7", "what": "kept"}, {"scenario": "13", "what": "stale"}]}))
    readme = tmp_path / "README.md"
    readme.write_text(f"x\n{README_START}\n| s |\n| --- |\n{old_row}\n{stale}\n\nMachine: m.\n"
                      f"{README_END}\nafter\n")
    machine = {"nproc": 2, "cpu_model": "cpu", "ram_gib": 1, "python": "3", "grpcio": "1",
               "honcho": "2", "devcluster_commit": "abc1234", "loadavg_at_start": [0.1],
               "date": "today"}
    faults = {"asked": {"abort_pct": 10.0, "delay_pct": 20.0, "delay_s": 0.05,
                        "fault": ["50ms:20", "UNAVAILABLE:10"]},
              "xds": {"calls": 2000, "abort_pct": 10.5, "delay_pct": 25.0, "codes": {},
                      "slow_without_fault_pct": 0.0}}
    results = {"meta": {"machine": machine, "command": "python -m bench --only xds --merge",
                        "duration_s": 170}, "raw": {"xds": {"faults": faults}}, "errors": {}}
    for _ in range(2):
        merge(results, tmp_path, readme)
    md = (tmp_path / "results.md").read_text()
    assert old_row in md and "- 7: the anchor." in md and "stale" not in md
    assert md.count(f"| 19. {SCENARIOS['19']}: ") == 1
    assert md.count("- 19: ") == 1 and md.count("**Missed:** scenario 19,") == 1
    assert md.count("- 13-19: measured apart from the rest") == 1 and "## Other" in md
    assert md.index(old_row) < md.index("| 19. ")
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["raw"] == {"weights": {"kept": 1}, "xds": {"faults": faults}}
    assert data["errors"] == {}
    assert [r["scenario"] for r in data["table"]] == ["7", "19"]
    text = readme.read_text()
    assert text.startswith("x\n") and text.endswith(f"{README_END}\nafter\n")
    assert old_row in text and "stale" not in text and text.count("| 19. ") == 1
    assert text.count("13-19: measured apart from the rest") == 1
