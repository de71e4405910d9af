"""The house's boundaries: Ray and Optuna are imported by the search modules only, so everything else (and
`emoma cv`) works where neither is installed; no import cycle, not even through imports inside functions."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

RAY_PACKAGE = "tune"  # emoma.tune: the Tune/Optuna wiring, the pruners, the live report
BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('ray', 'optuna'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""


def _modules():
    """Every module of the package, dotted below emoma (`cv`, `tune.search`; a package by its name, `tune`)."""
    names = []
    for path in (ROOT / "emoma").rglob("*.py"):
        parts = path.relative_to(ROOT / "emoma").with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(n for n in names if n)


def _source(name):
    path = ROOT / "emoma" / Path(*name.split("."))
    return (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text()


def _in_ray_package(name):
    return name.split(".")[0] == RAY_PACKAGE


def _top_level_imports(name):
    """The emoma modules and the top-level packages a module imports at module level (not inside functions)."""
    tree = ast.parse(_source(name))
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_only_the_tune_package_imports_ray_or_optuna_at_module_level():
    importing = {m for m in _modules() if any(i.split(".")[0] in ("ray", "optuna") for i in _top_level_imports(m))}
    assert importing and all(_in_ray_package(m) for m in importing), importing


def test_nothing_outside_the_tune_package_imports_it_at_module_level():
    importing = {
        m
        for m in _modules()
        if not _in_ray_package(m) and any(i.startswith(f"emoma.{RAY_PACKAGE}") for i in _top_level_imports(m))
    }
    assert not importing, importing


@pytest.mark.slow
def test_the_core_imports_and_cv_runs_without_ray_or_optuna(tmp_path):
    core = [m for m in _modules() if not _in_ray_package(m)]
    script = (
        BLOCK
        + f"""
import importlib
for m in {core!r}:
    importlib.import_module('emoma.' + m)
from emoma.cli import main
main(['cv', '--config', 'smoke', '--no-progress', '--out', {str(tmp_path / "run")!r},
      '--set', 'cv.cache_dir={tmp_path / "cache"}', '--set', 'train.epochs=1'])
assert not any(k.split('.')[0] in ('ray', 'optuna') for k in sys.modules)
"""
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "report.md").is_file()


def _emoma_imports(name):
    """Every emoma module `name` imports, at module level or inside functions (not under `if TYPE_CHECKING:`)."""
    tree = ast.parse(_source(name))
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found, modules = set(), set(_modules())
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module == "emoma" or (node.module or "").startswith("emoma.")):
            package = node.module.removeprefix("emoma").removeprefix(".")
            for alias in node.names:  # `from emoma.tune import search` imports the module tune.search
                sub = f"{package}.{alias.name}".lstrip(".")
                found.add(sub if sub in modules else package)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("emoma.") for a in node.names if a.name.startswith("emoma.")}
    return found


def test_no_import_cycle_even_through_imports_inside_functions():
    graph = {m: _emoma_imports(m) for m in _modules()}
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", " -> ".join(path + [m])
        state[m] = "open"
        for n in sorted(graph.get(m, ())):
            visit(n, path + [m])
        state[m] = "done"

    for m in graph:
        visit(m, [])


CORE = (
    "config",
    "data",
    "layout",
    "context",
    "folds",
    "model",
    "train",
    "cv",
    "holdout",
    "space",
    "manifest",
    "results",
    "metrics",
)


def test_every_public_function_and_class_of_the_core_has_a_docstring():
    missing = []
    for name in CORE:
        for node in ast.parse(_source(name)).body:
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name.startswith("_"):
                continue
            methods = [n for n in node.body if isinstance(n, ast.FunctionDef)] if isinstance(node, ast.ClassDef) else []
            for item, label in [(node, node.name)] + [(m, f"{node.name}.{m.name}") for m in methods]:
                if not item.name.startswith("_") and not ast.get_docstring(item):
                    missing.append(f"{name}.{label}")
    assert not missing, missing


def test_every_subpackage_is_in_the_wheel():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "emoma").rglob("__init__.py")}
    assert found <= listed, found - listed
