"""Imports: every package imports first in a fresh interpreter; heavy optional libraries load only
in the code that uses them (an import SET, not a time); the tree is layered, with no import that
runs back up and no cycle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src"

# The modules that import across packages (data, models, distill, explain, metrics, training).
ENTRY_POINTS = ["kdlens.demo", "kdlens.distill", "kdlens.explain", "kdlens.metrics.evaluate"]


def test_every_package_imports_first_in_a_fresh_interpreter():
    """Catches import cycles that only show when a module is the first one imported."""
    children = {name: subprocess.Popen([sys.executable, "-c", f"import {name}"], stderr=subprocess.PIPE, text=True) for name in ENTRY_POINTS}
    failures = {name: child.communicate()[1].strip().splitlines()[-1:] for name, child in children.items() if child.wait() != 0}
    if failures:
        pytest.fail(f"imports that fail when first: {failures}")


# ---------------------------------------------------------------- what an import loads

HEAVY = {"captum", "zennit", "skimage", "matplotlib", "onnx", "onnxruntime", "timm", "lightning"}
"""Libraries only the code that uses them may import (explainers, figures, export, timm models,
training)."""


def loaded_by(code: str) -> set[str]:
    """The top-level packages in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.partition('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_reading_a_config_loads_no_heavy_library():
    assert not loaded_by("import kdlens.config") & (HEAVY | {"torch"})
    # Validating looks every name up in its registry (datasets, models, loss terms: torch), and
    # still loads none of them; nor torchvision, whose import alone takes longer than a dry run may.
    distill = SRC.parent / "configs" / "published" / "cifar100" / "e2kd_resnet32x4_resnet8x4.yaml"
    loaded = loaded_by(f"from kdlens.config import load_config\nload_config({str(distill)!r})")
    assert "torch" in loaded and not loaded & (HEAVY | {"torchvision"})


def test_the_command_line_loads_not_even_torch():
    loaded = loaded_by("import kdlens.cli\ntry:\n    kdlens.cli.app(['--help'])\nexcept SystemExit:\n    pass")
    assert not loaded & (HEAVY | {"torch", "pydantic", "numpy"})


def test_the_runs_layer_and_the_explainer_registry_stay_light():
    assert not loaded_by("import kdlens.runs") & {"lightning", "captum", "zennit", "skimage", "matplotlib"}
    # Looking up one explanation method imports its module only.
    loaded = loaded_by("from kdlens.explain import EXPLAINERS\nEXPLAINERS['gradcam']\nEXPLAINERS.names()")
    assert not loaded & HEAVY


# ---------------------------------------------------------------- layering

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("kdlens.registry", "kdlens.errors", "kdlens.io", "kdlens.aggregate", "kdlens.verbosity")),
    ("config", ("kdlens.config", "kdlens.device", "kdlens.engine")),
    ("data/models", ("kdlens.data", "kdlens.models")),
    ("distill/explain", ("kdlens.distill", "kdlens.explain")),
    ("metrics", ("kdlens.metrics",)),
    ("runs", ("kdlens.runs",)),
    ("training", ("kdlens.training",)),
    ("launch", ("kdlens.launch",)),
    ("evaluation", ("kdlens.evaluation",)),
    ("report", ("kdlens.report",)),
    ("interfaces", ("kdlens.cli", "kdlens.__main__", "kdlens.demo", "kdlens.export")),
]
"""Lowest first: a module may import modules of its own layer and of the layers before it, never
of a later one. The registries (foundation) import the packages that fill them by name, when a name
is first looked up, not by an import statement. The run artifacts (``kdlens.runs``: layout,
results, checkpoints, load_model) sit below training, which writes through them, and have no
Lightning import."""

ROOT = "kdlens"
"""``kdlens/__init__.py``: only ``__version__`` and lazy re-exports (``create_model``,
``load_model``, resolved on first use), so importing it is foundation-level, and its own lazy
imports are those of the public API, exempt from the layering."""

ALLOWED_UP: dict[tuple[str, str], str] = {}
"""(importer, imported) pairs that run up, each with the reason it is tolerated; none today."""

ALLOWED_CYCLES: list[set[str]] = []
"""Import cycles (sets of modules) tolerated, each with a comment; none today."""


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def kdlens_imports(path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """(imported kdlens module, line) for every import statement in ``path``, at module level or
    inside functions, except under ``if TYPE_CHECKING:``."""
    importer = module_name(path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in child.names:  # `from kdlens.data import cifar` imports a module
                    found.append((f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base, child.lineno))
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return [(name, line) for name, line in found if name == ROOT or name.startswith(ROOT + ".")]


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    if module == ROOT:
        return 0
    raise AssertionError(f"{module} is in no layer of tests/test_imports.py LAYERS: add it to the table")


def import_graph() -> dict[str, dict[str, int]]:
    paths = sorted((SRC / ROOT).rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph: dict[str, dict[str, int]] = {}
    for path in paths:
        importer = module_name(path)
        edges = graph.setdefault(importer, {})
        for imported, line in kdlens_imports(path, modules):
            if imported in modules:
                edges.setdefault(imported, line)
    return graph


def test_no_module_imports_a_later_layer():
    graph = import_graph()
    for module in graph:
        layer_of(module)  # every module is placed
    upward = []
    for importer, edges in graph.items():
        if importer == ROOT:
            continue
        for imported, line in edges.items():
            if layer_of(imported) > layer_of(importer) and (importer, imported) not in ALLOWED_UP:
                upward.append(f"{importer} (layer {LAYERS[layer_of(importer)][0]}) imports {imported} "
                              f"(layer {LAYERS[layer_of(imported)][0]}) at line {line}")
    assert not upward, "imports that run up the layers:\n  " + "\n  ".join(upward)


def test_no_import_cycle():
    """Cycles between modules, counting function-level imports and the package ``__init__`` that
    importing a submodule runs (except the importer's own packages, which are already loading)."""
    graph = import_graph()
    edges = {m: set(e) for m, e in graph.items()}
    for importer, targets in graph.items():
        for target in targets:
            parts = target.split(".")
            for i in range(2, len(parts)):
                parent = ".".join(parts[:i])
                if parent in graph and not (importer == parent or importer.startswith(parent + ".")):
                    edges[importer].add(parent)
    cycles = [c for c in strongly_connected(edges) if len(c) > 1 and c not in ALLOWED_CYCLES]
    assert not cycles, f"import cycles: {[sorted(c) for c in cycles]}"


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in edges:
        if node not in index:
            connect(node)
    return components
