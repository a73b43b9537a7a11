#!/usr/bin/env python3
"""Generate the Python code for src/plughost/proto/plughost/v1/*.proto with grpcio-tools.

    python scripts/gen_proto.py          regenerate
    python scripts/gen_proto.py --check  exit 1 if the committed code is stale (CI runs this)

Generated imports are made package-relative, so the code works wherever plughost is installed.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "src" / "plughost" / "proto"
PACKAGE_DIR = PROTO_ROOT / "plughost" / "v1"


def generate(out: Path) -> list[Path]:
    protos = sorted(PACKAGE_DIR.glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}",
            f"--pyi_out={out}", f"--grpc_python_out={out}",
            *[str(p.relative_to(PROTO_ROOT)) for p in protos]]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    produced = sorted((out / "plughost" / "v1").glob("*_pb2*.py*"))
    for f in produced:
        text = f.read_text()
        # `from plughost.v1 import x_pb2` would look for a top-level package; make it relative.
        text = re.sub(r"^from plughost\.v1 import (\w+_pb2)", r"from . import \1", text,
                      flags=re.M)
        f.write_text(text)
    return produced


def main() -> int:
    check = sys.argv[1:] == ["--check"]
    with tempfile.TemporaryDirectory() as tmp:
        produced = generate(Path(tmp))
        stale = 0
        for f in produced:
            dest = PACKAGE_DIR / f.name
            if check:
                if not dest.exists() or dest.read_text() != f.read_text():
                    print(f"stale: {dest.relative_to(ROOT)} (run scripts/gen_proto.py)")
                    stale += 1
            else:
                dest.write_text(f.read_text())
                print(f"wrote {dest.relative_to(ROOT)}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
