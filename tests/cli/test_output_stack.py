"""One output stack (issue 25): ``client`` and ``demo`` draw with views, not rich; the
formatters of its cells."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from devcluster.cli.views import Terminal, check_mark, state_text, table, uptime


def test_table_has_a_title_aligned_columns_and_a_total_below_a_dashed_line() -> None:
    text = table(("instance", "calls"), [[("server1", ""), ("8", "")]], colour=False,
                 right=("calls",), title="8 calls, 0 failed", footer=[[("all", ""), ("8", "")]])
    assert text.splitlines() == ["8 calls, 0 failed", "instance  calls", "server1       8",
                                 "--------  -----", "all           8"]


def test_terminal_paints_only_when_asked() -> None:
    plain, colour = io.StringIO(), io.StringIO()
    for stream, wanted in ((plain, False), (colour, True)):
        term = Terminal(stream, colour=wanted, width=20)
        term.rule("step")
        term.print(f"{term.paint(*check_mark(True))} done", "")
    assert "\x1b[" not in plain.getvalue() and "\x1b[32m✓" in colour.getvalue()
    assert plain.getvalue().splitlines()[0] == "─" * 7 + " step " + "─" * 7


def test_no_cli_module_imports_rich() -> None:
    code = ("import sys, pkgutil, importlib, devcluster.cli as c\n"
            "for m in pkgutil.iter_modules(c.__path__): importlib.import_module(f'devcluster.cli.{m.name}')\n"
            "print('rich' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("seconds", "shown"), [
    (None, "-"), (0, "-"), (0.4, "0s"), (59.2, "59s"), (59.7, "59s"), (60, "1m00s"),
    (119.6, "1m59s"), (120, "2m00s"), (3599.7, "59m59s"), (3600, "1h00m"), (7199.9, "1h59m"),
    (7500, "2h05m"), (90000, "25h00m")])
def test_uptime_is_whole_seconds_elapsed_never_60(seconds: float | None, shown: str) -> None:
    """Issue 26 item 16: `ps` showed 1m60s and 59m60s (each part rounded on its own)."""
    assert uptime(seconds) == shown


def test_a_long_last_exit_keeps_the_ps_cell_short() -> None:
    """Issue 26 item 16: a preload error made `ps` 230 columns wide; the cell shows the
    reason's first clause (the whole text is in `ps --json` and the log)."""
    row = {"state": "failed", "enabled": True,
           "last_exit": "preload failed: importing 'mymodule' started threads (2 Python, 3 "
                        "in all: Thread-1 (wait)); a fork copies only one of them (gRPC "
                        "forbids threads, channels and servers before a fork): preload only "
                        "modules that start nothing when imported"}
    assert state_text(row) == "failed (preload failed: importing 'mymodule' started threads...)"
    assert state_text({**row, "last_exit": "x" * 300}) == f"failed ({'x' * 53}...)"
    assert state_text({**row, "last_exit": "exit 1"}) == "failed (exit 1)"
