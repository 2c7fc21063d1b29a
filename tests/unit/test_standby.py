"""xds_proxy/standby.py: the module-file check a pre-started epoch makes on `go`, and the
loading of every lazy module while it stands by."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

from xds_proxy.standby import ModuleFiles


def test_every_way_of_replacing_a_module_file_is_a_change(tmp_path) -> None:
    names = ("same", "rewritten", "touched", "removed", "put_back")
    paths = {name: tmp_path / f"{name}.py" for name in names}
    for path in paths.values():
        path.write_text("X = 1\n")
    files = files_of(list(paths.values()))
    assert files.changed() == []
    paths["rewritten"].write_text("X = 22\n")
    stat = paths["touched"].stat()
    os.utime(paths["touched"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    paths["removed"].unlink()
    # a new file with the old one's size and mtime, renamed over it (tar x, rsync -a)
    old = paths["put_back"].stat()
    new = tmp_path / "new.tmp"
    new.write_text("X = 2\n")
    os.utime(new, ns=(old.st_atime_ns, old.st_mtime_ns))
    new.replace(paths["put_back"])
    expected = [str(paths[n]) for n in ("rewritten", "touched", "removed", "put_back")]
    assert files.changed() == sorted(expected)


def files_of(paths) -> ModuleFiles:
    """ModuleFiles.now() as if these files were the only imported modules."""
    fakes = {f"_standby_test_{i}": SimpleNamespace(__file__=str(p)) for i, p in enumerate(paths)}
    sys.modules.update(fakes)  # type: ignore[arg-type]
    try:
        everything = ModuleFiles.now()
    finally:
        for name in fakes:
            del sys.modules[name]
    wanted = {str(path) for path in paths}
    return ModuleFiles({path: seen for path, seen in everything.stats.items() if path in wanted})


def test_a_file_changed_while_the_imports_ran_counts_as_changed(tmp_path) -> None:
    """A module file changed after the standby began its imports (its ctime) may have been
    imported old: changed, even though its signature now is the one recorded."""
    older, newer = tmp_path / "older.py", tmp_path / "newer.py"
    older.write_text("x = 1\n")
    between = os.stat(older).st_ctime_ns + 1
    time.sleep(0.02)  # (past a coarse file-system clock's tick)
    newer.write_text("x = 2\n")
    assert os.stat(newer).st_ctime_ns >= between
    recorded = files_of([older, newer]).stats
    assert ModuleFiles(recorded).changed() == []
    assert ModuleFiles(recorded, since_ns=between).changed() == [str(newer)]


def test_now_covers_every_imported_module_file_and_the_interpreter() -> None:
    files = ModuleFiles.now()
    assert sys.executable in files.stats
    assert os.path.abspath(sys.modules["xds_proxy.standby"].__file__) in {
        os.path.abspath(path) for path in files.stats
    }
    assert files.changed() == []


def test_standing_by_loads_the_lazy_modules_too() -> None:
    code = (
        "import importlib, json, sys, types\n"
        "from xds_proxy import standby\n"
        "for name in standby.SERVING_MODULES: importlib.import_module(name)\n"
        "lazy = lambda: sorted(n for n, m in sys.modules.items()\n"
        "    if n.startswith('xds_proxy.') and type(m) is not types.ModuleType)\n"
        "before = lazy()\n"
        "standby._load_lazy()\n"
        "print(json.dumps([before, lazy(), 'dns' in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    before, after, dnspython = json.loads(done.stdout)
    assert "xds_proxy.upstream.dns_records" in before  # lazy in a cold start
    assert after == []
    assert dnspython
