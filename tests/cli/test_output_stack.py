"""One output stack (issue 25): ``client`` and ``demo`` draw with views, not rich."""

from __future__ import annotations

import io
import subprocess
import sys

from devcluster.cli.views import Terminal, check_mark, table


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
