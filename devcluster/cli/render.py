"""How instances look on a terminal, or as JSON for a script."""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table

from devcluster.cli.app import out


def _uptime(seconds: float | None) -> str:
    if not seconds:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


def _mib(n: int | None) -> str:
    return f"{n / 1048576:.1f} MiB" if n else "-"


def _known(value: object, fmt: str = "{}") -> str:
    """A value of the instance schema; None (not known on this path) shows as ``-``."""
    return "-" if value is None else fmt.format(value)


_STATE_STYLE = {"serving": "green", "starting": "yellow", "draining": "yellow",
                "paused": "magenta", "backoff": "yellow", "failed": "red", "killed": "red",
                "exited": "red", "stopped": "dim"}


def _print_instances(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("NAME", "STATE", "PID", "ADDRESS", "WEIGHT", "UPTIME", "RESTARTS", "CPU%", "RSS"):
        table.add_column(col, justify="right" if col in {"PID", "WEIGHT", "RESTARTS", "CPU%",
                                                          "RSS"} else "left")
    for r in rows:
        style = _STATE_STYLE.get(r["state"], "")
        state = r["state"] + (" (disabled)" if r["enabled"] is False else "")
        if r.get("last_exit") and r["state"] in {"exited", "failed", "killed", "backoff"}:
            state += f" ({r['last_exit']})"
        table.add_row(r["name"], f"[{style}]{state}[/{style}]" if style else state,
                      str(r["pid"] or "-"), r["address"] or "-", _known(r["weight"]),
                      _uptime(r["uptime_s"]), str(r["restarts"]),
                      _known(r["cpu_percent"], "{:.1f}"), _mib(r["rss_bytes"]))
    out.print(table)


