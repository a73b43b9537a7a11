"""`plughost new`: plugin scaffolds that build, load and answer `hello` at once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import wasmtime

from .errors import PlughostError
from .manifest import is_valid_name

_WAT = """\
;; {name}: a gk v1 wasm plugin in WebAssembly text. Build: python build.py
;; (assembles {name}.wat into {name}.wasm with wasmtime, which plughost already installed).
(module
  (import "gk" "log" (func $log (param i32 i32 i32)))
  (import "gk" "error" (func $error (param i32 i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (global $live (mut i32) (i32.const 0))

  (data (i32.const 16) {registration})
  (data (i32.const 1024) "hello")
  (data (i32.const 1040) {answer})
  (data (i32.const 1536) "unknown function")

  ;; arena allocator: bump, count live blocks, start over when none is live
  (func $malloc (export "gk_malloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $live (i32.add (global.get $live) (i32.const 1)))
    (global.set $heap (i32.add (global.get $heap)
      (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))
        (then (global.set $heap (local.get $p)) (return (i32.const 0))))))
    (local.get $p))
  (func (export "gk_free") (param $p i32)
    (global.set $live (i32.sub (global.get $live) (i32.const 1)))
    (if (i32.le_s (global.get $live) (i32.const 0))
      (then (global.set $live (i32.const 0)) (global.set $heap (i32.const 4096)))))

  (func $pack (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n))))

  (func (export "gk_register") (result i64)
    (call $pack (i32.const 16) (i32.const {registration_len})))

  (func (export "gk_call") (param $fp i32) (param $fl i32) (param $ap i32) (param $al i32)
        (result i64)
    (local $out i32)
    ;; hello -> {answer_text}
    (if (i32.and (i32.eq (local.get $fl) (i32.const 5))
                 (i32.eq (i32.load (local.get $fp)) (i32.load (i32.const 1024))))
      (then
        (local.set $out (call $malloc (i32.const {answer_len})))
        (memory.copy (local.get $out) (i32.const 1040) (i32.const {answer_len}))
        (return (call $pack (local.get $out) (i32.const {answer_len})))))
    (call $error (i32.const 1536) (i32.const 16))
    (i64.const 0))
)
"""

_BUILD_PY = '''\
#!/usr/bin/env python3
"""Assemble {name}.wat into {name}.wasm (needs only the wasmtime package)."""
from pathlib import Path

import wasmtime

here = Path(__file__).parent
(here / "{name}.wasm").write_bytes(wasmtime.wat2wasm((here / "{name}.wat").read_text()))
print("built {name}.wasm")
'''

_GRPC_PY = '''\
#!/usr/bin/env python3
"""{name}: a plughost grpc plugin (Python SDK). plughost runs it with its own Python."""

from typing import Any

from plughost import sdk

plugin = sdk.Plugin("{name}", version="0.1.0", description="A new plugin",
                    permissions=["log"])


@plugin.function
def hello(args: dict[str, Any]) -> dict[str, Any]:
    sdk.host.log("info", "hello was called")
    return {{"message": "Hello from {name}!"}}


if __name__ == "__main__":
    plugin.serve()
'''

_README = """\
# {name}

A plughost {runtime} plugin made by `plughost new`.

    plughost call --dir {parent} {name} hello

{build}
See docs/plugin-authors.md in plughost for the manifest, host functions and the ABI.
"""


def create(name: str, runtime: str, dest: Path) -> Path:
    """Write a scaffold for plugin `name` into `dest/name`; returns the plugin directory."""
    if not is_valid_name(name):
        raise PlughostError(f"{name!r} is not a valid plugin name ([a-z0-9][a-z0-9._-]{{0,63}})")
    if runtime not in ("wasm", "grpc"):
        raise PlughostError(f"unknown runtime {runtime!r} (wasm or grpc)")
    pdir = dest / name
    if pdir.exists():
        raise PlughostError(f"{pdir} already exists")
    pdir.mkdir(parents=True)
    try:
        if runtime == "wasm":
            _wasm(name, pdir)
            build = f"Edit {name}.wat, then rebuild with `python build.py`."
        else:
            _grpc(name, pdir)
            build = f"Edit {name}.py; plughost picks changes up on reload (or with the watcher)."
        (pdir / "README.md").write_text(_README.format(name=name, runtime=runtime,
                                                       parent=dest, build=build))
    except BaseException:
        shutil.rmtree(pdir, ignore_errors=True)
        raise
    return pdir


def _wat_string(text: str) -> str:
    return '"' + "".join(c if c.isalnum() or c in " {}:,.!-_[]" else f"\\{ord(c):02x}"
                         for c in text) + '"'


def _wasm(name: str, pdir: Path) -> None:
    registration = json.dumps({"name": name, "version": "0.1.0", "description": "A new plugin",
                               "permissions": []}, separators=(",", ":"))
    answer = json.dumps({"message": f"Hello from {name}!"}, separators=(",", ":"))
    wat = _WAT.format(name=name, registration=_wat_string(registration),
                      registration_len=len(registration.encode()),
                      answer=_wat_string(answer), answer_len=len(answer.encode()),
                      answer_text=answer)
    (pdir / f"{name}.wat").write_text(wat)
    (pdir / "build.py").write_text(_BUILD_PY.format(name=name))
    (pdir / f"{name}.wasm").write_bytes(wasmtime.wat2wasm(wat))
    (pdir / "plugin.yaml").write_text(
        f"name: {name}\nversion: 0.1.0\nruntime: wasm\nwasm: {name}.wasm\n"
        "description: A new plugin\npermissions: []\n"
        "resources: {memory_mb: 16, call_timeout_ms: 5000}\n")


def _grpc(name: str, pdir: Path) -> None:
    script = pdir / f"{name}.py"
    script.write_text(_GRPC_PY.format(name=name))
    script.chmod(0o755)
    (pdir / "plugin.yaml").write_text(
        f"name: {name}\nversion: 0.1.0\nruntime: grpc\nbinary: {name}.py\n"
        "description: A new plugin\npermissions: [log]\n"
        "resources: {call_timeout_ms: 5000}\n")
