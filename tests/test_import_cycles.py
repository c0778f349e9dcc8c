"""No import cycles between devcluster's modules, of any kind (TYPE_CHECKING included).

A cycle is where "edit N places and keep them identical" starts: two modules that each
need the other cannot be understood, tested or moved alone. grimp (import-linter's
graph) reads every import statement, including those under ``if TYPE_CHECKING:`` and
inside functions.
"""

from __future__ import annotations

import grimp


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:
        nonlocal counter
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if not child.startswith("devcluster"):
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for module in sorted(graph.modules):
        if module.startswith("devcluster") and module not in index:
            visit(module)
    return found


def test_no_import_cycles() -> None:
    graph = grimp.build_graph("devcluster")
    # A package imports its own __init__ implicitly; only module-to-module edges count.
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_check_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for name in ("devcluster.a", "devcluster.b", "devcluster.c"):
        graph.add_module(name)
    graph.add_import(importer="devcluster.a", imported="devcluster.b")
    graph.add_import(importer="devcluster.b", imported="devcluster.a")
    graph.add_import(importer="devcluster.b", imported="devcluster.c")
    assert _cycles(graph) == [["devcluster.a", "devcluster.b"]]
