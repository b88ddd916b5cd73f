"""Regenerate the Python modules of the protos into toplevel/v1 (committed; see tests)."""

from __future__ import annotations

import pathlib
import re
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[1]


def generate(out_dir: pathlib.Path) -> None:
    import grpc_tools

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    # Generated into a temp tree mirroring the package path, then moved into toplevel/v1.
    tmp = out_dir / "_gen"
    tmp.mkdir(exist_ok=True)
    # every proto of the package (a new one is picked up by itself)
    protos = sorted(str(f.relative_to(ROOT / "proto"))
                    for f in (ROOT / "proto" / "sessiongate" / "v1").glob("*.proto"))
    rc = protoc.main(
        ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={tmp}",
         f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *protos]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    for proto in protos:  # a proto without a service gets no _grpc module
        if not re.search(r"^service ", (ROOT / "proto" / proto).read_text(), re.MULTILINE):
            (tmp / proto.replace(".proto", "_pb2_grpc.py")).unlink()
    for f in (tmp / "sessiongate" / "v1").iterdir():
        f.replace(out_dir / f.name)
    for d in sorted(tmp.rglob("*"), reverse=True):
        d.rmdir()
    tmp.rmdir()


if __name__ == "__main__":
    generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "toplevel" / "v1")
