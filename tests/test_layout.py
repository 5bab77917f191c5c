"""The layout shows the architecture: every module sits in one layer of the import-linter
contract (pyproject.toml), modules stay short, and imports sit at module level except in
the light modules that `import duat` and `duat --help` go through.

`lint-imports` itself runs in `make test` (it checks the direction of every import, those
inside functions too); these tests keep the contract complete and the code honest to it.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "duat"
MAX_LINES = 500
# Stay import-light: `import duat`, `duat --help` and `duat info` go through them.
LIGHT = {"__init__.py", "__main__.py", "runtime.py", "storage.py", "locations.py", "checks.py",
         "cli.py"}


def _contracts() -> list[dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["importlinter"]["contracts"]


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "results" not in p.relative_to(PACKAGE).parts)


def test_every_module_of_the_package_is_in_a_layer():
    (layered,) = [c for c in _contracts() if c["type"] == "layers"]
    named = {name.strip() for layer in layered["layers"] for name in layer.replace(":", "|").split("|")}
    top = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
           if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file()}
    assert top - named == set(), "modules outside the layers go unchecked by lint-imports"
    assert named - top == set(), "the contract names modules that do not exist"


def _layers() -> list[str]:
    (layered,) = [c for c in _contracts() if c["type"] == "layers"]
    return [" | ".join(n.strip() for n in layer.split("|")) for layer in layered["layers"]]


def test_the_contract_is_named_by_its_layers():
    (layered,) = [c for c in _contracts() if c["type"] == "layers"]
    assert layered["name"].endswith(": " + " > ".join(_layers())), (
        "the layers contract's name must list its layers, top first, joined by ' > '")


def test_the_readme_layout_shows_the_layers_in_the_contracts_order():
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Layout"):].split("```")[1]
    shown = [line.strip()[:len(layer)] for line in block.splitlines() for layer in _layers()
             if line.startswith("  " + layer) and line[2 + len(layer):3 + len(layer)] in (" ", "")]
    assert shown == _layers(), "README's Layout section and pyproject's layers differ"


def test_no_module_is_longer_than_500_lines_unless_it_says_why():
    long = {}
    for path in _modules():
        lines = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and f"over {MAX_LINES} lines" not in doc:
            long[str(path.relative_to(ROOT))] = lines
    assert long == {}


def _guarded(node: ast.AST, parents: dict) -> bool:
    """Inside a `try` that catches ImportError (an optional dependency)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                names = ast.dump(handler.type) if handler.type is not None else "bare"
                if any(n in names for n in ("ImportError", "ModuleNotFoundError", "Exception", "bare")):
                    return True
    return False


def test_imports_sit_at_module_level_outside_the_light_modules():
    inside = []
    for path in _modules():
        if path.name in LIGHT and path.parent == PACKAGE:
            continue
        tree = ast.parse(path.read_text())
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and not _guarded(node, parents):
                    inside.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert inside == []


def test_every_module_imports_on_its_own():
    """Each module imports in a fresh interpreter, without running anything (duat.__main__
    included: it runs the CLI only as `python -m duat`)."""
    names = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                   for p in _modules())
    code = ("import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
            "print('ok', len(sys.argv) - 1)")
    proc = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == f"ok {len(names)}", proc.stderr[-2000:]
    run = subprocess.run([sys.executable, "-m", "duat", "--version"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert run.returncode == 0 and run.stdout.strip(), run.stderr
