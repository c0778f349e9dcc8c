"""Instructions per call: the balanced client against grpc's round_robin (issue 28).

``python -m bench.instructions [--calls 200,1200] [--rounds 2]`` starts three greeters
(outside any counter), registers them in a throw-away FileRegistry, and runs
``bench.instructions_client`` under an instruction counter, once per side and number of
calls: a sync ``BalancedChannel`` on the registry, and one native channel with
``grpc.lb_policy_name=round_robin`` over the same addresses; then the same two with
``grpc.aio`` (``AioBalancedChannel``, a native ``grpc.aio`` channel). Sequential SayHello
calls (aio: each awaited before the next).

The counter is ``perf stat -e instructions`` where the machine has one; otherwise (a VM
without a PMU says ``<not supported>``) valgrind's callgrind, which counts every
instruction the client executes. Either way the count covers the client process only,
all its threads (grpc's included), and no server. Instructions per call are
``(I(N2) - I(N1)) / (N2 - N1)``: start-up, imports and warm-up cost the same in both
runs and cancel. Then, without a counter, ``sys.settrace`` counts the Python bytecodes
the calling thread executes per call, by function. Under callgrind, the same difference
per shared object and per C function says where a side's instructions go. Not a test:
figures depend on the build.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.client_throughput import greeters
from devcluster.registry.file import FileRegistry
from devcluster.registry.record import Record, State

ROOT = Path(__file__).resolve().parent.parent
CALLS = (200, 1200)  # calls of the two counted runs per side; the difference is measured
SIDES = ("ours", "native", "ours_aio", "native_aio")
#: Each driver's pair of sides (ours, native), in the order the rows show them.
PAIRS = {"sync": ("ours", "native"), "aio": ("ours_aio", "native_aio")}
TOP = 6  # C functions listed per side in the notes
GOAL = 1.05  # issue 28: ours / native instructions per call
_ANNOTATED = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*?)(?: \[(.*)\])?$")


def counter() -> str:
    """``perf`` if ``perf stat -e instructions`` counts here, else ``callgrind``."""
    try:
        out = subprocess.run(["perf", "stat", "-x,", "-e", "instructions", "--", "true"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "callgrind"
    supported = out.returncode == 0 and any(
        line.split(",")[0].strip().isdigit() for line in out.stderr.splitlines())
    return "perf" if supported else "callgrind"


def _client(side: str, target: str, calls: int) -> list[str]:
    return [sys.executable, "-m", "bench.instructions_client", side, target, str(calls)]


def count(how: str, side: str, target: str, calls: int, out: Path) -> int | None:
    """Instructions of one client run of ``calls`` calls (None with ``how="none"``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if how == "none":  # the quick smoke form: the client runs, nothing is counted
        subprocess.run(_client(side, target, calls), cwd=ROOT, env=env, check=True,
                       capture_output=True, timeout=120)
        return None
    if how == "perf":
        proc = subprocess.run(["perf", "stat", "-x,", "-e", "instructions", "--",
                               *_client(side, target, calls)], cwd=ROOT, env=env, check=True,
                              capture_output=True, text=True, timeout=600)
        for line in proc.stderr.splitlines():
            field = line.split(",")[0].strip()
            if field.isdigit():
                return int(field)
        raise RuntimeError(f"perf stat printed no instruction count: {proc.stderr[-300:]}")
    # One file per thread (out-01 is the calling thread): the main-thread figure is
    # deterministic, where the others add what a background thread does per second
    # (statistics written once a second, grpc's timers), which callgrind's slowdown
    # stretches over the calls.
    subprocess.run(["valgrind", "--tool=callgrind", "--separate-threads=yes",
                    f"--callgrind-out-file={out}", *_client(side, target, calls)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=900)
    return sum(_total(part) for part in thread_files(out))


def thread_files(out: Path) -> list[Path]:
    """The per-thread files callgrind wrote for ``out`` (``out`` itself without them)."""
    return sorted(out.parent.glob(out.name + "-*")) or [out]


def _total(out: Path) -> int:
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"callgrind wrote no total in {out}")


def by_function(out: Path) -> dict[tuple[str, str], int]:
    """Exclusive instructions per (shared object, function) of one callgrind file."""
    text = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no", str(out)],
                          capture_output=True, text=True, check=True, timeout=300).stdout
    objects: dict[str, str] = {}
    rows: list[tuple[str, str | None, int]] = []
    for line in text.splitlines():
        m = _ANNOTATED.match(line)
        if not m or m.group(2) == "PROGRAM TOTALS":
            continue
        fn = m.group(2).rsplit(":", 1)[-1].split("'")[0]
        if m.group(3):
            objects.setdefault(fn, m.group(3))
        rows.append((fn, m.group(3), int(m.group(1).replace(",", ""))))
    found: dict[tuple[str, str], int] = defaultdict(int)
    for fn, obj, ir in rows:  # inlined lines name no object: their function's object
        found[(Path(obj or objects.get(fn, "?")).name, fn)] += ir
    return dict(found)


def per_call(small: dict[tuple[str, str], int], big: dict[tuple[str, str], int],
             calls: int) -> dict[tuple[str, str], float]:
    """Instructions per call of each key, from the runs of ``CALLS`` calls."""
    return {k: (big.get(k, 0) - small.get(k, 0)) / calls for k in set(big) | set(small)}


def _by_function_all(out: Path) -> dict[tuple[str, str], int]:
    """:func:`by_function` summed over every thread of one run."""
    found: dict[tuple[str, str], int] = defaultdict(int)
    for part in thread_files(out):
        for key, ir in by_function(part).items():
            found[key] += ir
    return dict(found)


def profile(files: dict[int, Path], calls: tuple[int, int]) -> dict[str, Any]:
    """Per call, by shared object and the top C functions (exclusive), from callgrind;
    and the calling thread's instructions per call (``main``)."""
    funcs = per_call(_by_function_all(files[calls[0]]), _by_function_all(files[calls[1]]),
                     calls[1] - calls[0])
    main = [thread_files(files[n])[0] for n in calls]
    main_per_call = (_total(main[1]) - _total(main[0])) / (calls[1] - calls[0]) \
        if all(m.name.endswith("-01") for m in main) else None
    objects: dict[str, float] = defaultdict(float)
    for (obj, _), ir in funcs.items():
        objects[obj] += ir
    top = sorted(funcs.items(), key=lambda kv: -kv[1])[:TOP]
    return {"objects": dict(sorted(objects.items(), key=lambda kv: -kv[1])[:TOP]),
            "functions": [[f"{fn} [{obj}]", round(ir)] for (obj, fn), ir in top],
            "main": main_per_call}


def bytecodes(targets: dict[str, str], calls: int,
              sides: tuple[str, ...] = SIDES) -> dict[str, Any]:
    """Python bytecodes per call of each side's calling thread (no counter needed), and
    per driver the functions where ours executes more than native, most first
    (``ours_extra`` for sync, ``ours_aio_extra`` for aio)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    seen = {}
    for side in sides:
        proc = subprocess.run([*_client(side, targets[side], calls)[:3], "--opcodes",
                               *_client(side, targets[side], calls)[3:]], cwd=ROOT, env=env,
                              check=True, capture_output=True, text=True, timeout=300)
        seen[side] = {k: v / calls for k, v in json.loads(proc.stdout).items()}
    out: dict[str, Any] = {"per_call": {side: sum(seen[side].values()) for side in sides}}
    for ours, native in _pairs(sides):
        extra = {k: v - seen[native].get(k, 0.0) for k, v in seen[ours].items()}
        top = sorted(((k, v) for k, v in extra.items() if v > 0), key=lambda kv: -kv[1])[:8]
        out[f"{ours}_extra"] = [[k, round(v, 1)] for k, v in top]
    return out


def _pairs(sides: Any) -> list[tuple[str, str]]:
    """The (ours, native) pairs of which both sides are in ``sides``."""
    return [pair for pair in PAIRS.values() if all(side in sides for side in pair)]


def _sides(how: str, targets: dict[str, str], calls: tuple[int, int], rounds: int,
           tmp: Path, sides: tuple[str, ...] = SIDES) -> dict[str, Any]:
    """Instructions per call of each side, ``rounds`` times (sides alternating)."""
    out: dict[str, Any] = {side: {"per_call": [], "totals": []} for side in sides}
    files: dict[str, dict[int, Path]] = {side: {} for side in sides}
    for i in range(rounds):
        for side in sides if i % 2 == 0 else sides[::-1]:
            got = {}
            for n in calls:
                files[side][n] = tmp / f"callgrind.{side}.{n}.{i}.out"
                got[n] = count(how, side, targets[side], n, files[side][n])
            out[side]["totals"].append([got[calls[0]], got[calls[1]]])
            if None not in got.values():
                out[side]["per_call"].append(
                    (got[calls[1]] - got[calls[0]]) / (calls[1] - calls[0]))  # type: ignore[operator]
    for side in sides:
        samples = out[side]["per_call"]
        out[side]["median"] = statistics.median(samples) if samples else None
        if how == "callgrind":  # where the last round's instructions went
            out[side]["profile"] = profile(files[side], calls)
    return out


def measure(calls: tuple[int, int] = CALLS, rounds: int = 2,
            how: str | None = None, sides: tuple[str, ...] = SIDES) -> dict[str, Any]:
    """Instructions per call of ``sides`` as JSON-ready figures; ``how`` is ``perf``,
    ``callgrind`` or ``none`` (the clients run, nothing is counted); default: the best
    counter this machine has (:func:`counter`)."""
    how = how or counter()
    with greeters() as started, tempfile.TemporaryDirectory(prefix="devcluster-bench-") as tmp:
        state_dir = Path(tmp) / ".devcluster"
        FileRegistry(state_dir).reset(
            Record(name, "server", address, state=State.SERVING, pid=pid, started_at=started_at)
            for name, address, pid, started_at in started)
        native = ",".join(address for _, address, _, _ in started)
        targets = {"ours": str(state_dir), "native": native,
                   "ours_aio": str(state_dir), "native_aio": native}
        out = _sides(how, targets, calls, max(1, rounds), Path(tmp), sides)
        if how != "none":
            out["bytecodes"] = bytecodes(targets, calls[1] - calls[0], sides)
    return {"counter": how, "calls": list(calls), "rounds": max(1, rounds), **out}


#: What each driver's rows call its two sides.
_WHAT = {"sync": "sequential SayHello, BalancedChannel vs native round_robin",
         "aio": "sequential awaited SayHello (grpc.aio), AioBalancedChannel vs native "
                "grpc.aio round_robin"}


def rows(raw: dict[str, Any]) -> list[Any]:
    """Scenario 20's rows of the results table: sync, then aio (when measured)."""
    from bench.report import Row, _num, _ratio, _verdict

    small, big = raw["calls"]
    how = {"none": "not counted (--quick)"}.get(raw["counter"], raw["counter"])
    pairs = [(driver, pair) for driver, pair in PAIRS.items() if all(s in raw for s in pair)]
    out = []
    for driver, (ours, native) in pairs:
        a, b = raw[ours]["median"], raw[native]["median"]
        r = a / b if a is not None and b else None
        out.append(Row("20", f"{_WHAT[driver]} (client process, all threads; {how}, "
                             f"(I({big}) - I({small})) / {big - small}, median of "
                             f"{raw['rounds']})",
                       _num(a), _num(b), _ratio(a, b), f"<= {GOAL}x",
                       _verdict(None if r is None else r <= GOAL, f"{r:.3f}x" if r else "")))
    for driver, (ours, native) in pairs:
        a, b = (raw[side].get("profile", {}).get("main") for side in (ours, native))
        if a is not None and b is not None:
            thread = "the calling thread" if driver == "sync" else "the event loop's thread (aio)"
            out.append(Row("20", f"of which {thread} (the same runs, one thread: no "
                                 "background work stretched by the counter)", _num(a), _num(b),
                           _ratio(a, b), "-", "-"))
    for driver, (ours, native) in pairs:
        objects = [raw[side].get("profile", {}).get("objects", {}) for side in (ours, native)]
        label = "" if driver == "sync" else f" ({driver})"
        for obj in list(objects[0])[:3]:
            a, b = objects[0][obj], objects[1].get(obj, 0.0)
            out.append(Row("20", f"of which in `{obj}`{label}", _num(a), _num(b),
                           _ratio(a, b), "-", "-"))
    per_call = raw.get("bytecodes", {}).get("per_call", {})
    for driver, (ours, native) in pairs:
        if ours in per_call and native in per_call:
            a, b = per_call[ours], per_call[native]
            label = "the calling thread" if driver == "sync" else "the event loop's thread (aio)"
            out.append(Row("20", f"Python bytecodes per call, {label} (`sys.settrace`, "
                                 f"{big - small} calls)", _num(a), _num(b), _ratio(a, b),
                           "-", "-"))
    return out


def notes(raw: dict[str, Any]) -> list[str]:
    """Scenario 20's method note, and where our clients' instructions go."""
    out = ["20: `python -m bench.instructions_client` makes N sequential SayHello calls (after "
           "50 warm-up calls) on three greeters that run outside the counter, with the sync "
           "channels and then with grpc.aio ones (each call awaited before the next, so one is "
           "in flight and the count does not depend on interleaving); it runs under "
           "`perf stat -e instructions` where the machine counts instructions, else under "
           f"valgrind's callgrind (this run: {raw['counter']}). The count is the client "
           "process's, all its threads (grpc's included). Per call is I(N2) - I(N1) over "
           "N2 - N1, so start-up, imports and warm-up cancel; not what a thread does per "
           "second, though: the counter slows the client some 50 times, so a background "
           "thread's timer work (grpc's; our statistics file, written once a second) lands "
           "on the calls, and more so on a busy machine. The 'calling thread' rows count "
           "the same runs' first thread only (callgrind's --separate-threads), which has "
           "no such drift. 'Of which in' rows split the "
           "difference by shared object: `libpython` is the interpreter running Python code "
           "(our channel, picker, interceptors and statistics, grpc's Python layer), "
           "`cygrpc` grpc's Cython and C core."]
    for driver, (ours, _native) in PAIRS.items():
        name = "BalancedChannel" if driver == "sync" else "AioBalancedChannel"
        functions = raw.get(ours, {}).get("profile", {}).get("functions")
        if functions:
            out.append(f"20: {name}'s top C functions by exclusive instructions per call "
                       "(callgrind sees the interpreter, not Python frames): "
                       + "; ".join(f"`{fn}` {ir:,}" for fn, ir in functions) + ".")
        extra = raw.get("bytecodes", {}).get(f"{ours}_extra")
        if extra:
            out.append(f"20: where {name}'s calling thread executes more Python bytecodes "
                       "per call than native round_robin's (ours - native, by function): "
                       + "; ".join(f"`{fn}` +{n:g}" for fn, n in extra) + ".")
    return out


def _calls(text: str) -> tuple[int, int]:
    small, big = (int(x) for x in text.split(","))
    if not 0 <= small < big:
        raise argparse.ArgumentTypeError("want N1,N2 with 0 <= N1 < N2")
    return small, big


def _side_list(text: str) -> tuple[str, ...]:
    sides = tuple(text.split(","))
    unknown = [side for side in sides if side not in SIDES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown side(s) {unknown}; choose from {SIDES}")
    return sides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=_calls, default=CALLS, metavar="N1,N2",
                        help="calls of the two counted runs per side (default 200,1200)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per side (default 2)")
    parser.add_argument("--counter", choices=("perf", "callgrind"), default=None,
                        help="instruction counter (default: perf where it counts, else callgrind)")
    parser.add_argument("--sides", type=_side_list, default=SIDES, metavar="SIDE,...",
                        help=f"which clients to count (default: all, {','.join(SIDES)})")
    args = parser.parse_args(argv)
    raw = measure(args.calls, args.rounds, args.counter, args.sides)
    print(f"counter: {raw['counter']} (client process, all its threads)")
    for side in args.sides:
        main = raw[side].get("profile", {}).get("main")
        print(f"{side}: {raw[side]['median']:,.0f} instructions per call "
              f"(rounds: {', '.join(f'{x:,.0f}' for x in raw[side]['per_call'])})"
              + ("" if main is None else f"; calling thread {main:,.0f}"))
        for name, ir in raw[side].get("profile", {}).get("functions", []):
            print(f"    {ir:>10,}  {name}")
    for note in notes(raw)[1:]:
        print(note)
    for ours, native in _pairs(args.sides):
        print(f"{ours} / {native}: {raw[ours]['median'] / raw[native]['median']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
