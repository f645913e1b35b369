"""The layers hold: `farm` (the library) imports nothing of the worker runtime, the dashboard or
the CLI, and no package's modules import each other in a circle.

Imports are read from the source (every `import`, at module level, inside functions and under
TYPE_CHECKING alike: a late import is still a dependency, only a hidden one), so a rule breaks
here before it breaks at run time.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("farm", "farmcli", "workers", "dashboard")
ABOVE_FARM = ("workers", "dashboard", "farmcli")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }


def imported_names(source: str, module: str, is_package: bool) -> Iterator[str]:
    """Every module name `source` imports; `from x import y` yields `x` and `x.y` (y may be a
    submodule). Relative imports are resolved against `module`."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Project module -> the project modules it imports (names outside the project dropped)."""
    return {
        module: {
            name
            for name in imported_names(path.read_text(), module, path.name == "__init__.py")
            if name in modules and name != module
        }
        for module, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def within(graph: dict[str, set[str]], package: str) -> dict[str, set[str]]:
    def inside(name: str) -> bool:
        return name == package or name.startswith(f"{package}.")

    return {m: {t for t in targets if inside(t)} for m, targets in graph.items() if inside(m)}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(project_modules())


def test_farm_imports_nothing_of_the_packages_above_it() -> None:
    offences = [
        f"{module} imports {name}"
        for module, path in project_modules().items()
        if module.split(".")[0] == "farm"
        for name in imported_names(path.read_text(), module, path.name == "__init__.py")
        if name.split(".")[0] in ABOVE_FARM
    ]
    assert offences == []


@pytest.mark.parametrize("package", ["farm", "farmcli"])
def test_no_import_circle_among_a_packages_modules(graph, package: str) -> None:
    assert cycles(within(graph, package)) == []


def test_the_circles_once_broken_are_edges_no_more(graph) -> None:
    """The circles there were, each by the edge that closed it: the modules that act on the
    pipeline (memory, acceleration) import it, never the reverse; the tiny builder imports
    nothing of the presets that build through it; the CLI's commands never import its group."""
    assert not graph["farm.render.pipeline"] & {"farm.render.memory", "farm.render.acceleration"}
    assert "farm.render.presets" not in graph["farm.render.tiny"]
    assert all("farmcli.main" not in graph[m] for m in within(graph, "farmcli"))


def test_the_checker_sees_late_and_type_checking_imports() -> None:
    """What the rules above rest on: an import inside a function or under TYPE_CHECKING, and
    a relative one, count as much as one at the top of the module."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from farm.render.pipeline import PhotoMakerPipeline\n"
        "def run():\n    from workers.supervisor import run_workers\n"
        "from .memory import VramMode\n"
    )
    names = set(imported_names(source, "farm.render.acceleration", is_package=False))
    assert {"farm.render.pipeline", "workers.supervisor", "farm.render.memory"} <= names
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_importing_the_library_loads_no_worker_dashboard_or_cli_module() -> None:
    """Import every module of `farm` (its migrations aside: Alembic runs those) in a fresh
    interpreter, and look at what came along."""
    library = sorted(
        m for m in project_modules() if m.split(".")[0] == "farm" and ".migrations" not in m
    )
    assert {"farm", "farm.jobs", "farm.story", "farm.context"} <= set(library)
    script = (
        "import importlib, json, sys\n"
        f"for name in {library!r}:\n    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{list(ABOVE_FARM)!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
