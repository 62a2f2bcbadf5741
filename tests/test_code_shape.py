"""The code's shape, as docs/tests.md states it: no module of the library, the training layer or
the sweeps over 450 lines, no function over 80, at most 10 modules side by side in ``sweeps/``
(the rest in its two subpackages), and no blanket warning filter (a filter names the warning it
silences). Each rule is also run on a planted offender, so that it can fail."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("odconv", "lightning_modules", "sweeps")
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80
MAX_SWEEPS_TOP_MODULES = 10
WARNING_FILTERS = ("filterwarnings", "simplefilter")


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def long_functions(tree: ast.AST, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit]


def blanket_filters(tree: ast.AST) -> list[int]:
    """Lines of ``warnings.filterwarnings("ignore")`` / ``simplefilter("ignore")`` calls that name
    no category, message or module."""
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name not in WARNING_FILTERS:
            continue
        named = [k.arg for k in node.keywords if k.arg in ("category", "message", "module")]
        if len(node.args) <= 1 and not named:
            out.append(node.lineno)
    return out


def test_no_file_over_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in sources() if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_function_over_the_limit():
    long = {str(p.relative_to(ROOT)): f for p in sources() if (f := long_functions(ast.parse(p.read_text())))}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_sweeps_keeps_few_modules_side_by_side():
    top = sorted(p.name for p in (ROOT / "sweeps").glob("*.py"))
    assert len(top) <= MAX_SWEEPS_TOP_MODULES, top
    assert (ROOT / "sweeps" / "running" / "__init__.py").exists()
    assert (ROOT / "sweeps" / "reporting" / "__init__.py").exists()


def test_no_blanket_warning_filter():
    found = {str(p.relative_to(ROOT)): lines for p in sources() if (lines := blanket_filters(ast.parse(p.read_text())))}
    assert not found, f"warning filters that name no warning: {found}"


@pytest.mark.parametrize("code, expected", [
    ("import warnings\nwarnings.filterwarnings('ignore')\n", [2]),
    ("import warnings\nwith warnings.catch_warnings():\n    warnings.simplefilter('ignore')\n", [3]),
    ("import warnings\nwarnings.filterwarnings('ignore', category=UserWarning)\n", []),
    ("import warnings\nwarnings.filterwarnings('ignore', message='x')\n", []),
    ("import warnings\nwarnings.simplefilter('ignore', RuntimeWarning)\n", []),
])
def test_the_filter_rule_catches_a_planted_blanket_filter(code, expected):
    assert blanket_filters(ast.parse(code)) == expected


def test_the_length_rule_catches_a_planted_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    tree = ast.parse(f"def long():\n{body}\n\ndef short():\n    return 1\n")
    assert long_functions(tree) == [("long", MAX_FUNCTION_LINES + 1)]


def _own(cls: type) -> bool:
    return cls.__module__.split(".")[0] in PACKAGES


def private_overrides(classes) -> list[str]:
    """``Class.name`` for every method ``_name`` (not a dunder) a class of this project defines
    that a library base class also has: an override of a library's private member. (Attributes
    that metaclasses add, such as ABC's ``_abc_impl``, are not methods written here.)"""
    import inspect

    found = []
    for cls in classes:
        for name, value in vars(cls).items():
            if not name.startswith("_") or name.startswith("__"):
                continue
            if not (inspect.isfunction(value) or isinstance(value, (property, staticmethod, classmethod))):
                continue
            if any(hasattr(base, name) for base in cls.__mro__[1:] if not _own(base)):
                found.append(f"{cls.__module__}.{cls.__qualname__}.{name}")
    return found


def project_classes() -> list[type]:
    import importlib
    import inspect

    classes = []
    for path in sources():
        module_name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if module_name.endswith("__main__"):
            continue
        module = importlib.import_module(module_name)
        classes += [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
    return classes


def test_no_class_overrides_a_library_private_member():
    assert private_overrides(project_classes()) == []


def test_the_override_rule_catches_a_planted_override():
    import torch

    class Planted(torch.nn.Module):
        def _load_from_state_dict(self, *args):
            pass

        def _own_helper(self):
            pass

    Planted.__module__ = "odconv.planted"
    assert private_overrides([Planted]) == ["odconv.planted." + Planted.__qualname__ + "._load_from_state_dict"]
