"""The package's import layering (docs/architecture.md): no module imports a higher layer, and
no import circle, counting the imports inside functions too (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import tiue_export

ROOT = Path(tiue_export.__file__).resolve().parent

#: Lowest first. A module may import its own layer (without a circle) and every layer below.
LAYERS = (
    ("foundation", ("tiue_export", "errors", "files", "prompts", "cpu")),
    ("maths and contracts", ("schedule", "sampling", "specs", "compare", "variants")),
    ("bundle", ("bundle",)),
    ("executor", ("executor",)),
    ("backends and runtime", ("backends", "runtime")),
    ("reference", ("reference", "pipeline")),
    ("build and generator", ("build", "generator")),
    ("products", ("verify", "distill", "toy", "serve")),
    ("cli", ("cli", "__main__")),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else module
    for i, (_, members) in enumerate(LAYERS):
        if top in members:
            return i
    raise AssertionError(f"{module} is in no layer of LAYERS: place it in docs/architecture.md and here")


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (top level or inside functions)."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [f"{target}.{a.name}" for a in node.names] + [target]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            for c in candidates:
                while c and c not in files:
                    c = c.rpartition(".")[0]
                if c and c != name and c.startswith("tiue_export") and (c != "tiue_export" or isinstance(node, ast.ImportFrom)):
                    deps.add(c)
                    break
        graph[name] = deps
    return graph


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
        for m, deps in import_graph().items()
        for d in deps
        if layer_of(d) > layer_of(m)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                circles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "\n".join(circles)


def test_every_module_has_a_layer():
    for m in import_graph():
        layer_of(m)
