"""The package shape the import-linter contracts describe, plus what they cannot say: no import cycles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_a_builtin_command_that_cannot_be_imported_fails_loudly(monkeypatch) -> None:  # noqa: ANN001
    """A built-in command whose module cannot be imported must break ``cvload``, never vanish from --help."""
    import sys

    import pytest

    from cvload.cli import build_parser

    monkeypatch.setitem(sys.modules, "cvload.commands.report", None)  # importing it raises ModuleNotFoundError
    with pytest.raises(ModuleNotFoundError, match="cvload.commands.report"):
        build_parser()


def test_only_the_api_registry_tells_apis_apart() -> None:
    """Code that asks which API a run is asks its spec (``cvload.apis``), never compares ``api`` names."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "cvload"
    comparing = re.compile(r"\bapi\s*[!=]=")
    found = [f"{path.relative_to(root.parent)}:{n}: {line.strip()}" for path in sorted(root.rglob("*.py"))
             if path.name != "apis.py" for n, line in enumerate(path.read_text().splitlines(), 1)
             if comparing.search(line)]
    assert not found, "\n".join(found)


def test_the_module_map_is_made_from_the_docstrings() -> None:
    """docs/architecture.md's module map lists every module with its docstring's first sentence."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "module_map.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
