"""The reporting side (:mod:`sweeps.reporting`) stays apart from the side that trains and launches:
importing it (and the shared :mod:`sweeps.layout`, :mod:`sweeps.record`, :mod:`sweeps.definition`)
loads no Lightning, Optuna, submitit, :mod:`sweeps.running` nor the training side of
:mod:`lightning_modules` (only :mod:`lightning_modules.contract`), checked twice: in a fresh
interpreter (what is loaded) and in the import statements of its source (what is named, even in
a function that no test calls). Each check is also shown to catch a planted bad import. And its
modules import at the top."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REPORTING = ROOT / "sweeps" / "reporting"
SHARED = ["sweeps.layout", "sweeps.record", "sweeps.definition"]
# what the reporting side must not load: these modules and everything under them
FORBIDDEN = ("lightning", "lightning.pytorch", "optuna", "submitit", "sweeps.running", "lightning_modules.module",
             "lightning_modules.cli")
# lightning_modules is the training package; of it, the reporting side may use only the contract
ALLOWED_LIGHTNING_MODULES = ("lightning_modules", "lightning_modules.contract")


def reporting_modules() -> list[str]:
    """Every module of the sweeps.reporting package, by dotted name (the package first)."""
    return ["sweeps.reporting"] + sorted(f"sweeps.reporting.{p.stem}" for p in REPORTING.glob("*.py")
                                         if p.stem != "__init__")


def is_forbidden(module: str) -> bool:
    """``module`` is one of :data:`FORBIDDEN` or under one of them."""
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


# Run in a fresh interpreter: import each module in turn and say which forbidden modules it
# brought in (the first of ours to load one is named, so a failure points at the culprit).
_IMPORT_CHECK = textwrap.dedent("""
    import importlib, json, sys
    forbidden = json.loads(sys.argv[1])
    bad = lambda m: any(m == f or m.startswith(f + ".") for f in forbidden)
    seen, out = set(), {}
    for name in sys.argv[2:]:
        importlib.import_module(name)
        new = sorted(m for m in sys.modules if bad(m) and m not in seen)
        seen.update(new)
        if new:
            out[name] = new
    print(json.dumps(out))
""")


def forbidden_loaded(modules: list[str], extra_path: Path | None = None) -> dict[str, list[str]]:
    """Import ``modules`` in order in a fresh interpreter (run from the repository root, with
    ``extra_path`` first on the path); returns module -> the forbidden modules it loaded."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*([str(extra_path)] if extra_path else []), str(ROOT),
                                         *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    proc = subprocess.run([sys.executable, "-c", _IMPORT_CHECK, json.dumps(FORBIDDEN), *modules], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_the_reporting_side_loads_nothing_that_trains_or_launches():
    modules = reporting_modules()
    assert {"sweeps.reporting.aggregate", "sweeps.reporting.loading", "sweeps.reporting.plots"} <= set(modules)
    assert forbidden_loaded(SHARED + modules) == {}


def test_the_import_check_catches_a_planted_import(tmp_path):
    """A module that imports submitit, itself or through another module, is named with what it loaded."""
    pkg = tmp_path / "planted"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "direct.py").write_text("import submitit  # noqa: F401\n")
    (pkg / "indirect.py").write_text("from . import direct  # noqa: F401\n")
    got = forbidden_loaded(["sweeps.layout", "planted.indirect", "sweeps.reporting.formats"], extra_path=tmp_path)
    assert list(got) == ["planted.indirect"] and "submitit" in got["planted.indirect"]


# --- the import statements of the source --------------------------------------------------

def _resolve(node: ast.ImportFrom, package: str) -> str:
    """The absolute module of a ``from ... import`` in a module of ``package``."""
    if not node.level:
        return node.module or ""
    base = package.split(".")
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def named_imports(source: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``source`` (a module of ``package``), at any
    depth (a function's too), and of every ``importlib.import_module("...")`` with a literal
    name; ``from a import b`` gives both ``a`` and ``a.b`` (``b`` may be a module)."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(node, package)
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}" if mod else a.name) for a in node.names if a.name != "*"]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return out


def _named_forbidden(module: str) -> bool:
    """:data:`FORBIDDEN`, and any of lightning_modules but the package itself and its contract."""
    if module in ALLOWED_LIGHTNING_MODULES or module.startswith("lightning_modules.contract."):
        return False
    return is_forbidden(module) or module.startswith("lightning_modules.")


def bad_imports(path: Path, package: str = "sweeps.reporting") -> list[str]:
    """``file:line: module`` for each forbidden module that ``path`` imports (:func:`named_imports`)."""
    return [f"{path.name}:{line}: {mod}" for line, mod in named_imports(path.read_text(), package)
            if _named_forbidden(mod)]


def test_no_reporting_module_names_the_running_side_even_in_a_function():
    files = sorted(REPORTING.glob("*.py"))
    assert len(files) >= 10
    assert [b for f in files for b in bad_imports(f)] == []


def test_the_source_check_catches_planted_imports(tmp_path):
    bad = tmp_path / "planted.py"
    bad.write_text(textwrap.dedent("""
        import json
        from .. import definition, running
        from ..layout import SweepLayout
        from lightning_modules.contract import VAL_TOP1


        def later():
            from ..running.bench import bench_path
            import optuna
            from lightning_modules import module
            return importlib.import_module("sweeps.running.storage")
    """))
    assert bad_imports(bad) == ["planted.py:3: sweeps.running", "planted.py:9: sweeps.running.bench",
                                "planted.py:9: sweeps.running.bench.bench_path", "planted.py:10: optuna",
                                "planted.py:11: lightning_modules.module", "planted.py:12: sweeps.running.storage"]


# --- imports at the top -----------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(REPORTING.glob("*.py")), ids=lambda p: p.name)
def test_reporting_modules_import_at_the_top(path):
    """An import inside a function only where the line above says why (a heavy import deferred
    on purpose). (File and function lengths: tests/test_code_shape.py.)"""
    source = path.read_text()
    lines = source.splitlines()
    functions = [n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = sorted({n.lineno for f in functions for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))})
    unexplained = [ln for ln in nested if not lines[ln - 2].strip().startswith("#")]
    assert unexplained == [], f"imports inside functions without a comment saying why: lines {unexplained}"
