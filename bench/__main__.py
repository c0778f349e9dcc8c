"""Every benchmark of issue 7, each beside its anchor, in one run.

``python -m bench [--quick] [--out DIR] [--only GROUPS]``

Groups, in the order they run (each is also a command of its own):

* ``supervisor`` (scenarios 1, 2, 8): ``bench.supervisor`` vs honcho;
* ``waterfall`` (issue 21): ``bench.waterfall``: where the time of ``up -d`` goes;
* ``client`` (3, 4): ``bench.client_throughput`` vs grpc's round_robin;
* ``failover`` (5): ``bench.failover`` vs grpc's round_robin;
* ``weights`` (6, 7): ``bench.weights`` (anchor for 7: round_robin over repeated addresses);
* ``commands`` (9): ``bench.commands``: every everyday command vs ``honcho --version``;
* ``pause`` (10): ``bench.pause``: a 10 s freeze, sequential and 8 in flight, vs round_robin.

A full run (every group, full sizes) also rewrites the table of docs/performance.md from
its results, and README's Performance table (the rows with a goal), so both always quote
the latest full run of the commit they name.
* ``reload`` (11): ``bench.reload`` vs ``restart`` and honcho's way (stop all, start again).
* ``log_flood`` (12): ``bench.log_flood``: the supervisor's CPU while an instance floods
  its output, vs honcho's.
* ``xds`` (13-19, issue 27): ``bench.xds``: a plain grpcio client on ``xds:///greeter``
  beside the balanced client and native round_robin: weight propagation, shares, failed
  calls, rejoin, the supervisor's cost with xDS clients and with health checks, faults.
* ``instructions`` (20, issue 28): ``bench.instructions``: CPU instructions per call of the
  balanced client vs native round_robin (``perf``, or callgrind where perf cannot count);
  its ``--quick`` form only runs both clients, uncounted.

``--only GROUPS --merge`` measures some groups again and merges their rows into the
committed ``bench/results.*`` and docs/performance.md's table (the other rows stay as measured).

Writes ``results.json`` (every raw figure) and ``results.md`` (the table, the machine,
the command, notes) into ``--out`` (default: ``bench/`` for the full run, a new
temporary directory for ``--quick``/``--only``). The full run is sized to
finish in under 10 minutes on 2 cores; ``--quick`` uses tiny sizes (well under a
minute) to prove that everything works: its figures are not worth quoting.
Loopback only; every process it starts is gone when it returns.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import report

HERE = Path(__file__).resolve().parent
GROUPS = ("supervisor", "waterfall", "client", "failover", "weights", "commands", "pause",
          "reload", "log_flood", "xds", "instructions")


@dataclass(frozen=True)
class Sizes:
    """How much each group measures."""

    sizes: tuple[int, ...] = (3, 10, 30, 100)  # supervisor: instances per run
    runs: int = 2  # supervisor: plain runs per size and tool (plus one with the idle window)
    idle_s: float = 10.0  # supervisor: idle CPU window
    client_s: float = 5.0  # client: measuring seconds per side and mode
    client_rounds: int = 4
    view_writes: int = 200  # client: registry writes timed to the picker
    client_scale: tuple[int, ...] = (3, 100)  # client: instances compared (last vs first)
    failover_runs: int = 10  # per action
    hold_s: float = 3.0  # pause length
    observe_s: float = 1.0  # kill/stop -> start
    back_timeout_s: float = 6.0
    changes: int = 50  # weight changes (scenario 6)
    calls: int = 10_000  # calls per weight config (scenario 7)
    command_runs: int = 10  # runs of each command (scenario 9)
    pause_runs: int = 2  # scenario 10
    pause_hold_s: float = 10.0
    reload_runs: int = 10  # scenario 11: runs of reload vs restart vs down+up
    waterfall_sizes: tuple[int, ...] = (3, 30)  # traced `up -d` runs, per size
    waterfall_runs: int = 3
    flood_mb: int = 50  # scenario 12: megabytes of output per flood
    flood_runs: int = 3
    xds_quick: bool = False  # scenarios 13-19: bench.xds.QUICK instead of its full sizes
    instr_calls: tuple[int, int] = (200, 1200)  # scenario 20: calls of the two counted runs
    instr_rounds: int = 2
    instr_count: bool = True  # False: run both clients, count nothing (no valgrind in --quick)


FULL = Sizes()
QUICK = Sizes(sizes=(3,), runs=1, idle_s=1.0, client_s=0.4, client_rounds=1, view_writes=20,
              client_scale=(3, 10),
              failover_runs=1, hold_s=2.5, observe_s=0.5, back_timeout_s=3.0, changes=10,
              calls=500, command_runs=2,
              pause_runs=1, pause_hold_s=2.0, reload_runs=1, waterfall_sizes=(3,),
              waterfall_runs=1, flood_mb=2, flood_runs=1, xds_quick=True,
              instr_calls=(1, 3), instr_rounds=1, instr_count=False)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_group(group: str, sz: Sizes) -> Any:
    """Measure one group with ``sz``; its raw, JSON-ready figures."""
    if group == "supervisor":
        from bench import supervisor

        return supervisor.measure(list(sz.sizes), sz.runs, sz.idle_s, log=_log)
    if group == "waterfall":
        from bench import waterfall

        return waterfall.measure(list(sz.waterfall_sizes), sz.waterfall_runs)
    if group == "client":
        from bench import client_throughput

        return client_throughput.measure(sz.client_s, sz.client_rounds, sz.view_writes,
                                         sz.client_scale)
    if group == "failover":
        from bench import failover

        return failover.measure(sz.failover_runs, sz.hold_s, sz.observe_s, sz.back_timeout_s,
                                progress=_log)
    if group == "weights":
        from bench import weights

        return weights.measure(sz.changes, sz.calls)
    if group == "commands":
        from bench import commands

        return commands.measure(sz.command_runs)
    if group == "pause":
        from bench import pause

        return pause.measure(sz.pause_runs, sz.pause_hold_s)
    if group == "reload":
        from bench import reload

        return reload.measure(sz.reload_runs, progress=_log)
    if group == "log_flood":
        from bench import log_flood

        return log_flood.measure(sz.flood_mb, sz.flood_runs)
    if group == "xds":
        from bench import xds

        return xds.measure(xds.QUICK if sz.xds_quick else xds.XdsSizes(), progress=_log)
    if group == "instructions":
        from bench import instructions

        return instructions.measure(sz.instr_calls, sz.instr_rounds,
                                    None if sz.instr_count else "none")
    raise ValueError(f"unknown group {group!r}; choose from {', '.join(GROUPS)}")


def run(groups: list[str], sz: Sizes, command: str, quick: bool,
        measure: Callable[[str, Sizes], Any] = run_group) -> dict[str, Any]:
    """Run ``groups`` in order; a group that fails is recorded and the others still run."""
    began = time.monotonic()
    results: dict[str, Any] = {
        "meta": {"machine": report.machine(), "command": command, "quick": quick,
                 "sizes": asdict(sz), "seconds": {}},
        "raw": {},
        "errors": {},
    }
    for group in groups:
        _log(f"== {group} ==")
        t0 = time.monotonic()
        try:
            results["raw"][group] = measure(group, sz)
        except Exception:
            results["errors"][group] = traceback.format_exc()
            _log(results["errors"][group])
        results["meta"]["seconds"][group] = time.monotonic() - t0
    results["meta"]["duration_s"] = time.monotonic() - began
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: a smoke test of every scenario (< 60 s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for results.json and results.md (default: bench/ for "
                             "a full run; a new temporary directory with --quick or --only, so "
                             "the committed results are never overwritten by partial ones)")
    parser.add_argument("--only", default=",".join(GROUPS),
                        help=f"comma-separated groups to run (default: {','.join(GROUPS)})")
    parser.add_argument("--merge", action="store_true",
                        help="with --only: merge the groups' rows into the committed "
                             "bench/results.* and docs/performance.md's table instead of a new directory")
    args = parser.parse_args(argv)
    groups = [g for g in args.only.split(",") if g]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    if args.merge and (args.quick or groups == list(GROUPS) or args.out is not None):
        parser.error("--merge takes --only GROUPS, and neither --quick nor --out")
    command = "python -m bench" + (" --quick" if args.quick else "")
    if groups != list(GROUPS):
        command += f" --only {','.join(groups)}"
    if args.merge:
        results = run(groups, FULL, command + " --merge", False)
        if results["errors"]:
            _log("not merged: a group failed (see above)")
            return 1
        js, md = report.merge(results, HERE, HERE.parent / "docs" / "performance.md",
                              HERE.parent / "README.md")
        _log(f"merged {', '.join(groups)} into {js}, {md}, docs/performance.md and README.md")
        return 0
    out = args.out
    if out is None:
        partial = args.quick or groups != list(GROUPS)
        out = Path(tempfile.mkdtemp(prefix="devcluster-bench-results-")) if partial else HERE
    results = run(groups, QUICK if args.quick else FULL, command, args.quick)
    js, md = report.write(results, out)
    if out == HERE and not results["errors"]:
        report.update_readme(results, HERE.parent / "docs" / "performance.md")
        report.update_readme(results, HERE.parent / "README.md", goals_only=True)
    print(md.read_text())
    _log(f"wrote {js} and {md} in {results['meta']['duration_s']:.0f} s")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
