"""The package's import structure: no cycles, nothing imports upward.

Every import counts, including those inside function bodies (the lazy ones that keep
``compress --help`` fast): a lazy import is still a dependency. Layers, bottom up:

- core: errors, options, passes (the registry), io, data, models, training,
  training_context, report, runtime, export, quiet, layers, graph_safety, task,
  agreement, progress, artifacts, losses
- passes: pruning, sharing, quantization, distillation, callbacks, cascade, train
- front-ends: cli, recipes and the package facade ``compress/__init__.py``
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "compress"

CORE, PASSES, FRONT = 0, 1, 2
LAYER_NAMES = {CORE: "core", PASSES: "pass", FRONT: "front-end"}
_CORE = {"errors", "options", "passes", "io", "data", "models", "training",
         "training_context", "report", "runtime", "export", "quiet", "layers",
         "graph_safety", "task", "agreement", "progress", "cluster", "artifacts",
         "losses", "layer_state"}
_PASSES = {"pruning", "sharing", "quantization", "distillation", "callbacks", "cascade",
           "train"}
_FRONT = {"cli", "recipes"}


def layer_of(module: str) -> int:
    """The layer of ``compress.x.y``; an unknown top-level name fails loudly."""
    parts = module.split(".")
    if parts == ["compress"]:
        return FRONT
    top = parts[1]
    for layer, names in ((CORE, _CORE), (PASSES, _PASSES), (FRONT, _FRONT)):
        if top in names:
            return layer
    raise AssertionError(f"{module}: give this module a layer in tests/test_architecture.py")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """``module -> modules it imports`` for every module under ``root`` (a package)."""
    package = root.name
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.split(".")[0] == package)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] != package:
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    deps.add(sub if sub in modules else base)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a lower layer into a higher one, as readable lines."""
    return [f"{m} ({LAYER_NAMES[layer_of(m)]}) imports {d} ({LAYER_NAMES[layer_of(d)]})"
            for m in sorted(graph) for d in sorted(graph[m]) if layer_of(d) > layer_of(m)]


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph(ROOT)) == []


def test_no_import_runs_upward():
    assert upward_imports(import_graph(ROOT)) == []


def _package(tmp_path, files: dict[str, str]) -> Path:
    root = tmp_path / "compress"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checks_catch_the_cycles_this_issue_removed(tmp_path):
    # The two cycles of before the pass registry, as they were written (lazy imports
    # inside functions): callbacks.pruning <-> pruning.prune_pass, and
    # export <-> quantization <-> quantization.tflite.
    root = _package(tmp_path, {
        "__init__.py": "",
        "callbacks/__init__.py": "",
        "callbacks/pruning.py": "def f():\n    from compress.pruning.prune_pass import s\n",
        "pruning/__init__.py": "",
        "pruning/prune_pass.py": "def g():\n    from compress.callbacks.pruning import P\n",
        "export.py": "def h():\n    from compress.quantization import refuse\n",
        "quantization/__init__.py": "def q():\n    from compress import export\n",
        "quantization/tflite.py": "from compress.export import quiet\n",
    })
    graph = import_graph(root)
    assert sorted(cycles(graph)) == [
        ["compress.callbacks.pruning", "compress.pruning.prune_pass"],
        ["compress.export", "compress.quantization"]]
    assert upward_imports(graph) == [
        "compress.export (core) imports compress.quantization (pass)"]


def test_relative_imports_and_package_attributes_are_resolved(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "cli/__init__.py": "from . import common\n",
        "cli/common.py": "from ..io import load\n",
        "io.py": "from compress import cli\n",
    })
    graph = import_graph(root)
    assert graph["compress.cli"] == {"compress.cli.common"}
    assert graph["compress.cli.common"] == {"compress.io"}
    assert upward_imports(graph) == ["compress.io (core) imports compress.cli (front-end)"]


def test_the_registry_and_help_import_no_tensorflow():
    code = ("import sys; from click.testing import CliRunner; from compress.cli import main; "
            "from compress import passes; passes.all_passes(); "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
            "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]

