"""The house: layers that import one way, and rooms of one job (issue 12).

Lowest first: grammar, plan, store, engine, results, faces.  Each module may import only
modules of its own layer or of layers below, with no cycle among modules, and imports
inside functions are kept for loading heavy or optional libraries late, never to get
around a cycle.  Read from the source (the ``import`` statements, ``if TYPE_CHECKING:``
blocks left out: they never run), as import-linter's layer contracts would.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import parsl_flows

PACKAGE = Path(parsl_flows.__file__).parent

LAYERS = {
    "grammar": ["errors", "mapspec", "ranges"],
    "plan": ["attributes", "step", "nodes", "shapes", "workflow", "visualize"],
    "store": [
        "files",
        "element_folders",
        "numbers_file",
        "store",
        "status",
        "processes",
        "lease",
        "lock",
        "compact",
        "provenance",
        "dataset",
        "write_datasets",
    ],
    "engine": ["engine"],
    "results": [
        "selection",
        "reproduce",
        "preview",
        "run",
        "launch",
        "report",
        "widgets",
        "outcome_plot",
    ],
    "faces": ["cli", "__main__", "__init__"],
}
ORDER = list(LAYERS)

#: Imports inside functions, each with why it waits for the call.
LATE_IMPORTS = {
    ("parsl_flows", "parsl_flows.dataset"): "xarray loads when results are asked for",
    ("parsl_flows.run", "parsl_flows.dataset"): "xarray loads when results are asked for",
    ("parsl_flows.store", "parsl_flows.dataset"): "xarray loads when results are asked for",
    ("parsl_flows.report", "parsl_flows.widgets"): "ipywidgets is optional",
    ("parsl_flows.selection", "parsl_flows.dataset.layout"): "xarray loads for coordinates",
    ("parsl_flows.run", "parsl_flows.outcome_plot"): "xarray and matplotlib load for a picture",
    ("parsl_flows.engine.environment", "parsl_flows.engine.configs"): "Parsl loads at a run",
    ("parsl_flows.engine.slurm", "parsl_flows.engine.configs"): "Parsl loads at a run",
}

MAX_LINES = 420  # "no module over about 400 lines"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    rest = module.split(".")[1:] or ["__init__"]
    for layer, heads in LAYERS.items():
        if rest[0] in heads:
            return layer
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def imports(path: Path) -> list[tuple[str, bool]]:
    """``(module imported, inside a function)`` for each parsl_flows import of ``path``."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] == "parsl_flows":
                    for alias in child.names:  # "from . import report" names a module
                        sub = f"{target}.{alias.name}"
                        where = PACKAGE.parent / sub.replace(".", "/")
                        is_module = where.with_suffix(".py").exists() or where.is_dir()
                        found.append((sub if is_module else target, nested))
            elif isinstance(child, ast.Import):
                found.extend(
                    (a.name, nested) for a in child.names if a.name.startswith("parsl_flows")
                )
            visit(child, nested)

    visit(ast.parse(path.read_text()), False)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
EDGES = {m: imports(p) for m, p in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_layer_and_those_below(module: str) -> None:
    mine = ORDER.index(layer_of(module))
    for target, _ in EDGES[module]:
        theirs = ORDER.index(layer_of(target))
        assert theirs <= mine, f"{module} ({ORDER[mine]}) imports {target} ({ORDER[theirs]})"


def test_imports_inside_functions_only_load_libraries_late() -> None:
    late = {(m, t) for m, edges in EDGES.items() for t, nested in edges if nested}
    assert late == set(LATE_IMPORTS), late ^ set(LATE_IMPORTS)


def test_no_module_imports_itself_round_a_cycle() -> None:
    graph = {m: {t for t, _ in edges if t in MODULES and t != m} for m, edges in EDGES.items()}
    # A package imports its own modules (``from .building import ...``); that is no cycle,
    # but a module importing its package back would be.
    done: set[str] = set()

    def walk(m: str, path: list[str]) -> None:
        if m in path:
            cycle = [*path[path.index(m) :], m]
            raise AssertionError(" -> ".join(cycle))
        if m in done:
            return
        for t in sorted(graph[m]):
            walk(t, [*path, m])
        done.add(m)

    for m in sorted(graph):
        walk(m, [])


def test_no_room_over_about_400_lines() -> None:
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, big


def test_the_layers_cover_every_module() -> None:
    for module in MODULES:
        layer_of(module)


def test_no_module_is_named_like_a_standard_library_module() -> None:
    # interchange_guard.py runs as a script, which puts parsl_flows/engine first on the
    # interchange's sys.path: an engine/numbers.py once hid the standard library's
    # `numbers` there, and every interchange failed to start.
    clashes = sorted(
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.stem in sys.stdlib_module_names
    )
    assert not clashes, f"rename these, they hide standard library modules: {clashes}"


def test_importing_the_package_does_not_load_parsl() -> None:
    # Parsl takes most of a second to import.  It loads when a run starts, not for the
    # status commands, nor in the helper that writes dataset.nc files beside a run.
    import subprocess

    code = "import sys, parsl_flows.write_datasets, parsl_flows.cli; print('parsl' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
