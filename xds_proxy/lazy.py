"""Lazy imports: modules that only some configurations need, loaded on first use.

Start-up time matters: a hot-restart child is LIVE only once its imports are done, and a
crashed worker is replaced as fast as a process starts. Most of that time is importing, and
much of what is imported serves only some configurations (HTTP/2, TLS, health checks, ring
hash, outlier detection, tcp_proxy, access logs, REST xDS, most admin pages). Such a module is
bound with `lazy_import`: the name is a module object at once, and the module itself is
executed the first time one of its attributes is read (`importlib.util.LazyLoader`). From then
on it is the ordinary module object, so later reads cost nothing extra.

Every lazy import is written in this one form, so that import-linter (which reads the
`TYPE_CHECKING` import), type checkers and readers still see the dependency, and
`tests/unit/test_lazy_imports.py` checks that each file keeps both halves:

    from typing import TYPE_CHECKING

    from xds_proxy.lazy import lazy_import

    if TYPE_CHECKING:
        from xds_proxy.http import http2
    else:
        http2 = lazy_import("xds_proxy.http.http2")

Where the configuration says the module is needed, read an attribute when the configuration
is built (not per connection), so the import happens while applying the config rather than
while a connection waits.

Generated `*_pb2` modules are never lazy: a generated module registers its file in the
descriptor pool when it runs, and the modules that depend on it only import it (they read no
attribute), so a lazy one would be missing from the pool when they are built. A rarely used
message type is imported on demand instead (`extensions.resolve_message_class`).

A lazy module is loaded by the thread that first reads it; on Python 3.11 `LazyLoader` is not
thread-safe, so modules read from worker threads (`asyncio.to_thread`) are imported normally.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_import(name: str) -> ModuleType:
    """The module `name`, executed on first attribute access (at once if already imported)."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    if name.endswith("_pb2"):
        raise ValueError(f"{name}: a generated module must be imported, not lazily (see above)")
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    parent, _, child = name.rpartition(".")
    if parent:  # as the import system does: the package's attribute names the submodule
        setattr(sys.modules[parent], child, module)
    return module
