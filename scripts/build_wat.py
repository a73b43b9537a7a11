#!/usr/bin/env python3
"""Assemble every examples/plugins/*/*.wat into the .wasm beside it (with wasmtime.wat2wasm).

    python scripts/build_wat.py          rebuild
    python scripts/build_wat.py --check  exit 1 if a committed .wasm is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

import wasmtime

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    check = sys.argv[1:] == ["--check"]
    stale = 0
    for wat in sorted((ROOT / "examples" / "plugins").glob("*/*.wat")):
        wasm = wat.with_suffix(".wasm")
        built = wasmtime.wat2wasm(wat.read_text())
        if check:
            if not wasm.exists() or wasm.read_bytes() != built:
                print(f"stale: {wasm.relative_to(ROOT)} (run scripts/build_wat.py)")
                stale += 1
            continue
        wasm.write_bytes(built)
        print(f"built {wasm.relative_to(ROOT)} ({len(built)} bytes)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
