"""The package shape the import-linter contracts describe, plus what they cannot say: no import cycles."""

from __future__ import annotations

import grimp


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of modules (Tarjan): each group of two or more is an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in graph.find_modules_directly_imported_by(module):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return groups


def test_no_import_cycles_between_modules() -> None:
    # Function-level (lazy) imports count too: a lazy cycle is still a cycle a reader has to untangle.
    graph = grimp.build_graph("cvload", "server_bootstrap")
    assert _cycles(graph) == []


def test_cvload_never_imports_server_bootstrap() -> None:
    graph = grimp.build_graph("cvload", "server_bootstrap")
    offenders = [m for m in graph.modules if m.startswith("cvload")
                 and any(i.startswith("server_bootstrap") for i in graph.find_modules_directly_imported_by(m))]
    assert offenders == []
