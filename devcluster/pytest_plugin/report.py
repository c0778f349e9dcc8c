"""The ``devcluster`` section of a failing test's report: what the cluster did.

::

    timeline (seconds from the start of the test):
      +0.412  server2 kill SIGKILL (asked by test_x.py::test_failover)
      +0.431  server2 serving -> killed
      +0.431  server2 exited (signal SIGKILL)
      +0.502  server2 failed UNAVAILABLE, call went on to server1 (call 7)
    calls per instance (through cluster.channel()):
      server1       9 ok      0 failed
    last log lines:
    --- server1 (last 20 lines) ---
"""

from __future__ import annotations

from collections.abc import Mapping

from devcluster.events import Event
from devcluster.pytest_plugin.recording import PluginCluster

LOG_LINES = 20
#: Events shown at most, the latest kept (a test making thousands of failovers).
MAX_EVENTS = 200


def timeline_lines(events: list[Event], t0: float) -> list[str]:
    shown = events[-MAX_EVENTS:]
    lines = [f"  ... {len(events) - len(shown)} earlier events left out"] if len(shown) < len(
        events) else []
    lines += [f"  {e.time - t0:+8.3f}  {e.describe()}" for e in shown]
    return lines or ["  (nothing happened to the cluster during the test)"]


def calls_lines(now: Mapping[str, Mapping[str, int]],
                before: Mapping[str, Mapping[str, int]]) -> list[str]:
    lines = []
    for name, row in now.items():
        was = before.get(name, {})
        ok, failed = row["ok"] - was.get("ok", 0), row["failed"] - was.get("failed", 0)
        if ok or failed:
            lines.append(f"  {name:<12} {ok:>6} ok {failed:>6} failed")
    return lines or ["  (no calls through cluster.channel() during the test)"]


def log_lines(cluster: PluginCluster, n: int = LOG_LINES) -> list[str]:
    out = []
    for log in sorted((cluster.state_dir / "logs").glob("*.log")):
        if log.stem == "devcluster":
            continue
        lines = cluster.logs(log.stem, n)
        out.append(f"--- {log.stem} (last {len(lines)} lines) ---")
        out.extend(lines)
    out.append(f"--- devcluster supervisor (last {n} lines) ---")
    out.extend(cluster.logs(None, n))
    return out


def section(cluster: PluginCluster, t0: float,
            calls_before: Mapping[str, Mapping[str, int]]) -> tuple[str, str]:
    """(title, text) of the report section for one cluster a failed test used."""
    shared = " (shared by the run's workers)" if cluster.shared else ""
    parts = [f"state dir: {cluster.state_dir}{shared}",
             "timeline (seconds from the start of the test):",
             *timeline_lines(cluster.events(since=t0), t0),
             "calls per instance (through cluster.channel()):",
             *calls_lines(cluster.calls(), calls_before),
             "last log lines:",
             *log_lines(cluster)]
    return f"devcluster: {cluster.procfile}", "\n".join(parts)
