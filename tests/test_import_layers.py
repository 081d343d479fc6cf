"""Imports flow one way (docs: ../shared/docs/ARCHITECTURE.md): no module of ``nemo_erprm``
reaches itself through its imports, packages import only layers below them, and the PRM core
loads without NeMo.

The graph is read from the source with ``ast``, every ``import`` counted wherever it stands
(module level or inside a function): a function-level import is the usual way a circle hides
(``convert/cli.py`` ↔ ``convert/prm_to_hf.py`` and ``experiments/eta_sweep.py`` ↔
``experiments/sweep_report.py`` were such circles), and it closes at the first call."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "nemo_erprm"

# Lowest first: a package may import itself and the packages before it, never one after it.
LAYERS = ["errors", "jsonl", "yaml_config", "embedded", "runtime", "labeling", "data", "model", "nemo",
          "convert", "training", "eval", "serving", "experiments", "train"]
# The PRM core stays importable without NeMo (a Megatron-Bridge driver can reuse it).
NEMO_FREE = ["labeling", "data", "model", "eval", "serving"]


def module_files() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imported_names(name: str, path: Path) -> set[str]:
    """Every dotted name an import statement of the file names (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the ``nemo_erprm`` modules it imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    files = module_files()

    def owner(dotted: str) -> str | None:
        while dotted and dotted not in files:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph = {}
    for name, path in files.items():
        targets = {owner(t) for t in imported_names(name, path) if t.startswith("nemo_erprm")}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # the package's own __init__ has no layer


def test_cycle_finder_sees_a_function_level_circle():
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert cycles(graph) == [["p.a", "p.b", "p.c"]]
    assert cycles({"p.a": {"p.b"}, "p.b": set()}) == []
    path = REPO / "nemo_erprm" / "convert" / "cli.py"
    assert "nemo_erprm.convert.hf_to_prm" in imported_names("nemo_erprm.convert.cli", path)  # inside a function


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_packages_import_only_lower_layers():
    graph = import_graph()
    unknown = {layer_of(m) for m in graph} - set(LAYERS) - {None}
    assert not unknown, f"add the new package(s) {sorted(unknown)} to LAYERS"
    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                    if layer_of(m) and layer_of(t) and LAYERS.index(layer_of(t)) > LAYERS.index(layer_of(m)))
    assert upward == []


def test_prm_core_never_imports_nemo():
    graph = import_graph()
    files = module_files()
    offenders = []
    for module, path in files.items():
        if layer_of(module) not in NEMO_FREE:
            continue
        names = imported_names(module, path)
        offenders += [f"{module} imports {n}" for n in names if n == "nemo" or n.startswith("nemo.")]
        offenders += [f"{module} imports {t}" for t in graph[module] if layer_of(t) in ("nemo", "training")]
    assert offenders == []


def test_core_modules_load_without_nemo_in_a_fresh_process():
    """What the static walk cannot see: an import that happens at load time through a third
    package. Every core module is loaded in one fresh interpreter, then ``nemo`` must be absent."""
    core = sorted(m for m in module_files() if layer_of(m) in NEMO_FREE)
    code = ("import importlib, sys\n"
            f"for m in {core!r}: importlib.import_module(m)\n"
            "bad = sorted(k for k in sys.modules if k == 'nemo' or k.startswith('nemo.'))\n"
            "print(bad[:5]); sys.exit(1 if bad else 0)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
