"""One bad file is one plugin's error: hostile plugin inputs, each next to a good plugin.

Every case puts one malformed input in a plugin tree beside a good plugin, then asserts that
`load_all` returns a typed plughost error naming the bad plugin, that the good one loads
and answers, and that nothing blocked (a FIFO or device opened blocking would hang the run:
every load runs on a thread that must finish). The same inputs go through the watcher in one
batch and through a served app.
"""

from __future__ import annotations

import io
import os
import resource
import shutil
import socket
import stat
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import wasmtime

from plughost import Loader, Manager
from plughost.errors import ManifestError, PlughostError, PluginLoadError, SignatureError
from plughost.packaging import pack
from plughost.runtimes.wasm import WasmEngine
from plughost.server import create_app
from plughost.signing import generate_keypair, load_private_key, sign_path

from .conftest import wait_until, write_plugin_dir, write_wasm
from .serving import serve_in_thread

Make = Callable[[Path], str]  # writes one bad plugin under the dir; returns its name

ALIAS_BOMB = (  # "billion laughs" in a config: 384 bytes of YAML, 9^9 strings expanded
    'name: bomb\nruntime: wasm\nconfig:\n'
    ' a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    ' b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n'
    ' d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n'
    ' f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n'
    ' h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n')


def manifest(text: str, name: str = "bad") -> Make:
    def make(root: Path) -> str:
        pdir = write_plugin_dir(root, name)
        (pdir / "plugin.yaml").write_text(text)
        return name
    return make


def registration_module(raw: bytes, name: str = "badreg") -> bytes:
    """A gk module whose gk_register returns exactly `raw`."""
    pages = (len(raw) + 16) // 65536 + 1
    data = "".join(f"\\{b:02x}" for b in raw)
    wat = f"""(module
      (memory (export "memory") {pages + 1})
      (data (i32.const 16) "{data}")
      (func (export "gk_register") (result i64)
        (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const {len(raw)})))
      (func (export "gk_call") (param i32 i32 i32 i32) (result i64) (i64.const 0))
      (func (export "gk_malloc") (param i32) (result i32) (i32.const {pages * 65536})))"""
    return wasmtime.wat2wasm(wat)


def registration(raw: bytes) -> Make:
    def make(root: Path) -> str:
        (root / "badreg.wasm").write_bytes(registration_module(raw))
        return "badreg"
    return make


def fifo(relative: str, *, plugin_dir: bool = False) -> Make:
    def make(root: Path) -> str:
        base = write_plugin_dir(root, "bad") if plugin_dir else root
        target = base / relative
        if target.exists():
            target.unlink()
        os.mkfifo(target)
        return "bad" if plugin_dir else relative.split(".")[0]
    return make


def _unix_socket(root: Path) -> str:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock.wasm"))
    sock.close()  # the socket file stays
    return "sock"


def _symlink_zero(root: Path) -> str:
    (root / "zero.wasm").symlink_to("/dev/zero")
    return "zero"


def _entry_symlink_zero(root: Path) -> str:
    pdir = write_plugin_dir(root, "bad")
    (pdir / "bad.wasm").unlink()
    (pdir / "bad.wasm").symlink_to("/dev/zero")
    return "bad"


def _device(root: Path) -> str:
    try:
        os.mknod(root / "dev.wasm", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero
    except PermissionError:
        pytest.skip("mknod needs root")
    return "dev"


def _yaml_is_a_directory(root: Path) -> str:
    pdir = write_plugin_dir(root, "bad")
    (pdir / "plugin.yaml").unlink()
    (pdir / "plugin.yaml").mkdir()
    return "bad"


def _long_component(root: Path) -> str:
    return manifest(f"name: bad\nruntime: wasm\nwasm: {'a' * 300}.wasm\n")(root)


def _package(root: Path, corrupt: str) -> str:
    pdir = write_plugin_dir(root / "src", "pkg")
    out = root / "pkg.zip"
    pack(pdir, out)
    data = bytearray(out.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo(corrupt)
    # the compressed stream starts after the 30-byte local header, its name and extra field
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start, start + min(info.compress_size, 64)):
        data[i] ^= 0xFF
    out.write_bytes(bytes(data))
    shutil.rmtree(root / "src")
    return "pkg"


CASES: dict[str, Make] = {
    "invalid date": manifest("name: bad\nruntime: wasm\nconfig: {d: 2023-02-30}\n"),
    "!!int abc": manifest("name: bad\nruntime: wasm\nconfig: {n: !!int abc}\n"),
    "!!bool maybe": manifest("name: bad\nruntime: wasm\nconfig: {b: !!bool maybe}\n"),
    "empty !!float": manifest("name: bad\nruntime: wasm\nconfig: {f: !!float ''}\n"),
    "5000 digits": manifest(f"name: bad\nruntime: wasm\nconfig: {{n: {'7' * 5000}}}\n"),
    "alias bomb": manifest(ALIAS_BOMB, "bomb"),
    "duplicate key": manifest("name: bad\nruntime: wasm\npermissions: [log]\n"
                              "permissions: [log, http, db.write]\n"),
    "oversized plugin.yaml": manifest("name: bad\nruntime: wasm\n#" + "x" * 300_000 + "\n"),
    "long path component": _long_component,
    "corrupt deflate (manifest)": lambda root: _package(root, "plugin.yaml"),
    "corrupt deflate (module)": lambda root: _package(root, "pkg.wasm"),
    "registration 100,000 deep": registration(b'{"name":"badreg","x":' + b"[" * 100_000
                                              + b"]" * 100_000 + b"}"),
    "registration huge number": registration(b'{"name":"badreg","order":'
                                             + b"9" * 5000 + b"}"),
    "registration oversized": registration(b'{"name":"badreg","d":"' + b"x" * 1_100_000
                                           + b'"}'),
    "FIFO module": fifo("pipe.wasm"),
    "FIFO package": fifo("pipe.zip"),
    "FIFO plugin.yaml": fifo("plugin.yaml", plugin_dir=True),
    "FIFO entry": fifo("bad.wasm", plugin_dir=True),
    "socket module": _unix_socket,
    "device module": _device,
    "symlink to /dev/zero": _symlink_zero,
    "entry symlink to /dev/zero": _entry_symlink_zero,
    "plugin.yaml is a directory": _yaml_is_a_directory,
}


def _run_bounded(fn: Callable[[], object], seconds: float = 60.0) -> object:
    """Run `fn` on a thread that must finish: a blocking open would hang it."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "loading blocked (a special file was opened blocking?)"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("value")


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_bad_input_is_one_plugins_typed_error(case: str, plugins: Path,
                                                  engine: WasmEngine) -> None:
    write_wasm(plugins, "good")
    bad = CASES[case](plugins)
    manager = Manager(drain_timeout=5.0)
    loader = Loader(plugins, manager, engine=engine)
    try:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = _run_bounded(loader.load_all)
        assert isinstance(result, tuple)
        count, errors = result
        assert count == 1 and manager.names() == ["good"], errors
        assert len(errors) == 1 and isinstance(errors[0], PlughostError), errors
        assert errors[0].plugin == bad, errors[0]
        assert isinstance(errors[0], ManifestError | PluginLoadError)
        assert manager.call("good", "echo", {"ok": True}) == {"ok": True}
        [row] = [d for d in loader.discovered_plugins() if d.name == bad]
        assert row.error is not None and not row.loaded
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert grown_mib < 200, f"{case} made the host grow {grown_mib:.0f} MiB"
    finally:
        loader.close()
        manager.close()


def test_duplicate_keys_say_which_key(plugins: Path, engine: WasmEngine) -> None:
    CASES["duplicate key"](plugins)
    manager = Manager()
    loader = Loader(plugins, manager, engine=engine)
    try:
        _, [err] = loader.load_all()
        assert "'permissions' appears twice" in err.message and "line 3" in err.message
    finally:
        loader.close()
        manager.close()


def test_special_files_under_signature_checks_never_block(plugins: Path,
                                                          engine: WasmEngine) -> None:
    """With verification on, the sidecar and the private copy read files too."""
    key_path = plugins.parent / "release.key"
    _, pub = generate_keypair(key_path)
    key = load_private_key(key_path)
    sign_path(write_wasm(plugins, "good"), key)
    write_wasm(plugins, "sidecar")
    os.mkfifo(plugins / "sidecar.wasm.sig")
    pdir = write_plugin_dir(plugins, "inside")
    os.mkfifo(pdir / "data.fifo")
    manager = Manager()
    loader = Loader(plugins, manager, engine=engine, trusted_keys=[pub])
    try:
        result = _run_bounded(loader.load_all)
        assert isinstance(result, tuple)
        count, errors = result
        assert count == 1 and manager.names() == ["good"]
        by_name = {e.plugin: e for e in errors}
        assert isinstance(by_name["sidecar"], SignatureError)
        assert "FIFO" in by_name["sidecar"].message
        assert isinstance(by_name["inside"], SignatureError)
    finally:
        loader.close()
        manager.close()


def test_the_watcher_applies_the_rest_of_a_batch(plugins: Path, engine: WasmEngine) -> None:
    manager = Manager()
    loader = Loader(plugins, manager, engine=engine)
    loader.load_all()
    loaded = threading.Event()
    manager.add_listener(lambda e: loaded.set() if (e.kind, e.plugin) == ("load", "late")
                         else None)
    watcher = loader.watch_dir(debounce_ms=100)
    try:
        names = [CASES[c](plugins) for c in ("FIFO module", "alias bomb",
                                              "corrupt deflate (manifest)")]
        write_wasm(plugins, "late")  # a good plugin in the same batch
        assert loaded.wait(30), "the watcher did not load the good plugin"
        assert manager.call("late", "echo", {}) == {}
        wait_until(lambda: set(names) <= {d.name for d in loader.discovered_plugins()
                                          if d.error is not None}, 30)
        assert watcher.running
    finally:
        loader.close()
        manager.close()


def test_the_server_starts_and_answers_beside_bad_inputs(plugins: Path,
                                                         engine: WasmEngine) -> None:
    write_wasm(plugins, "good")
    for case in ("FIFO module", "alias bomb", "5000 digits", "registration 100,000 deep"):
        sub = plugins / case.replace(" ", "_").replace(",", "")
        sub.mkdir()
        CASES[case](sub)
    manager = Manager()
    loader = Loader(plugins, manager, engine=engine)
    app = create_app(manager, loader, watch=False)
    try:
        with serve_in_thread(app) as s:
            rows = {r["name"]: r for r in httpx.get(f"{s.url}/api/v1/plugins").json()["plugins"]}
            assert rows["good"]["state"] == "running"
            assert sum(r["state"] == "error" for r in rows.values()) == 4, rows
            r = httpx.post(f"{s.url}/api/v1/plugins/good/call/echo", json={"x": 1})
            assert r.json()["x"] == 1
            for name in rows:
                assert httpx.get(f"{s.url}/api/v1/plugins/{name}").status_code == 200
                assert httpx.get(f"{s.url}/api/v1/plugins/{name}/logs").status_code == 200
    finally:
        manager.close()
