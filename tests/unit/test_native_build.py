"""The access log's compiled core (xds_proxy/access_log/native.pyx) is the one built from the
source in this tree: after an edit, `make venv` (or `pip install -e .`) rebuilds it, and until
then the tests would run the old build."""

from __future__ import annotations

from pathlib import Path

from xds_proxy.access_log import native


def test_the_compiled_access_log_core_is_built_from_the_current_source() -> None:
    built = Path(native.__file__)
    source = Path(__file__).parents[2] / "xds_proxy" / "access_log" / "native.pyx"
    assert built.suffix == ".so", f"{built} is not a compiled module"
    if built.parent != source.parent:
        return  # an installed copy (a wheel), not this tree's build
    assert built.stat().st_mtime >= source.stat().st_mtime, (
        f"{built.name} is older than native.pyx: run `make venv` (or `pip install -e .`)"
    )
