"""xds_proxy/lazy.py: lazily imported modules load on first use, every lazy import is also
visible to import-linter, and start-up imports none of them."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from xds_proxy.lazy import lazy_import

PACKAGE = Path(__file__).resolve().parents[2] / "xds_proxy"


def _run(code: str) -> dict:
    """Run `code` in a fresh interpreter (its own sys.modules); it prints one JSON document."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout)


def _lazy_calls(tree: ast.Module) -> list[str]:
    return [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "lazy_import"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ]


def _type_checking_imports(tree: ast.Module) -> set[str]:
    """Every module an `if TYPE_CHECKING:` block imports (`from a import b` names a and a.b)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"):
            continue
        for statement in node.body:
            if isinstance(statement, ast.Import):
                names.update(alias.name for alias in statement.names)
            elif isinstance(statement, ast.ImportFrom) and statement.module:
                names.add(statement.module)
                names.update(f"{statement.module}.{alias.name}" for alias in statement.names)
    return names


def _lazy_modules() -> dict[Path, list[str]]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "lazy.py":
            continue
        calls = _lazy_calls(ast.parse(path.read_text()))
        if calls:
            found[path] = calls
    return found


def test_every_lazy_import_is_also_a_type_checking_import() -> None:
    """import-linter sees only the `TYPE_CHECKING` half: without it a lazy import could hide
    a forbidden dependency or a cycle."""
    found = _lazy_modules()
    assert found, "no lazy_import call found: the scan is broken"
    missing = []
    for path, modules in found.items():
        declared = _type_checking_imports(ast.parse(path.read_text()))
        missing += [f"{path.relative_to(PACKAGE)}: {m}" for m in modules if m not in declared]
    assert not missing, f"lazy_import without the matching TYPE_CHECKING import: {missing}"


def test_a_lazy_module_runs_at_its_first_attribute_read() -> None:
    result = _run(
        "import json, sys\n"
        "from xds_proxy.lazy import lazy_import\n"
        "module = lazy_import('xds_proxy.admin.plan_input')\n"
        "before = type(sys.modules['xds_proxy.admin.plan_input']).__name__\n"
        "import xds_proxy.admin\n"
        "same = xds_proxy.admin.plan_input is module\n"
        "error = module.PlanInputError\n"
        "from xds_proxy.admin.plan_input import PlanInputError\n"
        "print(json.dumps({'before': before, 'after': type(module).__name__, 'same': same,"
        " 'one_class': error is PlanInputError, 'again': lazy_import(module.__name__) is module}))"
    )
    assert result == {
        "before": "_LazyModule",
        "after": "module",
        "same": True,
        "one_class": True,
        "again": True,
    }


def test_an_imported_module_is_returned_as_it_is() -> None:
    assert lazy_import("json") is json


def test_an_unknown_module_fails_at_once() -> None:
    with pytest.raises(ModuleNotFoundError):
        lazy_import("xds_proxy.no_such_module")


def test_start_up_imports_none_of_the_lazy_modules() -> None:
    """What serving imports at start (the bootstrap loader and the server) leaves every other
    lazy module unexecuted, and the HTTP/2 codec (h2) unimported: an eager import of one of
    them on the start-up path costs every process start (README, the hot restart row)."""
    started = {"xds_proxy.bootstrap", "xds_proxy.server"}
    lazy = sorted({module for modules in _lazy_modules().values() for module in modules})
    lazy = [module for module in lazy if module not in started]
    result = _run(
        "import json, sys\n"
        "import xds_proxy.cli, xds_proxy.bootstrap, xds_proxy.server\n"
        f"lazy = {lazy!r}\n"
        "print(json.dumps({'executed': [m for m in lazy if m in sys.modules"
        " and type(sys.modules[m]).__name__ != '_LazyModule'], 'h2': 'h2' in sys.modules}))"
    )
    assert result == {"executed": [], "h2": False}


def test_a_generated_module_is_never_lazy() -> None:
    """Its dependants import it only to have it registered in the descriptor pool."""
    with pytest.raises(ValueError, match="generated module"):
        lazy_import("envoy.admin.v3.tap_pb2")


def test_version_and_help_import_neither_the_bootstrap_loader_nor_the_server() -> None:
    result = _run(
        "import json, sys\n"
        "import xds_proxy.cli\n"
        "print(json.dumps([m for m in ('xds_proxy.bootstrap', 'xds_proxy.server', 'grpc')"
        " if m in sys.modules and type(sys.modules[m]).__name__ != '_LazyModule']))"
    )
    assert result == []
