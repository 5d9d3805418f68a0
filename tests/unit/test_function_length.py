"""No function in the package runs over 60 lines: a longer one is cut into named steps that read
top to bottom (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import tiue_export

ROOT = Path(tiue_export.__file__).resolve().parent
LIMIT = 60


def long_functions(root: Path = ROOT, limit: int = LIMIT) -> list[str]:
    """``path:line name (N lines)`` for every function or method under ``root``, nested ones
    included, whose ``def`` through its last line spans more than ``limit`` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_over_the_limit():
    found = long_functions()
    assert not found, f"functions over {LIMIT} lines (cut them into named steps):\n" + "\n".join(found)


def test_the_walk_catches_61_lines_not_60(tmp_path):
    """Def line to last line: a 60-line body (61 lines) is caught, in a method or nested too; 59 is not."""

    def function(name: str, body_lines: int, indent: str = "") -> str:
        return f"{indent}def {name}():\n" + "".join(f"{indent}    x{i} = {i}\n" for i in range(body_lines))

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(function("fits", 59) + "class C:\n" + function("method", 60, "    "))
    (tmp_path / "n.py").write_text("def outer():\n" + function("inner", 60, "    "))
    assert long_functions(tmp_path) == ["n.py:1 outer (62 lines)", "n.py:2 inner (61 lines)", "pkg/m.py:62 method (61 lines)"]
