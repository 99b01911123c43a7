"""The one direction of dependency: ``api/`` → ``schemas/`` → ``protocols/``; the domain never imports
Flask. Read from the source (every import statement, top level or inside a function), so a late
import added to dodge a cycle is caught too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: package -> top-level modules it must never import
FORBIDDEN = {
    "protocols": {"api", "schemas", "flask", "flask_smorest", "werkzeug", "webargs", "marshmallow"},
    "schemas": {"api", "flask", "werkzeug"},
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_one_way(package: str) -> None:
    offending = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {path: names for path, names in offending.items() if names} == {}


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from flask import g\n    import api.errors\n")
    assert imported_modules(module) == {"flask", "api"}
