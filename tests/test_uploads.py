"""Uploading plugins through the API (GoatFlow's `POST /api/v1/plugins/upload`), over real
HTTP: installed atomically, loaded or reloaded, verified like any load, and rolled back
when refused, so nothing of a bad upload stays in the plugin directory."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from plughost import Loader, Manager
from plughost.host import HostSettings
from plughost.packaging import pack
from plughost.runtimes.wasm import WasmEngine
from plughost.server import create_app
from plughost.signing import generate_keypair, load_private_key, load_trusted_keys, sign_path

from .conftest import variant_dir, variant_module, wat_bytes
from .serving import Served, serve_in_thread


@pytest.fixture
def site(plugins: Path, engine: WasmEngine, tmp_path: Path) -> Iterator[Callable[..., Served]]:
    stack: list[tuple[Any, Manager]] = []

    def start(**loader_options: Any) -> Served:
        manager = Manager(settings=HostSettings(data_dir=tmp_path / "data"),
                          drain_timeout=5.0)
        loader = Loader(plugins, manager, engine=engine, **loader_options)
        ctx = serve_in_thread(create_app(manager, loader, watch=False, jobs=False,
                                         health=False, max_upload=2 * 1024 * 1024))
        stack.append((ctx, manager))
        return ctx.__enter__()

    yield start
    for ctx, manager in reversed(stack):
        ctx.__exit__(None, None, None)
        manager.close()


def upload(s: Served, filename: str, data: bytes, **kw: Any) -> httpx.Response:
    return httpx.post(f"{s.url}/api/v1/plugins/upload", timeout=60,
                      files={"plugin": (filename, bytes(data), "application/octet-stream")},
                      **kw)


def leftovers(plugins: Path) -> list[str]:
    return sorted(p.name for p in plugins.iterdir() if p.name.startswith(".upload"))


def call(s: Served, name: str, fn: str = "version") -> httpx.Response:
    return httpx.post(f"{s.url}/api/v1/plugins/{name}/call/{fn}", timeout=30)


def zipped(directory: Path, tmp_path: Path) -> bytes:
    out = tmp_path / f"{directory.name}.zip"
    pack(directory, out)
    return out.read_bytes()


def test_a_wasm_upload_installs_loads_and_replaces(site: Callable[..., Served],
                                                   plugins: Path) -> None:
    s = site()
    r = upload(s, "up.wasm", wat_bytes(name="up", version="1.0.0"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["message"], body["name"], body["runtime"], body["replaced"]) == (
        "Plugin uploaded successfully", "up", "wasm", False)
    assert body["path"] == str(plugins / "up.wasm")
    assert call(s, "up").json() == "1.0.0"
    r = upload(s, "up.wasm", wat_bytes(name="up", version="2.0.0"))
    assert r.json()["replaced"] is True and call(s, "up").json() == "2.0.0"
    logs = [x["message"] for x in httpx.get(f"{s.url}/api/v1/plugins/up/logs").json()]
    assert any(x.startswith("Plugin uploaded: up (runtime: wasm, size: ") for x in logs)
    assert leftovers(plugins) == []


def test_a_refused_version_is_rolled_back_and_the_old_one_keeps_serving(
        site: Callable[..., Served], plugins: Path) -> None:
    s = site()
    good = wat_bytes(name="up", version="1.0.0")
    upload(s, "up.wasm", good)
    # valid magic, no module: the load refuses it
    r = upload(s, "up.wasm", b"\0asm\x01\0\0\0 not a module")
    assert r.status_code == 400 and r.json()["error"].startswith("Invalid plugin package: ")
    assert (plugins / "up.wasm").read_bytes() == good  # the files are as they were
    assert call(s, "up").json() == "1.0.0"
    # a new plugin that does not load leaves nothing behind
    r = upload(s, "other.wasm", wat_bytes("rt_register_bad_json", name="other"))
    assert r.status_code == 400 and not (plugins / "other.wasm").exists()
    assert "registration" in r.json()["error"]
    # a bare module is named by its registration, not its file
    r = upload(s, "file.wasm", variant_module("by-registration"))
    assert r.json()["name"] == "by-registration"
    assert call(s, "by-registration", "echo").status_code == 200
    assert leftovers(plugins) == []
    names = [p["name"] for p in httpx.get(f"{s.url}/api/v1/plugins").json()["plugins"]]
    assert names == ["by-registration", "up"]


@pytest.mark.parametrize("filename, data, words", [
    ("notes.txt", b"hello", "only .wasm and .zip plugins can be uploaded"),
    ("Bad Name.wasm", b"\0asm", "is not a plugin file name"),
    ("fake.wasm", b"MZ\x90\0", "not a WebAssembly module"),
    ("broken.zip", b"PK\x03\x04 nope", "not a valid zip archive"),
])
def test_what_is_no_plugin_is_refused(site: Callable[..., Served], plugins: Path,
                                      filename: str, data: bytes, words: str) -> None:
    s = site()
    r = upload(s, filename, data)
    assert r.status_code == 400 and words in r.json()["error"], r.text
    assert sorted(p.name for p in plugins.iterdir()) == []


def test_hostile_packages_and_names_stay_inside(site: Callable[..., Served], plugins: Path,
                                                tmp_path: Path) -> None:
    s = site()
    r = upload(s, "../../../evil.wasm", wat_bytes(name="evil"))  # only the base name counts
    assert r.status_code == 200 and (plugins / "evil.wasm").is_file()
    assert not (tmp_path / "evil.wasm").exists()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("plugin.yaml", "name: sneaky\nruntime: wasm\n")
        zf.writestr("../escape.txt", "out")
    r = upload(s, "sneaky.zip", buf.getvalue())
    assert r.status_code == 400 and "package refused" in r.json()["error"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("plugin.yaml", "name: ../up\nruntime: wasm\n")
    r = upload(s, "x.zip", buf.getvalue())
    assert r.status_code == 400 and "plugin.yaml" in r.json()["error"]
    assert leftovers(plugins) == [] and sorted(p.name for p in plugins.iterdir()) == [
        "evil.wasm"]
    r = upload(s, "big.wasm", b"\0asm" + b"\0" * (2 * 1024 * 1024))
    assert r.status_code in (400, 413) and not (plugins / "big.wasm").exists()


def test_a_zip_becomes_a_plugin_dir_and_a_new_version_swaps_it(
        site: Callable[..., Served], plugins: Path, tmp_path: Path) -> None:
    src = variant_dir(tmp_path / "src", "pkg", manifest={"version": "1.0.0",
                                                         "description": "first"})
    s = site()
    r = upload(s, "pkg.zip", zipped(src, tmp_path))
    assert r.status_code == 200 and r.json()["path"] == str(plugins / "pkg")
    assert (plugins / "pkg" / "plugin.yaml").is_file()
    listed = {p["name"]: p for p in httpx.get(f"{s.url}/api/v1/plugins").json()["plugins"]}
    assert listed["pkg"]["description"] == "first"
    (src / "plugin.yaml").write_text((src / "plugin.yaml").read_text().replace("first",
                                                                             "second"))
    r = upload(s, "whatever-name.zip", zipped(src, tmp_path))  # named by its manifest
    assert r.json()["name"] == "pkg" and r.json()["replaced"] is True
    listed = {p["name"]: p for p in httpx.get(f"{s.url}/api/v1/plugins").json()["plugins"]}
    assert listed["pkg"]["description"] == "second"
    assert leftovers(plugins) == []


def test_uploads_are_verified_like_every_load(site: Callable[..., Served], plugins: Path,
                                              tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    private, public = generate_keypair(tmp_path / "keys" / "release")
    s = site(require_signatures=True, trusted_keys=load_trusted_keys([public]))
    r = upload(s, "up.wasm", wat_bytes(name="up"))
    assert r.status_code == 400 and "signature" in r.json()["error"].lower()
    assert not (plugins / "up.wasm").exists()
    src = variant_dir(tmp_path / "src", "signed")
    sign_path(src, load_private_key(private))
    r = upload(s, "signed.zip", zipped(src, tmp_path))
    assert r.status_code == 200, r.text
    assert call(s, "signed", "echo").status_code == 200


def test_only_admins_upload(plugins: Path, engine: WasmEngine, tmp_path: Path) -> None:
    manager = Manager(settings=HostSettings(data_dir=tmp_path / "data"))
    app = create_app(manager, Loader(plugins, manager, engine=engine), watch=False,
                     jobs=False, token="t" * 32)
    try:
        with serve_in_thread(app) as s:
            assert upload(s, "up.wasm", wat_bytes(name="up")).status_code == 401
            r = upload(s, "up.wasm", wat_bytes(name="up"),
                       headers={"authorization": "Bearer " + "t" * 32})
            assert r.status_code == 200
            r = httpx.post(f"{s.url}/api/v1/plugins/upload", timeout=30, content=b"x",
                           headers={"authorization": "Bearer " + "t" * 32})
            assert r.status_code == 400 and "multipart" in r.json()["error"]
    finally:
        manager.close()


def test_a_directory_is_swapped_in_one_step_and_can_be_swapped_back(tmp_path: Path) -> None:
    from plughost.uploads import _exchange, _Swap

    old, new = tmp_path / "p", tmp_path / ".upload_p"
    old.mkdir()
    (old / "v").write_text("1")
    new.mkdir()
    (new / "v").write_text("2")
    assert _exchange(new, old)  # Linux: renameat2(RENAME_EXCHANGE)
    assert (old / "v").read_text() == "2" and (new / "v").read_text() == "1"
    _exchange(new, old)
    swap = _Swap(new, old)
    assert (old / "v").read_text() == "2"
    swap.rollback()
    assert (old / "v").read_text() == "1" and not new.exists()
    (tmp_path / "f").write_text("old")
    (tmp_path / ".upload_f").write_text("new")
    swap = _Swap(tmp_path / ".upload_f", tmp_path / "f")
    assert (tmp_path / "f").read_text() == "new"
    swap.rollback()
    assert (tmp_path / "f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "p"]
