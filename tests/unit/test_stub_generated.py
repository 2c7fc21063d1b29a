"""The checked-in generated code of proto/ is what `make proto` would write now."""

from __future__ import annotations

from pathlib import Path

from control_plane_stub.generate_proto import GENERATED_DIR, _fix_imports, generate


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    fresh = tmp_path / "generated"
    generate(fresh)
    fresh_files = {p.relative_to(fresh): p.read_text() for p in fresh.rglob("*.py")}
    checked_in = {
        p.relative_to(GENERATED_DIR): p.read_text()
        for p in GENERATED_DIR.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sorted(checked_in) == sorted(fresh_files), "run `make proto`"
    for name, text in fresh_files.items():
        assert checked_in[name] == text, f"{name} is stale: run `make proto`"


def test_imports_are_rewritten_into_the_package() -> None:
    text = "from xds_stub.v1 import control_pb2 as x\nfrom google.protobuf import any_pb2\n"
    fixed = _fix_imports(text, {"xds_stub"})
    assert fixed.splitlines() == [
        "from control_plane_stub.generated.xds_stub.v1 import control_pb2 as x",
        "from google.protobuf import any_pb2",
    ]


def test_generated_service_has_the_three_methods() -> None:
    from control_plane_stub.generated.xds_stub.v1 import control_pb2

    service = control_pb2.DESCRIPTOR.services_by_name["ControlService"]
    assert sorted(service.methods_by_name) == ["GetStatus", "SetResources", "WatchStatus"]
