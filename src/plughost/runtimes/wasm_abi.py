"""The gk v1 ABI, checked before a module ever runs (docs/wasm-abi.md).

A module that lacks an export, or exports one with the wrong signature, or imports something
the host does not provide, is refused at load time with an error that names the symbol.
"""

from __future__ import annotations

import wasmtime

I32, I64 = "i32", "i64"
MASK64 = 0xFFFF_FFFF_FFFF_FFFF
MASK32 = 0xFFFF_FFFF

#: export name -> (params, results); None = optional export
REQUIRED_EXPORTS: dict[str, tuple[list[str], list[str]]] = {
    "gk_register": ([], [I64]),
    "gk_call": ([I32, I32, I32, I32], [I64]),
    "gk_malloc": ([I32], [I32]),
}
OPTIONAL_EXPORTS: dict[str, tuple[list[str], list[str]]] = {
    "gk_free": ([I32], []),
    "_initialize": ([], []),
    "_start": ([], []),
}
HOST_IMPORTS: dict[str, tuple[list[str], list[str]]] = {
    "host_call": ([I32, I32, I32, I32], [I64]),
    "log": ([I32, I32, I32], []),
    "error": ([I32, I32], []),
}
WASI_MODULE = "wasi_snapshot_preview1"


def unpack(packed: int) -> tuple[int, int]:
    """Split a packed `(ptr << 32) | len` result. wasmtime hands i64 back signed."""
    packed &= MASK64
    return packed >> 32, packed & MASK32


def pack(ptr: int, length: int) -> int:
    """Pack ptr/len into the i64 the plugin expects (as a signed value, for wasmtime)."""
    v = ((ptr & MASK32) << 32) | (length & MASK32)
    return v - (1 << 64) if v >= 1 << 63 else v


def _sig(ft: wasmtime.FuncType) -> tuple[list[str], list[str]]:
    return [str(p) for p in ft.params], [str(r) for r in ft.results]


def _fmt(sig: tuple[list[str], list[str]]) -> str:
    return f"({', '.join(sig[0])}) -> ({', '.join(sig[1])})"


def check_module(module: wasmtime.Module) -> list[str]:
    """Return the ABI problems of `module` (empty when it can be loaded)."""
    problems: list[str] = []
    exports = {e.name: e.type for e in module.exports}
    mem = exports.get("memory")
    if not isinstance(mem, wasmtime.MemoryType):
        problems.append("missing export 'memory' (a linear memory)")
    for name, want in (REQUIRED_EXPORTS | OPTIONAL_EXPORTS).items():
        ty = exports.get(name)
        if ty is None:
            if name in REQUIRED_EXPORTS:
                problems.append(f"missing export {name!r} {_fmt(want)}")
            continue
        if not isinstance(ty, wasmtime.FuncType):
            problems.append(f"export {name!r} is not a function")
        elif _sig(ty) != want:
            problems.append(f"export {name!r} has type {_fmt(_sig(ty))}, expected {_fmt(want)}")
    for imp in module.imports:
        where = f"{imp.module}.{imp.name}"
        if imp.module == "gk":
            expected = HOST_IMPORTS.get(imp.name or "")
            if expected is None:
                problems.append(f"imports {where}, which the host does not provide "
                                f"(gk provides {sorted(HOST_IMPORTS)})")
            elif not isinstance(imp.type, wasmtime.FuncType) or _sig(imp.type) != expected:
                got = _fmt(_sig(imp.type)) if isinstance(imp.type, wasmtime.FuncType) else "?"
                problems.append(f"imports {where} as {got}, expected {_fmt(expected)}")
        elif imp.module != WASI_MODULE:
            problems.append(f"imports {where}, which the host does not provide "
                            f"(only 'gk' and '{WASI_MODULE}')")
    return problems
