"""The client package's shape: no CLI in the library, no import cycles, one set of options."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

from devcluster.client import AioBalancedChannel, BalancedChannel

PACKAGE = Path(__file__).resolve().parent.parent / "devcluster" / "client"


def test_importing_the_client_loads_neither_rich_nor_typer() -> None:
    code = ("import sys, devcluster.client as c; c.AioBalancedChannel; "
            "print(sorted(m for m in ('rich', 'typer', 'click') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PACKAGE.parent.parent).stdout
    assert out.strip() == "[]"


def _client_imports(path: Path) -> set[str]:
    """Modules of the client package that ``path`` imports anywhere (TYPE_CHECKING too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n.split(".")[2] for n in names
                     if n.startswith("devcluster.client.") and len(n.split(".")) > 2)
    return found - {path.stem}


def test_no_import_cycles_inside_the_client_package() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    graph = {m: _client_imports(PACKAGE / f"{m}.py") & modules for m in modules}

    def visit(module: str, path: list[str]) -> None:
        for nxt in sorted(graph[module]):
            assert nxt not in path, f"import cycle: {' -> '.join([*path, nxt])}"
            visit(nxt, [*path, nxt])

    for module in sorted(graph):
        visit(module, [module])


def test_both_channels_take_the_same_keyword_arguments() -> None:
    sync = inspect.signature(BalancedChannel)
    aio = inspect.signature(AioBalancedChannel)
    assert sync == aio
    for name in ("policy", "retry_on", "eject_after", "on_call", "hedge_after", "options",
                 "order", "default_wait"):
        assert sync.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY


def test_channel_options_name_every_keyword_argument_of_the_channels() -> None:
    """``Cluster.channel(**options)`` is typed by ChannelOptions: it must list exactly the
    channels' keyword-only arguments, or a type checker refuses a valid one."""
    from devcluster.client.options import ChannelOptions

    keyword_only = {n for n, p in inspect.signature(BalancedChannel).parameters.items()
                    if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(ChannelOptions.__annotations__) == keyword_only
