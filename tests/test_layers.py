"""The package arrows of docs/ARCHITECTURE.md hold: each package imports only those below it.

``sleeplm`` imports nothing from ``tools``, ``assistant`` or ``training``; ``tools`` imports
``sleeplm`` only; ``assistant`` imports ``tools`` and ``sleeplm``; ``training`` imports
``sleeplm``. Inside ``sleeplm`` the subpackages form layers too (:data:`SLEEPLM_LAYERS`): the
base modules, then the readers and the clinical measurements, the captions, the simulator and
the corpus, the model, and the patient library on top. Imports are read from the source
(``ast``), lazy ones inside functions included.
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


#: The base modules of ``sleeplm``: every part may import them, they import only each other.
SLEEPLM_BASE = {"sleeplm", "recording", "errors", "_logging"}
#: What each part of ``sleeplm`` may import besides itself and the base (see each package's
#: docstring); ``cli`` is the command line over all of them.
SLEEPLM_LAYERS = {
    "data": set(),
    "io": set(),
    "clinical": set(),
    "captions": {"clinical"},
    "simulate": {"io", "data", "clinical"},
    "corpus": {"io", "captions", "clinical", "data"},
    "model": {"captions"},
    "library": {"model", "corpus", "io", "clinical"},
    "cli": {"data", "io", "clinical", "captions", "simulate", "corpus", "model", "library"},
}


def _sleeplm_parts(path: Path) -> set[str]:
    """The parts of ``sleeplm`` (subpackage or top-level module) that a file imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = ([f"{node.module}.{a.name}" for a in node.names] if node.module == "sleeplm"
                     else [node.module])
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != "sleeplm":
                continue
            # `from sleeplm import __version__` imports the package itself, not a part
            is_part = len(parts) > 1 and ((ROOT / "sleeplm" / parts[1]).is_dir()
                                          or (ROOT / "sleeplm" / f"{parts[1]}.py").is_file())
            out.add(parts[1] if is_part else "sleeplm")
    return out


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


def test_sleeplm_parts_are_all_placed():
    found = {p.stem if p.is_file() else p.name for p in (ROOT / "sleeplm").iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").exists()) and p.name != "__init__.py"}
    assert found == (SLEEPLM_BASE - {"sleeplm"}) | set(SLEEPLM_LAYERS)


@pytest.mark.parametrize("part", sorted(SLEEPLM_LAYERS) + sorted(SLEEPLM_BASE - {"sleeplm"}))
def test_sleeplm_layers_import_downwards(part):
    where = ROOT / "sleeplm" / part
    files = sorted(where.rglob("*.py")) if where.is_dir() else [where.with_suffix(".py")]
    allowed = SLEEPLM_BASE | ({part} | SLEEPLM_LAYERS[part] if part in SLEEPLM_LAYERS else set())
    bad = {str(f.relative_to(ROOT)): sorted(_sleeplm_parts(f) - allowed) for f in files}
    assert not {k: v for k, v in bad.items() if v}

