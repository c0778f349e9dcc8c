"""Where the time of ``devcluster up -d`` goes: a waterfall from timestamps (issue 21).

``python -m bench.waterfall [--sizes 3,30] [--runs 3] [--out bench/results.md]``

Every Python process of the run (the CLI, the daemon, the watchdog, each greeter) loads
``bench/_trace/sitecustomize.py``, which appends timestamped marks to one file: when
the interpreter came up, the first import of the heavy packages, and the begin/end of
a few functions of devcluster (wrapped as their modules load; devcluster itself is not
changed to be traced). From those marks: the CLI's imports, the daemon's start and
imports, the spawns, each greeter's interpreter and imports, its first listen, the
health answer, the registry writes and the ready report, in ms from the moment the
bench started the CLI. Medians over ``--runs``; the CPU seconds of each process too.

It prints the waterfall and writes it as its own section of ``results.md`` (between
the markers ``WATERFALL_START`` and ``WATERFALL_END``), and its raw figures into
``results.json`` beside it; ``python -m bench`` runs it as the group ``waterfall``.
Figures move with the load of the machine: compare phases within one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.supervisor import PY, _env, _free_base

HERE = Path(__file__).resolve().parent
TRACER = HERE / "_trace"
WATERFALL_START = "<!-- waterfall:start (written by python -m bench.waterfall) -->"
WATERFALL_END = "<!-- waterfall:end -->"

Events = list[dict[str, Any]]


def trace_once(n: int) -> tuple[float, Events]:
    """One traced ``up -d`` of ``n`` greeters (then ``down``): (t0, marks)."""
    with tempfile.TemporaryDirectory(prefix="devcluster-waterfall-") as tmp:
        d = Path(tmp)
        (d / "Procfile").write_text("greeter: python -m devcluster.greeter --port $PORT\n")
        trace, state = d / "trace.jsonl", d / "state"
        env = _env()
        env["PYTHONPATH"] = f"{TRACER}:{env['PYTHONPATH']}"
        env["DEVCLUSTER_BENCH_TRACE"] = str(trace)
        base = _free_base(n)
        t0 = time.time()
        subprocess.run([PY, "-m", "devcluster", "up", "-d", "-p", str(base), "-c", f"greeter={n}",
                        "--state-dir", str(state)], cwd=d, env=env, stdout=subprocess.DEVNULL,
                       check=True)
        t_returned = time.time()
        subprocess.run([PY, "-m", "devcluster", "down", "--state-dir", str(state)], cwd=d,
                       env=_env(), stdout=subprocess.DEVNULL, check=True)
        marks = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
        marks.append({"pid": 0, "t": t_returned, "what": "bench.returned"})
        return t0, marks


def _ms(t: float | None, t0: float) -> float | None:
    return None if t is None else 1000 * (t - t0)


def _first(marks: Events, what: str, pid: int | None = None) -> float | None:
    ts = [m["t"] for m in marks if m["what"] == what and (pid is None or m["pid"] == pid)]
    return min(ts) if ts else None


def _last(marks: Events, what: str, pid: int | None = None) -> float | None:
    ts = [m["t"] for m in marks if m["what"] == what and (pid is None or m["pid"] == pid)]
    return max(ts) if ts else None


def _kinds(marks: Events) -> dict[str, list[int]]:
    """pids by role, from each process's command line."""
    roles: dict[str, list[int]] = {"cli": [], "daemon": [], "watchdog": [], "greeter": []}
    for m in marks:
        if m["what"] != "process.interpreter":
            continue
        argv = " ".join(m.get("argv", []))
        role = ("daemon" if "devcluster.daemon" in argv else "watchdog" if "watchdog" in argv
                else "greeter" if "devcluster.greeter" in argv else "cli")
        roles[role].append(m["pid"])
    if not roles["daemon"]:  # forked from the CLI (devcluster.daemonfork): no interpreter
        cli = set(roles["cli"][:1])
        roles["daemon"] = sorted({m["pid"] for m in marks if m["what"].startswith("daemon.")
                                  and m["pid"] not in cli})[:1]
    return roles


def _imports_ms(marks: Events, pid: int, until: float | None) -> float:
    """Time inside top-level imports of the heavy packages of ``pid`` before ``until``."""
    depth, began, total = 0, 0.0, 0.0
    for m in marks:
        if m["pid"] != pid or not m["what"].startswith("import.") or (until and m["t"] > until):
            continue
        if m["what"] == "import.begin":
            if depth == 0:
                began = m["t"]
            depth += 1
        else:
            depth = max(0, depth - 1)
            if depth == 0:
                total += m["t"] - began
    return 1000 * total


def phases(t0: float, marks: Events) -> dict[str, Any]:
    """The milestones of one run in ms from t0, and the spans between them."""
    roles = _kinds(marks)
    cli, daemon = roles["cli"][0], roles["daemon"][0]
    g_up = sorted(_first(marks, "process.interpreter", p) or 0 for p in roles["greeter"])
    g_listen = sorted(_first(marks, "greeter.listening", p) or 0 for p in roles["greeter"])
    g_health = sorted(_first(marks, "greeter.health_answer", p) or 0 for p in roles["greeter"])
    serving = sorted(m["t"] for m in marks if m["what"] == "daemon.state"
                     and m.get("state") == "serving")
    spawns = sorted(m["t"] for m in marks if m["what"] == "daemon.spawn.begin")
    writes = [m for m in marks if m["what"] == "daemon.registry_write"]
    first_spawn = spawns[0] if spawns else None
    # The delay between a greeter listening and the supervisor calling it serving.
    lags = _detection_lags(marks, roles["greeter"])
    cpu = {role: sum(next((m.get("cpu_s", 0.0) for m in marks if m["what"] == "process.exit"
                           and m["pid"] == p), 0.0) for p in pids) for role, pids in roles.items()}
    ready = _first(marks, "daemon.ready")
    miles = {
        "cli_interpreter": _first(marks, "process.interpreter", cli),
        "cli_up": _first(marks, "cli.up.begin", cli),
        "cli_start_daemon": _first(marks, "cli.start_daemon.begin", cli),
        "daemon_interpreter": _first(marks, "process.interpreter", daemon),
        # Where its own work begins: its interpreter, or the fork (no interpreter start).
        "daemon_up": (_first(marks, "process.interpreter", daemon)
                      or _first(marks, "cli.start_daemon.begin", cli)),
        "daemon_control": _first(marks, "daemon.control_start.end", daemon),
        "first_spawn": first_spawn,
        "last_spawn": spawns[-1] if spawns else None,
        "greeter_first_up": g_up[0] if g_up else None,
        "greeter_last_up": g_up[-1] if g_up else None,
        "first_listen": g_listen[0] if g_listen else None,
        "last_listen": g_listen[-1] if g_listen else None,
        "first_health": g_health[0] if g_health else None,
        "last_health": g_health[-1] if g_health else None,
        "first_serving": serving[0] if serving else None,
        "last_serving": serving[-1] if serving else None,
        "daemon_ready": ready,
        "cli_got_ready": _last(marks, "cli.read_ready.end", cli),
        "cli_exit": _first(marks, "process.exit", cli),
        "returned": _first(marks, "bench.returned"),
    }
    out: dict[str, Any] = {k: _ms(v, t0) for k, v in miles.items()}
    out["cli_imports_ms"] = _imports_ms(marks, cli, miles["cli_up"])
    out["daemon_imports_ms"] = _imports_ms(marks, daemon, miles["daemon_control"])
    out["check_ports_ms"] = 1000 * _span_sum(marks, daemon, "daemon.check_ports")
    out["registry_writes"] = len(writes)
    out["registry_writes_before_ready"] = sum(1 for m in writes if ready and m["t"] <= ready)
    out["detect_lag_ms_median"] = 1000 * statistics.median(lags) if lags else None
    out["detect_lag_ms_max"] = 1000 * max(lags) if lags else None
    out["greeter_boot_ms_median"] = 1000 * statistics.median(
        b - a for a, b in zip(g_up, g_listen, strict=False)) if g_up and g_listen else None
    out["cpu_s"] = cpu
    return out


def _span_sum(marks: Events, pid: int, what: str) -> float:
    """Seconds spent inside ``what`` (its outermost begin/end pairs) in ``pid``."""
    total, depth, began = 0.0, 0, 0.0
    for m in marks:
        if m["pid"] != pid:
            continue
        if m["what"] == what + ".begin":
            if depth == 0:
                began = m["t"]
            depth += 1
        elif m["what"] == what + ".end" and depth:
            depth -= 1
            if depth == 0:
                total += m["t"] - began
    return total


def _detection_lags(marks: Events, greeters: Sequence[int]) -> list[float]:
    port_of: dict[int, str] = {}
    for m in marks:
        if m["what"] == "process.interpreter" and m["pid"] in greeters:
            argv = m.get("argv", [])
            if "--port" in argv:
                port_of[m["pid"]] = argv[argv.index("--port") + 1]
    listen = {port_of.get(p): _first(marks, "greeter.listening", p) for p in greeters}
    ports = sorted(listen, key=lambda p: int(p or 0))
    lags = []
    for m in marks:
        if m["what"] == "daemon.state" and m.get("state") == "serving":
            k = int(m["name"].rsplit(".", 1)[1]) - 1
            t = listen.get(ports[k]) if k < len(ports) else None
            if t is not None:
                lags.append(m["t"] - t)
    return lags


#: (label, from milestone, to milestone): the rows of the waterfall, in order.
STEPS: list[tuple[str, str | None, str]] = [
    ("CLI: interpreter start", None, "cli_interpreter"),
    ("CLI: imports and argument parsing", "cli_interpreter", "cli_up"),
    ("CLI: resolve the project, lock the state dir", "cli_up", "cli_start_daemon"),
    # The instances are spawned between the daemon's fork and its exec (before its
    # interpreter starts), or by the daemon where they may not start early.
    ("instances: spawned (first to last)", "first_spawn", "last_spawn"),
    ("daemon: interpreter start", "cli_start_daemon", "daemon_interpreter"),
    ("daemon: imports and set-up until its control plane serves", "daemon_up",
     "daemon_control"),
    ("greeters: interpreters up (first / last)", "first_spawn", "greeter_last_up"),
    ("greeters: imports until the first listen", "greeter_first_up", "first_listen"),
    ("greeters: first to last listen", "first_listen", "last_listen"),
    ("supervisor: last listen -> last health answer", "last_listen", "last_health"),
    ("supervisor: last health answer -> last `serving`", "last_health", "last_serving"),
    ("supervisor: registry written, ready report", "last_serving", "daemon_ready"),
    ("CLI: reads the report, prints, exits", "daemon_ready", "returned"),
]


def median_phases(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per key, the median over runs (numbers only; dicts key by key)."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        vals = [r[key] for r in runs if r.get(key) is not None]
        if not vals:
            out[key] = None
        elif isinstance(vals[0], dict):
            out[key] = {k: statistics.median(v[k] for v in vals) for k in vals[0]}
        else:
            out[key] = statistics.median(vals)
    return out


def measure(sizes: Sequence[int], runs: int) -> dict[str, Any]:
    """Raw figures: per size, every run's milestones and their medians."""
    result: dict[str, Any] = {"runs": runs, "sizes": {}}
    for n in sizes:
        per = []
        for _ in range(runs):
            t0, marks = trace_once(n)
            per.append(phases(t0, marks))
        result["sizes"][str(n)] = {"runs": per, "median": median_phases(per)}
    return result


def _bar(start: float, end: float, total: float, width: int = 40) -> str:
    a = round(width * max(0.0, start) / total)
    b = max(a + 1, round(width * end / total))
    return "." * a + "#" * (b - a) + "." * max(0, width - b)


def render(raw: Mapping[str, Any]) -> str:
    """The waterfall section of results.md."""
    lines = ["## Waterfall of `up -d`", "",
             f"`python -m bench.waterfall`: medians of {raw['runs']} traced runs per size; ms "
             "from the moment the bench started the CLI. The bar spans the step on the run's "
             "scale. Steps overlap where processes run side by side.", ""]
    for n, per in raw["sizes"].items():
        m = per["median"]
        total = m.get("returned") or 1.0
        lines += [f"### N={n}: `up -d` returned at {total:.0f} ms", "",
                  "| step | from (ms) | to (ms) | takes (ms) | |", "| --- | --- | --- | --- | --- |"]
        for label, a, b in STEPS:
            start = 0.0 if a is None else m.get(a)
            end = m.get(b)
            if start is None or end is None:
                lines.append(f"| {label} | - | - | - | |")
                continue
            lines.append(f"| {label} | {start:.0f} | {end:.0f} | {end - start:.0f} | "
                         f"`{_bar(start, end, total)}` |")
        cpu = m.get("cpu_s") or {}
        lag_med, lag_max = m.get("detect_lag_ms_median"), m.get("detect_lag_ms_max")
        boot = m.get("greeter_boot_ms_median")
        lines += ["", f"- inside those: the CLI's heavy imports {m['cli_imports_ms']:.0f} ms; the "
                  f"daemon's heavy imports before its control plane serves {m['daemon_imports_ms']:.0f} ms; "
                  f"the port check {m['check_ports_ms']:.0f} ms",
                  f"- a greeter from interpreter up to listening: {boot:.0f} ms (median)"
                  if boot is not None else "- greeter boot: -",
                  f"- listen -> `serving` in the supervisor: median {lag_med:.0f} ms, max "
                  f"{lag_max:.0f} ms" if lag_med is not None else "- detection: -",
                  f"- registry writes: {m['registry_writes_before_ready']:.0f} before the ready "
                  f"report ({m['registry_writes']:.0f} in all, `down` included)",
                  "- CPU seconds: " + ", ".join(f"{k} {v:.2f}" + (" (all)" if k == "greeter" else "")
                                                for k, v in cpu.items() if v)
                  + " (a watchdog started with `python -I -S` loads no sitecustomize: untraced)",
                  ""]
    return "\n".join(lines)


def write_section(section: str, md: Path) -> None:
    """Put ``section`` between the waterfall markers of ``md`` (appended if none)."""
    block = f"{WATERFALL_START}\n{section}\n{WATERFALL_END}"
    text = md.read_text() if md.exists() else ""
    start, end = text.find(WATERFALL_START), text.find(WATERFALL_END)
    if start >= 0 and end > start:
        text = text[:start] + block + text[end + len(WATERFALL_END):]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    md.write_text(text)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="3,30")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results.md",
                        help="the results.md to write the section into (results.json beside it)")
    args = parser.parse_args(argv)
    raw = measure([int(s) for s in args.sizes.split(",")], args.runs)
    section = render(raw)
    print(section)
    write_section(section, args.out)
    js = args.out.with_name("results.json")
    if js.exists():
        results = json.loads(js.read_text())
        results.setdefault("raw", {})["waterfall"] = raw
        js.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote the waterfall into {args.out}", file=sys.stderr)
    return raw


if __name__ == "__main__":
    main()
