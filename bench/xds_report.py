"""The rows and notes of scenarios 13-19 (``bench.xds``), for ``bench.report``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.report import Row, _num, _ratio, _verdict

XDS = "xds, 8 in flight"
NATIVE = "native rr, 8 in flight"
XDS_SEQ = "xds, sequential"
NATIVE_SEQ = "native rr, sequential"


def rows(raw: Mapping[str, Any]) -> list[Row]:
    """Every row of scenarios 13-19 present in ``raw``."""
    out: list[Row] = []
    if "propagation" in raw:
        out += propagation_rows(raw["propagation"])
    if "shares" in raw:
        out += share_rows(raw["shares"])
    if "failover" in raw:
        out += failover_rows(raw["failover"])
    if "supervisor" in raw:
        out += supervisor_rows(raw["supervisor"])
    for row in raw.get("health", []):
        out += health_rows(row, raw.get("health", []))
    if "faults" in raw:
        out += fault_rows(raw["faults"])
    return out


def _p(s: Mapping[str, Any]) -> str:
    return f"{_num(s['p50_ms'], 1)} / {_num(s['p99_ms'], 1)} ms"


def propagation_rows(raw: Mapping[str, Any]) -> list[Row]:
    x, b = raw["xds"], raw["balanced"]
    r, s = x["from_write_return"], x["from_write_start"]
    p99 = r["p99_ms"]
    nacos = f"Nacos push ~{raw['nacos_push_ms']:.0f} ms (stated)"
    return [
        Row("13", "registry `weight` write returned -> first call of a grpcio client on "
                  f"`xds:///greeter` routed by the new weights, p50 / p99 ({x['changes']} changes)",
            _p(r), f"balanced client {_p(b['from_write_return'])}; {nacos}", "-",
            "p99 <= 10 ms", _verdict(None if p99 is None else p99 <= 10 and not x["timeouts"],
                                     f"p99 {_num(p99, 1)} ms")),
        Row("13", "same, from the start of the registry write (includes its fsync), p50 / p99",
            _p(s), f"balanced client {_p(b['from_write_start'])}; {nacos}",
            _ratio(s["p99_ms"], b["from_write_start"]["p99_ms"]), "-", "-"),
    ]


def share_rows(raw: Mapping[str, Any]) -> list[Row]:
    x, b, n = raw["xds"], raw["balanced"], raw["native"]
    goal = raw["expected_pct"]
    return [Row("14", f"5:1:1 over {x['calls']:,} calls on `xds:///greeter`: the weight-5 "
                      "instance's share (largest error of any instance)",
                f"{x['share_pct']:.1f} % ({x['max_error_pp']:.1f} pp)",
                f"balanced {b['share_pct']:.1f} % ({b['max_error_pp']:.1f} pp); native rr over "
                f"`a,a,a,a,a,b,c` {n['share_pct']:.1f} % ({n['max_error_pp']:.1f} pp)", "-",
                f"within 2 pp of {goal:.1f} %",
                _verdict(abs(x["error_pp"]) <= 2.0, f"{x['error_pp']:+.1f} pp"))]


def _failed(s: Mapping[str, Any]) -> str:
    per = s["failed_per_run"]
    codes = f" ({', '.join(s['codes'])})" if s["codes"] else ""
    return " / ".join(map(str, per)) + codes


def failover_rows(raw: Mapping[str, Any]) -> list[Row]:
    summary, settings = raw["summary"], raw["settings"]
    runs = settings["runs"]
    out: list[Row] = []
    what = {"stop": "`stop`", "kill": "SIGKILL (the route's retry policy)",
            "reload": "`reload --all` of 3"}
    for action, label in what.items():
        s = summary.get(action, {}).get(XDS)
        if not s:
            continue
        worst = max(s["failed_per_run"], default=0)
        out.append(Row("15", f"{label}, 8 in flight, 1 s deadline: failed calls per run, "
                             "`xds:///greeter`", _failed(s),
                       _failed(summary[action][NATIVE]) + " (native round_robin)", "-",
                       f"0 over {runs} runs", _verdict(worst == 0, f"max {worst}")))
    pause = summary.get("pause", {})
    if pause.get(XDS_SEQ):
        s = pause[XDS_SEQ]
        worst = max(s["failed_per_run"], default=0)
        out.append(Row("15", f"`pause` for {settings['hold_s']:g} s, sequential calls, 1 s "
                             "deadline, default health checks: failed calls per run", _failed(s),
                       _failed(pause[NATIVE_SEQ]) + " (native round_robin)", "-", "<= 3",
                       _verdict(worst <= 3, f"max {worst}")))
        out.append(Row("15", "same pause, 8 in flight", _failed(pause[XDS]),
                       _failed(pause[NATIVE]) + " (native round_robin)", "-", "-", "-"))
    out += rejoin_rows(summary)
    return out


def rejoin_rows(summary: Mapping[str, Any]) -> list[Row]:
    def back(label: str) -> tuple[list[float], int]:
        per = [summary.get(a, {}).get(label) for a in ("stop", "kill")]
        ms = [x for s in per if s for x in s["back_ms"]]
        return ms, sum(s["not_back"] for s in per if s)

    ours, lost = back(XDS)
    theirs, _ = back(NATIVE)
    if not ours and not lost:
        return []

    def fig(ms: Sequence[float]) -> str:
        if not ms:
            return "-"
        return f"{_num(sorted(ms)[len(ms) // 2])} ms (max {_num(max(ms))})"

    worst = max(ours, default=None)
    return [Row("16", f"restarted instance (`stop` or SIGKILL, then `start`) -> its first call "
                      f"on `xds:///greeter`, from its `serving` write, median (max) of "
                      f"{len(ours) + lost}", fig(ours) + (f", {lost} not back" if lost else ""),
                fig(theirs) + " (native round_robin)",
                _ratio(sorted(ours)[len(ours) // 2] if ours else None,
                       sorted(theirs)[len(theirs) // 2] if theirs else None),
                "<= 50 ms", _verdict(None if worst is None else worst <= 50 and not lost,
                                     f"max {_num(worst)} ms"))]


def supervisor_rows(raw: Mapping[str, Any]) -> list[Row]:
    w, wo, k, n = raw["with"], raw["without"], raw["clients"], raw["n"]
    cpu = _ratio(w["idle_cpu_pct"], wo["idle_cpu_pct"])
    uss = _ratio(w["uss_mib"], wo["uss_mib"])
    out = [
        Row("17", f"supervisor idle CPU with {k} xDS clients connected vs none, N={n}",
            f"{w['idle_cpu_pct']:.2f} %", f"{wo['idle_cpu_pct']:.2f} % (no client)", cpu,
            "<= 1.10x", _verdict(w["idle_cpu_pct"] <= 1.1 * wo["idle_cpu_pct"], cpu)),
        Row("17", f"supervisor USS with {k} xDS clients connected vs none, N={n}",
            f"{w['uss_mib']:.1f} MiB", f"{wo['uss_mib']:.1f} MiB (no client)", uss,
            "<= 1.10x", _verdict(w["uss_mib"] <= 1.1 * wo["uss_mib"], uss)),
    ]
    up = raw["up_detached"]
    if up.get("before_s") is not None:
        r = _ratio(up["now_s"], up["before_s"])
        out.append(Row("17", f"`up -d`, N={n}, vs the supervisor before it served xDS "
                             f"({up['before_commit']}), median (fastest) of {up['runs']}",
                       f"{1000 * up['now_s']:,.0f} ({1000 * min(up['now']):,.0f}) ms",
                       f"{1000 * up['before_s']:,.0f} ({1000 * min(up['before']):,.0f}) ms", r,
                       "<= 1.0x", _verdict(up["now_s"] <= up["before_s"], r)))
    return out


def health_rows(row: Mapping[str, Any], every: Sequence[Mapping[str, Any]]) -> list[Row]:
    if row["health_period"] != "default":
        return []
    off = next((r for r in every if r["n"] == row["n"] and r["health_period"] != "default"),
               None)
    cpu = row["idle_cpu_pct"]
    return [Row("18", f"supervisor idle CPU with continuous health checks (`health_period` "
                      f"1 s, the default) vs off (`health_period = 0`), N={row['n']}",
                f"{cpu:.2f} %", "-" if off is None else f"{off['idle_cpu_pct']:.2f} % (off)",
                _ratio(cpu, None if off is None else off["idle_cpu_pct"]), "< 1 %",
                _verdict(cpu < 1.0, f"{cpu:.2f} %"))]


def fault_rows(raw: Mapping[str, Any]) -> list[Row]:
    asked = raw["asked"]
    a, d = asked["abort_pct"], asked["delay_pct"]
    out = []
    for label, who in (("xds", "grpcio on `xds:///greeter`"), ("balanced", "balanced client")):
        s = raw.get(label)
        if not s:
            continue
        delay = s.get("delay_net_pct", s["delay_pct"])
        ok = abs(s["abort_pct"] - a) <= 2.0 and delay is not None and abs(delay - d) <= 2.0
        out.append(Row("19", f"`fault greeter --delay {asked['fault'][0]} --abort "
                             f"{asked['fault'][1]}`, {s['calls']:,} calls, 8 in flight, {who}: "
                             f"aborted / delayed (>= {1000 * asked['delay_s']:.0f} ms, net of "
                             "calls that slow anyway)",
                       f"{s['abort_pct']:.1f} % / {_num(delay, 1)} % (raw {s['delay_pct']:.1f} %)",
                       f"asked {a:g} % / {d:g} % (slow without the fault: "
                       f"{s['slow_without_fault_pct']:.1f} %)", "-", "within 2 pp of each",
                       _verdict(ok, f"{s['abort_pct'] - a:+.1f} / "
                                    f"{_num(None if delay is None else delay - d, 1)} pp")))
    return out


#: What each note is about (its text up to the first colon): a merge replaces these.
NOTE_KEYS = ("13-19", "13", "15 and 16", "17 and 18", "19")


def notes(raw: Mapping[str, Any]) -> list[str]:
    """Method notes of scenarios 13-19."""
    return [
        "13-19: a plain grpcio channel on `xds:///greeter` with `GRPC_XDS_BOOTSTRAP` set to "
        "the supervisor's bootstrap file (`Cluster.xds()`): weights, health, retries and "
        "faults come from the supervisor's ADS server, none of our code is in the client. "
        "One 3-greeter cluster with default health settings (`bench.xds`).",
        "13: `bench.weights`' scenario 6 loop (weight 0 <-> 1000 on one instance) through "
        "the balanced client, then through the xDS channel, on the same cluster; each "
        "change is a bare registry write (`Cluster.weight`, as in scenario 6, also waits "
        "for the supervisor's timeline, which can outlast the propagation itself). Nacos's "
        "push (~0.5 s) is a stated figure, not measured here.",
        "15 and 16: callers with a 1 s deadline run all the time, 8 in flight and "
        "sequential, on xDS channels and on native `round_robin` over `ipv4:a,b,c` (no "
        "control plane); each run acts on one instance in turn (`start` 1 s after `stop` "
        "or SIGKILL; `resume` after the pause). Failed calls: as in scenario 5, until the "
        "instance is back for every caller (1 s after `reload --all`). Back: from the "
        "registry's `serving` write to the first call it served (of the 8 callers).",
        "17 and 18: idle CPU counts the supervisor and its watchdog (`bench.supervisor`'s "
        "rule); each xDS client is a process of its own (its own ADS stream), connected "
        "and idle. `up -d` alternates this tree and the parent of the commit that made "
        "the supervisor serve xDS (`git archive`). Health checks off: `health_period = 0` "
        "in devcluster.toml.",
        "19: 'delayed' is a call that took >= the delay, net of the calls that are that "
        "slow anyway: the same test before the fault gives their share s, and observed = "
        "d + (1 - d) s gives d (the raw share beside it).",
    ]
