"""The package arrows of docs/ARCHITECTURE.md hold: each package imports only those below it.

``sleeplm`` imports nothing from ``tools``, ``assistant`` or ``training``; ``tools`` imports
``sleeplm`` only; ``assistant`` imports ``tools`` and ``sleeplm``; ``training`` imports
``sleeplm``. Imports are read from the source (``ast``), lazy ones inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"sleeplm", "tools", "assistant", "training"}
ALLOWED = {
    "sleeplm": {"sleeplm"},
    "tools": {"sleeplm", "tools"},
    "assistant": {"sleeplm", "tools", "assistant"},
    "training": {"sleeplm", "training"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_follow_the_arrows(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files in {package}/"
    bad = {str(f.relative_to(ROOT)): sorted(_imports(f) - ALLOWED[package]) for f in files}
    assert not {k: v for k, v in bad.items() if v}


def test_demo_imports_only_the_assistant_side():
    assert _imports(ROOT / "demo.py") <= {"assistant", "sleeplm", "tools"}
