"""The config package is a leaf: it imports the standard library, protobuf and the generated
Envoy messages, the leaf helpers of xds_proxy, and itself; never the runtime, the codecs, the
upstreams or the xDS clients (so every one of those can import it without a cycle)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import xds_proxy.config

ALLOWED_XDS_PROXY = {
    "xds_proxy.errors",
    "xds_proxy.bounded_cache",
    "xds_proxy.extensions",
    "xds_proxy.lazy",
}
ALLOWED_THIRD_PARTY = {"envoy", "google", "validate"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "xds_proxy":
                found.update(f"xds_proxy.{alias.name}" for alias in node.names)
    return found


def test_config_imports_only_leaves() -> None:
    package = Path(xds_proxy.config.__file__).parent
    modules = sorted(package.glob("*.py"))
    assert len(modules) > 5
    wrong = []
    for module in modules:
        for name in _imports(module):
            top = name.split(".")[0]
            if name == "xds_proxy" or name.startswith("xds_proxy.config"):
                continue
            if name.startswith("xds_proxy."):
                if name not in ALLOWED_XDS_PROXY:
                    wrong.append(f"{module.name}: {name}")
            elif top not in ALLOWED_THIRD_PARTY and top not in sys.stdlib_module_names:
                wrong.append(f"{module.name}: {name}")
    assert wrong == []


def test_the_leaf_helpers_import_no_other_xds_proxy_module() -> None:
    package = Path(xds_proxy.config.__file__).parent.parent
    for helper in ("errors.py", "bounded_cache.py", "extensions.py", "lazy.py"):
        names = _imports(package / helper)
        others = {n for n in names if n.startswith("xds_proxy")} - ALLOWED_XDS_PROXY
        assert others == set(), helper
