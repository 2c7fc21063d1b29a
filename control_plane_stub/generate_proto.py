"""Regenerate `control_plane_stub/generated/` from `proto/` (what `make proto` runs).

grpcio-tools writes absolute imports rooted at the proto folder (`from xds_stub.v1 import
...`); they are rewritten to live under `control_plane_stub.generated`. A test regenerates
into a temporary folder and compares, so stale checked-in code fails the suite.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
GENERATED_DIR = Path(__file__).resolve().parent / "generated"
PACKAGE = "control_plane_stub.generated"


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(proto_root.rglob("*.proto"))


def _fix_imports(text: str, top_level_packages: set[str]) -> str:
    for top in sorted(top_level_packages):
        text = re.sub(
            rf"^from {re.escape(top)}(\.[\w.]*)? import ",
            lambda match, top=top: f"from {PACKAGE}.{top}{match.group(1) or ''} import ",
            text,
            flags=re.MULTILINE,
        )
    return text


def generate(output_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Write the generated modules (and `__init__.py` files) into `output_dir`."""
    from grpc_tools import protoc  # a test/dev dependency; imported only here

    files = proto_files(proto_root)
    if not files:
        raise SystemExit(f"{proto_root}: no .proto files")
    with tempfile.TemporaryDirectory() as scratch:
        scratch_dir = Path(scratch)
        include = Path(protoc.__file__).parent / "_proto"
        arguments = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--python_out={scratch_dir}",
            f"--grpc_python_out={scratch_dir}",
            *(str(path.relative_to(proto_root)) for path in files),
        ]
        if protoc.main(arguments) != 0:
            raise SystemExit("protoc failed")
        top_level = {path.relative_to(proto_root).parts[0] for path in files}
        if output_dir.exists():
            shutil.rmtree(output_dir)
        output_dir.mkdir(parents=True)
        written: list[Path] = []
        for source in sorted(scratch_dir.rglob("*.py")):
            relative = source.relative_to(scratch_dir)
            target = output_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_fix_imports(source.read_text(), top_level))
            written.append(target)
        for directory in sorted({p.parent for p in written} | {output_dir}):
            current = directory
            while True:
                init = current / "__init__.py"
                if not init.exists():
                    init.write_text("")
                    written.append(init)
                if current == output_dir:
                    break
                current = current.parent
    return sorted(written)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=GENERATED_DIR)
    arguments = parser.parse_args(argv)
    for path in generate(arguments.output):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
