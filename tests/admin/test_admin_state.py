"""The admin process's state lives apart from its wiring: no piece of the admin process (the API's plumbing,
the console, the endpoints) imports the module that wires them, not even for typing, and importing one piece
does not load the whole app."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WIRING = "workers.admin.app"
# The only places that build the app: the `intake admin` command (and the tests' servers, outside workers/).
BUILDERS = {ROOT / "workers" / "cli" / "control.py", ROOT / "workers" / "admin" / "app.py"}


def imported(path: Path) -> set[str]:
    """Every module `path` names in an import statement, anywhere in it (TYPE_CHECKING blocks included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_piece_imports_the_wiring_module() -> None:
    wrong = [str(path.relative_to(ROOT)) for path in (ROOT / "workers").rglob("*.py")
             if path not in BUILDERS and WIRING in imported(path)]
    assert wrong == []


def test_the_admin_package_imports_none_of_its_submodules() -> None:
    assert imported(ROOT / "workers" / "admin" / "__init__.py") == set()


def test_importing_one_piece_does_not_load_the_app() -> None:
    probe = ("import sys, workers.admin.background, workers.admin.state; "
             "print(sorted(m for m in sys.modules if m.startswith('workers.admin.app') or m.startswith('workers.admin.console')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
