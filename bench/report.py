"""Turn the raw figures of ``python -m bench`` into ``results.json`` and ``results.md``.

Pure functions over the raw dicts the scenario modules return (plus the machine
description), so the table can be rebuilt from a saved ``results.json``::

    python -m bench.report bench/results.json     # rewrites results.md beside it
    python -m bench.report --merge /tmp/x/results.json   # a partial run's rows into bench/
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: Scenario number -> title (the issue's list).
SCENARIOS: dict[str, str] = {
    "1": "Time to ready",
    "2": "Shutdown",
    "3": "Client throughput",
    "4": "Client latency overhead",
    "5": "Failover",
    "6": "Weight propagation",
    "7": "Weight accuracy",
    "8": "Supervisor overhead",
    "9": "Command speed",
    "10": "A long freeze",
    "11": "Rolling reload",
    "12": "Log flood",
    "13": "xDS weight propagation",
    "14": "xDS shares",
    "15": "xDS failed calls",
    "16": "xDS rejoin",
    "17": "xDS supervisor cost",
    "18": "Health-check cost",
    "19": "Fault accuracy",
    "20": "Instructions per call",
}

#: Group (``python -m bench --only``) -> the scenarios its rows belong to.
GROUP_SCENARIOS: dict[str, tuple[str, ...]] = {
    "supervisor": ("1", "2", "8"), "waterfall": (), "client": ("3", "4"), "failover": ("5",),
    "weights": ("6", "7"), "commands": ("9",), "pause": ("10",), "reload": ("11",),
    "log_flood": ("12",), "xds": ("13", "14", "15", "16", "17", "18", "19"),
    "instructions": ("20",),
}


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    scenario: str
    what: str
    devcluster: str
    anchor: str
    ratio: str
    goal: str
    met: str


# -- machine ---------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) / 2**20
    except OSError:
        pass

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "-"

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu or platform.processor() or "unknown",
        "ram_gib": round(ram, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": version("grpcio"),
        "honcho": version("honcho"),
        "devcluster_commit": _git_commit(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_at_start": load,
    }


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, text=True,
                               capture_output=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "-"
    return f"{head}{' (uncommitted changes)' if dirty else ''}" if head else "-"


# -- formatting --------------------------------------------------------------------------

def _num(x: float | None, digits: int = 0, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}{unit}"


def _ratio(ours: float | None, anchor: float | None) -> str:
    if ours is None or anchor is None or math.isnan(ours) or math.isnan(anchor):
        return "-"
    if anchor <= 0 or ours < 0:  # e.g. native reached a restarted instance before it was serving
        return "-"
    return f"{ours / anchor:.2f}x"


def _verdict(ok: bool | None, miss: str = "") -> str:
    if ok is None:
        return "-"
    return "yes" if ok else f"NO{f' ({miss})' if miss else ''}"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1000 * seconds


# -- the table -------------------------------------------------------------------------

def _by_tool(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], Mapping[str, Any]]:
    return {(r["tool"], int(r["n"])): r for r in rows}


def supervisor_rows(raw: Sequence[Mapping[str, Any]]) -> list[Row]:
    """Scenarios 1, 2 and 8 from ``bench.supervisor.measure`` rows."""
    by = _by_tool(raw)
    sizes = sorted({n for _, n in by})
    out: list[Row] = []
    for n in sizes:
        ours, theirs = by.get(("devcluster", n)), by.get(("honcho", n))
        if ours is None or theirs is None:
            continue
        up_d, answering, anchor = (_ms(ours.get("up_detached_s")), _ms(ours.get("ready_s")),
                                   _ms(theirs.get("ready_s")))
        # Issue 21: health-checked `up -d` no slower than honcho merely answering, at every N.
        r = None if up_d is None or anchor is None else up_d / anchor
        out.append(Row("1", f"`up -d` (health-checked) vs `honcho start` answering, N={n}",
                       _num(up_d, 0, " ms"), _num(anchor, 0, " ms"), _ratio(up_d, anchor),
                       "<= 1.0x", _verdict(None if r is None else r <= 1.0,
                                           f"{r:.2f}x" if r else "")))
        floor = by.get(("floor", n))
        bare = _ms(floor.get("ready_s")) if floor else None
        if bare is not None:
            # Issue 21: within 1.15x of a plain Popen loop of the same greeters.
            rf = None if up_d is None or not bare else up_d / bare
            out.append(Row("1", f"`up -d` (health-checked) vs the bare-spawn floor (Popen loop, "
                                f"polled until all answer), N={n}", _num(up_d, 0, " ms"),
                           _num(bare, 0, " ms"), _ratio(up_d, bare), "<= 1.15x",
                           _verdict(None if rf is None else rf <= 1.15,
                                    f"{rf:.2f}x" if rf else "")))
            out.append(Row("1", f"the bare-spawn floor vs `honcho start` answering, N={n}",
                           _num(bare, 0, " ms"), _num(anchor, 0, " ms"), _ratio(bare, anchor),
                           "-", "-"))
        pre = _ms(ours.get("up_detached_preload_s"))
        if pre is not None:
            # Issue 21's moonshot: under the floor of exec'ing an interpreter per instance.
            r = None if anchor is None else pre / anchor
            goal = n >= 10  # issue 28: at N = 10, 30 and 100
            out.append(Row("1", f"`up -d` with `preload` (forked greeters) vs `honcho start` "
                           f"answering, N={n}", _num(pre, 0, " ms"), _num(anchor, 0, " ms"),
                           _ratio(pre, anchor), "<= 0.5x" if goal else "-",
                           _verdict(None if r is None else r <= 0.5,
                                    f"{r:.2f}x" if r else "") if goal else "-"))
        out.append(Row("1", f"same criterion: `up` until all answer SayHello, N={n}",
                       _num(answering, 0, " ms"), _num(anchor, 0, " ms"),
                       _ratio(answering, anchor), "-", "-"))
    demo = by.get(("demo", 3))
    if demo is not None:  # issue 28: the repository's Procfile, preloaded without asking
        a, b = _ms(demo.get("devcluster_s")), _ms(demo.get("honcho_s"))
        r = None if a is None or not b else a / b
        out.append(Row("1", "`devcluster up` of the repository's Procfile (3 greeters, "
                            "preloaded by its devcluster.toml) vs `honcho start` of it, both "
                            "until all answer", _num(a, 0, " ms"), _num(b, 0, " ms"),
                       _ratio(a, b), "<= 0.6x",
                       _verdict(None if r is None else r <= 0.6, f"{r:.2f}x" if r else "")))
    for n in sizes:
        ours, theirs = by.get(("devcluster", n)), by.get(("honcho", n))
        if ours is None or theirs is None:
            continue
        a, b = _ms(ours.get("shutdown_s")), _ms(theirs.get("shutdown_s"))
        r = None if a is None or b is None or not b else a / b
        out.append(Row("2", f"SIGINT until every process is gone, N={n}", _num(a, 0, " ms"),
                       _num(b, 0, " ms"), _ratio(a, b), "<= 1.0x",
                       _verdict(None if r is None else r <= 1.0,
                                f"{r:.2f}x" if r else "")))
    for n in sizes:
        ours, theirs = by.get(("devcluster", n)), by.get(("honcho", n))
        if ours is None or theirs is None or "idle_cpu_pct" not in ours:
            continue
        cpu_a, cpu_b = ours.get("idle_cpu_pct"), theirs.get("idle_cpu_pct")
        out.append(Row("8", f"idle CPU of the supervisor over the idle window, N={n}",
                       _num(cpu_a, 2, " %"), _num(cpu_b, 2, " %"), _ratio(cpu_a, cpu_b), "< 1 %",
                       _verdict(None if cpu_a is None else cpu_a < 1.0,
                                f"{cpu_a:.2f} %" if cpu_a is not None else "")))
        uss_a, uss_b = ours.get("uss_mib"), theirs.get("uss_mib")
        goal = n >= 30
        out.append(Row("8", f"USS of the supervisor (honcho: its processes), N={n}",
                       _num(uss_a, 1, " MiB"), _num(uss_b, 1, " MiB"), _ratio(uss_a, uss_b),
                       "<= 40 MiB" if goal else "-",
                       _verdict(uss_a <= 40 if goal and uss_a is not None else None,
                                f"{uss_a - 40:+.1f} MiB over" if uss_a else "")))
        rss_a, rss_b = ours.get("rss_mib"), theirs.get("rss_mib")
        out.append(Row("8", f"RSS of the supervisor (honcho: its processes), N={n}",
                       _num(rss_a, 1, " MiB"), _num(rss_b, 1, " MiB"), _ratio(rss_a, rss_b),
                       "-", "-"))
        if "ps_rpc_ms" in ours:
            out.append(Row("8", f"`ps` (control RPC / CLI command), `weight` (registry write), N={n}",
                           f"{_num(ours['ps_rpc_ms'], 1)} / {_num(ours['ps_cli_ms'], 0)} / "
                           f"{_num(ours['weight_write_ms'], 2)} ms", "-", "-", "-", "-"))
    small, big = by.get(("devcluster", 3)), by.get(("devcluster", 100))
    if small and big and "ps_cli_ms" in small and "ps_cli_ms" in big:
        a, b = big["ps_cli_ms"], small["ps_cli_ms"]
        out.append(Row("8", "`ps` as a CLI command at N=100 vs at N=3", _num(a, 0, " ms"),
                       _num(b, 0, " ms"), _ratio(a, b), "< 3x",
                       _verdict(a < 3 * b, f"{a / b:.2f}x")))
    return out


def client_rows(raw: Mapping[str, Any]) -> list[Row]:
    """Scenarios 3 and 4 from ``bench.client_throughput.measure``."""
    out: list[Row] = []
    for mode, label in (("sync", "sequential unary"), ("aio", f"grpc.aio, {raw['in_flight']} in flight")):
        a, b = raw[f"ours_{mode}"]["calls_per_s"], raw[f"native_{mode}"]["calls_per_s"]
        r = a / b if b else None
        out.append(Row("3", f"calls/s, {label}", _num(a, 0), _num(b, 0), _ratio(a, b), ">= 1.0x",
                       _verdict(None if r is None else r >= 1.0,
                                f"{r:.3f}x" if r is not None else "")))
        if f"hedge_{mode}" in raw:
            a = raw[f"hedge_{mode}"]["calls_per_s"]
            out.append(Row("3", f"calls/s, {label}, `hedge_after=0.1` (never firing)",
                           _num(a, 0), _num(b, 0), _ratio(a, b), "-", "-"))
    for mode, label in (("sync", "sequential"), ("aio", f"aio x{raw['in_flight']}")):
        ours, native = raw[f"ours_{mode}"], raw[f"native_{mode}"]
        for q in ("p50", "p99"):
            a, b = ours[f"{q}_ms"], native[f"{q}_ms"]
            out.append(Row("4", f"{q} latency, {label}", _num(a, 3, " ms"), _num(b, 3, " ms"),
                           _ratio(a, b), "-", "-"))
        a, b = ours["cpu_us_per_call"], native["cpu_us_per_call"]
        out.append(Row("4", f"client CPU per call, {label}", _num(a, 0, " us"), _num(b, 0, " us"),
                       _ratio(a, b), "-", "-"))
    if "scale" in raw:
        out.extend(scale_rows(raw["scale"], raw["in_flight"]))
    return out


def scale_rows(scale: Mapping[str, Any], in_flight: int) -> list[Row]:
    """Scenario 3, scale: the channel over many instances against the same over few; the
    anchor column is native round_robin's own ratio over the same addresses."""
    small, big = scale["sizes"][0], scale["sizes"][-1]
    out: list[Row] = []
    for mode, label in (("sync", "sequential unary"), ("aio", f"grpc.aio, {in_flight} in flight")):
        ours = [scale[f"{mode}_{n}"] for n in (big, small)]
        native = [scale.get(f"native_{mode}_{n}") for n in (big, small)]
        a, b = ours[0]["calls_per_s"], ours[1]["calls_per_s"]
        r = a / b if b else None
        anchor = "-"
        if native[0] and native[1] and native[1]["calls_per_s"]:
            anchor = (f"native rr: {_ratio(native[0]['calls_per_s'], native[1]['calls_per_s'])}"
                      f" ({_num(native[0]['calls_per_s'], 0)} / "
                      f"{_num(native[1]['calls_per_s'], 0)})")
        out.append(Row("3", f"calls/s, {label}, BalancedChannel over {big} instances / over "
                            f"{small} (one server process, a port each)",
                       f"{_num(a, 0)} / {_num(b, 0)}", anchor, _ratio(a, b), ">= 0.95x",
                       _verdict(None if r is None else r >= 0.95,
                                f"{r:.3f}x" if r is not None else "")))
        a, b = ours[0]["cpu_us_per_call"], ours[1]["cpu_us_per_call"]
        out.append(Row("4", f"client CPU per call, {label}, over {big} instances / over {small}",
                       f"{_num(a, 0, ' us')} / {_num(b, 0, ' us')}", "-", _ratio(a, b), "-", "-"))
    return out


def failover_rows(raw: Mapping[str, Any]) -> list[Row]:
    """Scenario 5 from ``bench.failover.measure``."""
    summary = raw["summary"]
    out: list[Row] = []
    names = {"kill": "SIGKILL", "stop": "graceful stop", "pause": "pause (SIGSTOP)"}

    def failed(s: Mapping[str, Any]) -> str:
        codes = ", ".join(s.get("codes", ()))
        return (f"{s['failed_total']} ({s['runs_with_failures']}/{s['runs']} runs, max "
                f"{s['failed_max']}{f'; {codes}' if codes else ''})")

    for action in ("kill", "stop", "pause"):
        if action not in summary:
            continue
        per = summary[action]
        ours, retry, native = per["balanced"], per["balanced+retry"], per["native rr"]
        runs = ours["runs"]
        if action == "pause":
            goal, ok = "<= 2 per run", ours["failed_max"] <= 2
            miss = f"max {ours['failed_max']} per run"
        else:
            goal, ok = f"0 over {runs} runs", ours["failed_total"] == 0
            miss = f"{ours['failed_total']} failed"
        out.append(Row("5", f"{names[action]}: failed calls", failed(ours), failed(native), "-",
                       goal, _verdict(ok, miss)))
        out.append(Row("5", f"{names[action]}: failed calls, `retry_on={{UNAVAILABLE}}`",
                       failed(retry), failed(native), "-", "-", "-"))
        a, b = ours["steady_ms_median"], native["steady_ms_median"]
        out.append(Row("5", f"{names[action]}: time to steady state, median (max)",
                       f"{_num(a, 0)} ({_num(ours['steady_ms_max'], 0)}) ms",
                       f"{_num(b, 0)} ({_num(native['steady_ms_max'], 0)}) ms", _ratio(a, b),
                       "-", "-"))
        a, b = ours["back_ms_median"], native["back_ms_median"]
        after = "resume" if action == "pause" else "it serves again (`start`)"
        goal = "-" if action == "pause" else "<= 50 ms"
        ok = None if action == "pause" or a is None else a <= 50
        if action != "pause" and a is None:
            ok = False
        out.append(Row("5", f"{names[action]}: instance gets calls again after {after}, "
                            "median (max)",
                       f"{_num(a, 0)} ({_num(ours['back_ms_max'], 0)}) ms"
                       + (f", {ours['not_back']} not back" if ours["not_back"] else ""),
                       f"{_num(b, 0)} ({_num(native['back_ms_max'], 0)}) ms"
                       + (f", {native['not_back']} not back" if native["not_back"] else ""),
                       _ratio(a, b), goal, _verdict(ok, f"{a:.0f} ms" if a is not None else
                                                    "never back")))
        if "aio" in raw and action in raw["aio"]["summary"]:
            out += _second_phase_rows(raw["aio"]["summary"][action], action, names[action],
                                      failed)
    return out


def _second_phase_rows(per: Mapping[str, Any], action: str, name: str,
                       failed: Callable[[Mapping[str, Any]], str]) -> list[Row]:
    """Scenario 5, second phase: AioBalancedChannel, and both drivers with hedging."""
    aio, native = per["aio balanced"], per["native rr"]
    runs = aio["runs"]
    out: list[Row] = []
    if action == "pause":
        goal, ok, miss = "<= 2 per run", aio["failed_max"] <= 2, f"max {aio['failed_max']} per run"
    else:
        goal, ok, miss = f"0 over {runs} runs", aio["failed_total"] == 0, \
            f"{aio['failed_total']} failed"
    out.append(Row("5", f"{name}: failed calls, AioBalancedChannel", failed(aio), failed(native),
                   "-", goal, _verdict(ok, miss)))
    a, b = aio["steady_ms_median"], native["steady_ms_median"]
    out.append(Row("5", f"{name}: time to steady state, AioBalancedChannel, median (max)",
                   f"{_num(a, 0)} ({_num(aio['steady_ms_max'], 0)}) ms",
                   f"{_num(b, 0)} ({_num(native['steady_ms_max'], 0)}) ms", _ratio(a, b), "-", "-"))
    a, b = aio["back_ms_median"], native["back_ms_median"]
    back_ok = None if action == "pause" else a is not None and a <= 50
    out.append(Row("5", f"{name}: gets calls again, AioBalancedChannel, median (max)",
                   f"{_num(a, 0)} ({_num(aio['back_ms_max'], 0)}) ms"
                   + (f", {aio['not_back']} not back" if aio["not_back"] else ""),
                   f"{_num(b, 0)} ({_num(native['back_ms_max'], 0)}) ms", _ratio(a, b),
                   "-" if action == "pause" else "<= 50 ms",
                   _verdict(back_ok, f"{a:.0f} ms" if a is not None else "never back")))
    sync_h, aio_h = per["balanced+hedge"], per["aio balanced+hedge"]
    hedged_ok = sync_h["failed_total"] == 0 and aio_h["failed_total"] == 0
    out.append(Row("5", f"{name}: failed calls, `hedge_after=0.1` + `retry_on`, "
                        "sync / aio", f"{failed(sync_h)} / {failed(aio_h)}", failed(native), "-",
                   f"0 over {runs} runs, both", _verdict(
                       hedged_ok, f"{sync_h['failed_total']} / {aio_h['failed_total']} failed")))
    return out


def weights_rows(raw: Mapping[str, Any]) -> list[Row]:
    """Scenarios 6 and 7 from ``bench.weights.measure``."""
    out: list[Row] = []
    prop = raw["propagation"]
    s, r = prop["from_write_start"], prop["from_write_return"]
    p99 = r["p99_ms"]
    out.append(Row("6", f"registry changed (`weight` write returned) -> first call routed by "
                        f"the new weights, p50 / p99 ({prop['changes']} changes)",
                   f"{_num(r['p50_ms'], 1)} / {_num(p99, 1)} ms", "n/a (round_robin has no weights)",
                   "-", "p99 <= 10 ms",
                   _verdict(None if p99 is None else p99 <= 10 and not prop["timeouts"],
                            f"p99 {p99:.1f} ms" if p99 is not None else "")))
    out.append(Row("6", "same, from the start of the `weight` write (includes its fsync), "
                        "p50 / p99",
                   f"{_num(s['p50_ms'], 1)} / {_num(s['p99_ms'], 1)} ms", "-", "-", "-", "-"))
    for label, res in raw["accuracy"].items():
        a, b = res["balanced"], res["native"]
        out.append(Row("7", f"max share error at {label}, {a['calls']:,} calls",
                       _num(a["max_error_pp"], 3, " pp"), _num(b["max_error_pp"], 3, " pp"),
                       "-", "< 1 pp", _verdict(a["max_error_pp"] < 1.0,
                                               f"{a['max_error_pp']:.2f} pp")))
        goal = label == "5:1:1"
        out.append(Row("7", f"longest run of one instance at {label}", str(a["longest_run"]),
                       str(b["longest_run"]), _ratio(a["longest_run"], b["longest_run"]),
                       "<= 4" if goal else "-",
                       _verdict(a["longest_run"] <= 4 if goal else None,
                                f"{a['longest_run']}")))
    return out


def command_rows(raw: Mapping[str, Any]) -> list[Row]:
    """Scenario 9: each command's median CPU (wall) time beside ``honcho --version``."""
    anchors = raw.get("anchors", {})
    honcho = anchors.get("honcho --version")
    python = anchors.get("python -c pass")
    rows = []
    for name, fig in raw.get("commands", {}).items():
        ours = f"{fig['cpu_s'] * 1000:.0f} ms CPU ({fig['wall_s'] * 1000:.0f} ms wall)"
        anchor = "-" if honcho is None else (
            f"{honcho['cpu_s'] * 1000:.0f} ms CPU ({honcho['wall_s'] * 1000:.0f} ms wall)")
        ratio = _ratio(fig["cpu_s"], honcho["cpu_s"] if honcho else None)
        goal = "<= 2.0x" if name != "--version" else "-"  # every everyday command
        met = "-" if goal == "-" or honcho is None else _verdict(
            fig["cpu_s"] <= 2 * honcho["cpu_s"], f"{fig['cpu_s'] / honcho['cpu_s']:.2f}x")
        rows.append(Row("9", f"`devcluster {name}` as a command vs `honcho --version` "
                             f"(`python -c pass`: {python['cpu_s'] * 1000:.0f} ms CPU)"
                        if python else f"`devcluster {name}` vs `honcho --version`",
                        ours, anchor, ratio, goal, met))
    return rows


def pause_rows(raw: Mapping[str, Any]) -> list[Row]:
    """Scenario 10: failed calls per run while one instance is frozen for ``hold_s``."""
    failed = raw.get("failed", {})
    rows = []
    for key, per_run in failed.items():
        label, _, width = key.partition(", ")
        if label == "native rr":
            continue
        native = failed.get(f"native rr, {width}", [])
        hedged = label.endswith("+hedge")
        rows.append(Row("10", f"{raw['hold_s']:g} s pause, {width}, `{label}`: failed calls per "
                              "run", " / ".join(map(str, per_run)),
                        " / ".join(map(str, native)) + " (native round_robin)", "-",
                        "0" if hedged else "-",
                        _verdict(max(per_run) == 0 if hedged and per_run else None,
                                 f"max {max(per_run)}" if per_run else "")))
    return rows


def reload_rows(raw: Mapping[str, Any]) -> list[Row]:
    """Scenario 11 from ``bench.reload.measure``."""
    s = raw["summary"]
    runs = s["runs"]

    def failed(xs: Sequence[int]) -> str:
        return f"{sum(xs)} ({sum(1 for x in xs if x)}/{len(xs)} runs, max {max(xs, default=0)})"

    f, stall = s["failed"], s["stall_ms_max"]
    rows = [
        Row("11", "reload --all of 3, 8 in flight: failed calls (longest stall)",
            f"{failed(f['reload'])} ({_num(stall['reload'])} ms)",
            f"restart: {failed(f['restart'])} ({_num(stall['restart'])} ms); down+up (honcho): "
            f"{failed(f['honcho'])} ({_num(stall['honcho'])} ms)", "-",
            f"0 over {runs} runs", _verdict(sum(f["reload"]) == 0, f"{sum(f['reload'])} failed")),
    ]
    for n, xs in s["fixed_failed"].items():
        codes = ", ".join(s["fixed_codes"])
        rows.append(Row("11", f"plain grpc client on one port (SO_REUSEPORT), {n} in flight: "
                             "failed calls", failed(xs) + (f"; {codes}" if codes and sum(xs) else ""),
                        "-", "-", f"0 over {runs} runs", _verdict(sum(xs) == 0, f"{sum(xs)} failed")))
    over = s["over_ms_median"]
    rows.append(Row("11", "reload time per instance: total - readiness, median (max)",
                    f"{_num(over)} ({_num(s['over_ms_max'])}) ms (readiness {_num(s['ready_ms_median'])} ms)",
                    "-", "-", "<= 200 ms", _verdict(over is not None and over <= 200,
                                                    f"{_num(over)} ms")))
    w = s["watch_ms_median"]
    rows.append(Row("11", "file save -> first reload step under --watch, median (max)",
                    f"{_num(w)} ({_num(s['watch_ms_max'])}) ms", "-", "-", "<= 150 ms",
                    _verdict(w is not None and w <= 150, f"{_num(w)} ms")))
    return rows


def flood_rows(raw: Mapping[str, Any]) -> list[Row]:
    """Scenario 12: the supervisor's CPU and the flood's wall time, beside honcho's."""
    tools = raw.get("tools", {})
    ours, theirs = tools.get("devcluster"), tools.get("honcho")
    if not ours or not theirs:
        return []
    what = f"{raw['megabytes']} MB of output from one instance"
    return [
        Row("12", f"{what}: the supervisor's CPU", f"{ours['cpu_s']:.2f} s",
            f"{theirs['cpu_s']:.2f} s", _ratio(ours["cpu_s"], theirs["cpu_s"]), "<= 1.0x",
            _verdict(ours["cpu_s"] <= theirs["cpu_s"],
                     f"{ours['cpu_s'] / theirs['cpu_s']:.2f}x")),
        Row("12", f"{what}: the flood's wall time", f"{ours['wall_s']:.2f} s",
            f"{theirs['wall_s']:.2f} s", _ratio(ours["wall_s"], theirs["wall_s"]), "-", "-"),
    ]


def xds_rows(raw: Mapping[str, Any]) -> list[Row]:
    """Scenarios 13-19 from ``bench.xds.measure``."""
    from bench import xds_report

    return xds_report.rows(raw)


def instruction_rows(raw: Mapping[str, Any]) -> list[Row]:
    """Scenario 20 from ``bench.instructions.measure``."""
    from bench import instructions

    return instructions.rows(dict(raw))


def table(results: Mapping[str, Any]) -> list[Row]:
    """Every row, scenario by scenario, from the raw figures present."""
    raw = results.get("raw", {})
    rows: list[Row] = []
    builders: list[tuple[str, Callable[[Any], list[Row]]]] = [
        ("supervisor", supervisor_rows), ("client", client_rows),
        ("failover", failover_rows), ("weights", weights_rows), ("commands", command_rows),
        ("pause", pause_rows), ("reload", reload_rows), ("log_flood", flood_rows),
        ("xds", xds_rows), ("instructions", instruction_rows)]
    for key, build in builders:
        if raw.get(key) is not None:
            rows.extend(build(raw[key]))
    return sorted(rows, key=lambda row: int(row.scenario))


def notes(results: Mapping[str, Any], rows: Sequence[Row]) -> list[str]:
    """Method notes, plus one line per missed goal."""
    out = []
    missed = [r for r in rows if r.met.startswith("NO")]
    for r in missed:
        out.append(f"**Missed:** scenario {r.scenario}, {r.what}: {r.met[3:].strip('()') or 'missed'}"
                   f" against a goal of {r.goal}.")
    if missed:
        out.append("Before acting on a miss, profile it on a quiet machine (`py-spy record -o "
                   "profile.svg -- python -m bench.<module> ...` or `pyinstrument`).")
    for group, error in results.get("errors", {}).items():
        first = error.strip().splitlines()[-1] if error.strip() else "error"
        out.append(f"**Error:** the {group} scenarios did not finish: `{first}` (traceback in "
                   "results.json).")
    out += [
        "Ratios are devcluster / anchor, measured in the same run; figures are medians unless "
        "said otherwise. On a 2-core machine every figure moves with whatever else runs: compare "
        "ratios, and rerun on a quiet machine before trusting absolute numbers.",
        "1: the devcluster figure is `devcluster up -d` until it returns (every instance "
        "health-checked); honcho's is `honcho start` until every greeter answers a SayHello, "
        "polled with a 10 ms reconnect backoff. The 'same criterion' line times foreground "
        "`devcluster up` by the same SayHello polling. The floor is the same greeters started "
        "by a plain `Popen` loop (no shell, no supervisor, no health check), timed as honcho "
        "is; where `up -d` spends the rest, see the waterfall below.",
        "2 and 8: SIGINT goes to the tool's process only. honcho's memory and CPU count every "
        "process of its tree but the greeters (its per-line helper and `sh -c`); devcluster's "
        "count the supervisor and its watchdog.",
        "3 and 4: three greeters started directly, one BalancedChannel/AioBalancedChannel vs one "
        "native channel with `round_robin` over `ipv4:a,b,c`, alternating rounds.",
        "5: three callers at once on one 3-greeter cluster (sequential, 1 s deadline): "
        "BalancedChannel with default options, the same with `retry_on={UNAVAILABLE}`, and "
        "native `round_robin`. By default BalancedChannel does not repeat a call the server had "
        "already seen (it sent its `devcluster-instance` header), so a SIGKILL in mid-call fails "
        "that call; `retry_on` repeats it. Failed calls list their status codes. A failed call "
        "is any call that ended in an error from the action "
        "to the end of the run; steady state ends with the last call that failed or touched the "
        "affected instance before the restore. Under pause, native round_robin is never steady "
        "while the instance is frozen: its figure is the hold time. 'Gets calls again' is from "
        "the registry's `serving` write after `start` (from `resume` for pause) to the first "
        "call served by the instance. A second phase on the same cluster runs "
        "AioBalancedChannel (default options) and both drivers with `hedge_after=0.1` and "
        "`retry_on={UNAVAILABLE}` (sequential callers too), beside native `round_robin` again.",
        "6: no anchor: grpc's round_robin has no weights. The change is `Cluster.weight`, the "
        "same registry write as `devcluster weight`; the switch is detected by real calls "
        "(weight 0 <-> 1000 on one instance). The goal is judged from the registry change "
        "(the write returned); the line below adds the write itself.",
        "7: the anchor is native `round_robin` with weights as repeated addresses "
        "(`ipv4:a,a,a,a,a,b,c`). Error is |observed - weight share| in percentage points.",
    ]
    if results.get("raw", {}).get("xds") is not None:
        from bench import xds_report

        out += xds_report.notes(results["raw"]["xds"])
    if results.get("raw", {}).get("instructions") is not None:
        from bench import instructions

        out += instructions.notes(results["raw"]["instructions"])
    return out


def markdown(results: Mapping[str, Any]) -> str:
    """results.md: the table, the machine, the command, notes."""
    meta = results["meta"]
    m = meta["machine"]
    rows = table(results)
    lines = [
        "# devcluster benchmarks",
        "",
        f"{'Quick smoke run (tiny sizes: not figures to quote). ' if meta.get('quick') else ''}"
        f"Measured {m['date']} in {meta.get('duration_s', 0):.0f} s.",
        "",
        "| scenario | devcluster | anchor | ratio | goal | met? |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r.scenario}. {SCENARIOS[r.scenario]}: {r.what} | {r.devcluster} | "
                     f"{r.anchor} | {r.ratio} | {r.goal} | {r.met} |")
    lines += [
        "",
        "## Machine",
        "",
        f"- {m['nproc']} CPUs: {m['cpu_model']}; {m['ram_gib']} GiB RAM; Linux {m['kernel']}",
        f"- Python {m['python']}, grpcio {m['grpcio']}, honcho {m['honcho']}",
        f"- devcluster {m['devcluster_commit']}; load average at start "
        f"{', '.join(str(x) for x in m['loadavg_at_start']) or '-'}",
        "",
        "## Reproduce",
        "",
        "From the repository root, after `pip install -e '.[test]'` (honcho comes with it):",
        "",
        "```",
        meta["command"],
        "```",
        "",
        "Scenario groups took (s): " + ", ".join(
            f"{k} {v:.0f}" for k, v in meta.get("seconds", {}).items()) + ".",
        "",
        "## Notes",
        "",
        *[f"- {n}" for n in notes(results, rows)],
        "",
    ]
    if results.get("raw", {}).get("waterfall"):
        from bench.waterfall import WATERFALL_END, WATERFALL_START, render

        lines += [WATERFALL_START, render(results["raw"]["waterfall"]), WATERFALL_END, ""]
    return "\n".join(lines)


README_START = "<!-- bench:start (written by python -m bench; do not edit by hand) -->"
README_END = "<!-- bench:end -->"


def readme_block(results: Mapping[str, Any], goals_only: bool = False) -> str:
    """The table of docs/performance.md (README's: only the rows with a goal): the results
    table and the machine line of this run."""
    m = results["meta"]["machine"]
    lines = ["| scenario | devcluster | anchor | ratio | goal | met? |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in table(results):
        if not goals_only or r.goal != "-":
            lines.append(_row_line(r))
    lines += ["", f"Machine: {m['nproc']} CPUs: {m['cpu_model']}; {m['ram_gib']} GiB RAM; "
                  f"Python {m['python']}, grpcio {m['grpcio']}, honcho {m['honcho']}; "
                  f"devcluster {m['devcluster_commit']}; load average at start "
                  f"{', '.join(str(x) for x in m['loadavg_at_start']) or '-'}; "
                  f"measured {m['date']}. Every row and note: `bench/results.md`."]
    return "\n".join(lines)


def update_readme(results: Mapping[str, Any], readme: Path, goals_only: bool = False) -> bool:
    """Replace the block between the bench markers of ``readme``; False if it has none."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    readme.write_text(text[:start + len(README_START)] + "\n"
                      + readme_block(results, goals_only) + "\n" + text[end:])
    return True


def write(results: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    full = dict(results)
    rows = table(results)
    full["table"] = [asdict(r) for r in rows]
    full["scenarios"] = {n: {"title": title, "rows": [asdict(r) for r in rows if r.scenario == n]}
                         for n, title in SCENARIOS.items()}
    js, md = out_dir / "results.json", out_dir / "results.md"
    js.write_text(json.dumps(full, indent=2, default=str) + "\n")
    md.write_text(markdown(results))
    return js, md


# -- merging a partial run into the committed results -----------------------------------

_ROW = re.compile(r"^\| (\d+)\. ")


def _merge_table(lines: list[str], new: Sequence[str], numbers: set[str]) -> list[str]:
    """``lines`` with the table rows of ``numbers`` replaced by ``new``, rows in order."""
    at = [i for i, line in enumerate(lines) if _ROW.match(line)]
    if not at:
        return lines
    kept = [lines[i] for i in at if _ROW.match(lines[i]).group(1) not in numbers]  # type: ignore[union-attr]
    merged = sorted([*kept, *new], key=lambda line: int(_ROW.match(line).group(1)))  # type: ignore[union-attr]
    rest = [line for i, line in enumerate(lines) if i not in set(at)]
    return rest[:at[0]] + merged + rest[at[0]:]


def _row_line(r: Row) -> str:
    return (f"| {r.scenario}. {SCENARIOS[r.scenario]}: {r.what} | {r.devcluster} | "
            f"{r.anchor} | {r.ratio} | {r.goal} | {r.met} |")


def _merge_notes(lines: list[str], notes_: Sequence[str], keys: Sequence[str]) -> list[str]:
    """``lines`` with the notes whose key (text up to ':') is in ``keys`` replaced."""
    drop = tuple(f"- {k}:" for k in keys) + tuple(f"- **Missed:** scenario {k}," for k in keys)
    kept = [line for line in lines if not line.startswith(drop)]
    try:
        at = kept.index("## Notes") + 2
    except ValueError:
        return kept
    end = next((i for i in range(at, len(kept)) if not kept[i].startswith("- ")), len(kept))
    return kept[:end] + [f"- {n}" for n in notes_] + kept[end:]


def _scenarios(results: Mapping[str, Any]) -> set[str]:
    """The scenarios of the groups in ``results`` (and of any row it has)."""
    return {r.scenario for r in table(results)} | {
        n for group in results["raw"] for n in GROUP_SCENARIOS.get(group, ())}


def merged_from(results: Mapping[str, Any]) -> str:
    """One line saying where merged rows come from: command, date, commit, load."""
    meta, m = results["meta"], results["meta"]["machine"]
    numbers = sorted(_scenarios(results), key=int)
    span = f"{numbers[0]}-{numbers[-1]}" if len(numbers) > 1 else "".join(numbers)
    return (f"{span}: measured apart from the rest, by `{meta['command']}` in "
            f"{meta.get('duration_s', 0):.0f} s on {m['date']}, devcluster "
            f"{m['devcluster_commit']}, load average at start "
            f"{', '.join(str(x) for x in m['loadavg_at_start']) or '-'}.")


def _merge_readme(readme: Path, new: Sequence[str], numbers: set[str], source: str) -> None:
    """README's bench block with the rows of ``numbers`` replaced, and ``source`` last."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if not 0 <= start < end:
        return
    head = source.split(":", 1)[0] + ": measured"
    block = [line for line in _merge_table(text[start:end].splitlines(), new, numbers)
             if not line.startswith(head)]
    while block and not block[-1].strip():
        block.pop()
    readme.write_text(text[:start] + "\n".join([*block, "", source]) + "\n" + text[end:])


def merge(results: Mapping[str, Any], out_dir: Path, readme: Path | None = None,
          summary: Path | None = None) -> tuple[Path, Path]:
    """Merge the groups of a partial run into ``out_dir``'s results.json and results.md
    (and README's table): their raw figures, rows and notes replace the old ones, every
    other row stays as it was measured."""
    js, md = out_dir / "results.json", out_dir / "results.md"
    full = json.loads(js.read_text())
    rows = table(results)
    numbers = _scenarios(results)
    for group, raw in results["raw"].items():
        full["raw"][group] = raw
        full.get("errors", {}).pop(group, None)
    full["meta"].setdefault("merged", {})[",".join(results["raw"])] = results["meta"]
    old = [r for r in full.get("table", []) if r["scenario"] not in numbers]
    full["table"] = sorted([*old, *(asdict(r) for r in rows)], key=lambda r: int(r["scenario"]))
    full["scenarios"] = {n: {"title": t, "rows": [r for r in full["table"] if r["scenario"] == n]}
                         for n, t in SCENARIOS.items()}
    js.write_text(json.dumps(full, indent=2, default=str) + "\n")
    new = [_row_line(r) for r in rows]

    def ours(note: str) -> bool:  # "13-19: ...", "15 and 16: ...", "**Missed:** scenario 13"
        key = note.split(":", 1)[0]
        return note.startswith("**Missed:**") or re.split(r"[ -]", key)[0] in numbers

    own = [merged_from(results), *(n for n in notes(results, rows) if ours(n))]
    keys = sorted({n.split(":", 1)[0] for n in own if not n.startswith("**")} | numbers)
    lines = _merge_notes(_merge_table(md.read_text().splitlines(), new, numbers), own, keys)
    md.write_text("\n".join(lines) + "\n")
    if readme is not None:
        _merge_readme(readme, new, numbers, merged_from(results))
    if summary is not None:  # README.md: the rows with a goal
        _merge_readme(summary, [_row_line(r) for r in rows if r.goal != "-"], numbers,
                      merged_from(results))
    return js, md


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    merging = args[:1] == ["--merge"]
    if len(args) != 1 + merging:
        print("usage: python -m bench.report [--merge] RESULTS_JSON", file=sys.stderr)
        return 2
    path = Path(args[-1])
    results = json.loads(path.read_text())
    if merging and results["meta"].get("quick"):
        print(f"{path} is a --quick run: its figures are not to be quoted; merge a full "
              "`python -m bench --only GROUPS` run", file=sys.stderr)
        return 2
    if merging:  # a partial run (python -m bench --only ...) into the committed results
        _, md = merge(results, ROOT / "bench", ROOT / "docs" / "performance.md",
                      ROOT / "README.md")
        print(md)
        return 0
    write(results, path.parent)
    print(path.parent / "results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
