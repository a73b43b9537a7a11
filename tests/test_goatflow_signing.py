"""Signatures and packages as GoatFlow makes them: per-binary sidecars in a plugin dir,
GOATFLOW_REQUIRE_SIGNATURES, raw 32-byte key files, zips with plugin.yaml under a folder,
GoatFlow's package caps. Signatures are made here with `cryptography` exactly as GoatFlow's
format says: ed25519 over the SHA-256 digest of the file, hex, no newline."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from plughost import Loader, Manager, SignatureError
from plughost.packaging import PackageLimits
from plughost.runtimes.wasm import WasmEngine

from .conftest import wat_bytes

GRPC_FIXTURE = Path(__file__).parent / "fixtures" / "hostops" / "grpc_plugin.py"


def goatflow_sign(path: Path, key: Ed25519PrivateKey) -> Path:
    sig = key.sign(hashlib.sha256(path.read_bytes()).digest()).hex()
    out = path.with_name(path.name + ".sig")
    out.write_text(sig)  # no trailing newline, as GoatFlow requires
    return out


def raw_key_file(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    path = tmp_path / "trusted.key"
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw))
    return path


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def loaders(plugins: Path, manager: Manager, engine: WasmEngine) -> Iterator[list[Loader]]:
    made: list[Loader] = []
    yield made
    for loader in made:
        loader.close()


def grpc_dir(plugins: Path, name: str) -> Path:
    pdir = plugins / name
    pdir.mkdir()
    binary = pdir / name
    binary.write_text(f"#!{sys.executable}\n" + GRPC_FIXTURE.read_text().replace(
        "__NAME__", name).replace("__VERSION__", "1.0.0").replace("__MARKERS__", ""))
    binary.chmod(0o755)
    (pdir / "plugin.yaml").write_text(yaml.safe_dump(
        {"name": name, "version": "1.0.0", "runtime": "grpc", "binary": name}))
    return pdir


def wasm_dir(plugins: Path, name: str) -> Path:
    pdir = plugins / name
    pdir.mkdir()
    (pdir / f"{name}.wasm").write_bytes(wat_bytes(name=name))
    (pdir / "plugin.yaml").write_text(yaml.safe_dump({"name": name, "runtime": "wasm"}))
    return pdir


def test_per_binary_sidecars_verify_a_plugin_dir_and_say_what_they_cover(
        tmp_path: Path, plugins: Path, manager: Manager, engine: WasmEngine,
        key: Ed25519PrivateKey, loaders: list[Loader]) -> None:
    g = grpc_dir(plugins, "gsvc")
    goatflow_sign(g / "gsvc", key)
    w = wasm_dir(plugins, "wmod")
    goatflow_sign(w / "wmod.wasm", key)
    loader = Loader(plugins, manager, engine=engine, trusted_keys=[raw_key_file(tmp_path, key)])
    loaders.append(loader)
    assert loader.load_all() == (2, [])
    assert manager.call("gsvc", "version") == "1.0.0" and manager.call("wmod", "count") == 1
    for name, file in (("gsvc", "gsvc"), ("wmod", "wmod.wasm")):
        notes = [r.message for r in manager.log_for(name).records() if "covers" in r.message]
        assert notes == [f"verified: {file}.sig covers {file} only, not plugin.yaml or the "
                         "other files (sign the directory for plugin.sig)"]


def test_a_tampered_binary_is_refused_and_plugin_sig_wins(
        tmp_path: Path, plugins: Path, manager: Manager, engine: WasmEngine,
        key: Ed25519PrivateKey, loaders: list[Loader]) -> None:
    from plughost.signing import sign_path

    w = wasm_dir(plugins, "wmod")
    goatflow_sign(w / "wmod.wasm", key)
    (w / "wmod.wasm").write_bytes(wat_bytes(name="wmod", version="6.6.6"))  # after signing
    loader = Loader(plugins, manager, engine=engine, trusted_keys=[raw_key_file(tmp_path, key)])
    loaders.append(loader)
    count, errors = loader.load_all()
    assert count == 0 and isinstance(errors[0], SignatureError)
    assert "does not match" in errors[0].message
    # a whole-directory signature is the stronger one and wins over a stale sidecar
    sign_path(w, key)
    loader.ensure_loaded("wmod")
    assert manager.call("wmod", "version") == "6.6.6"


@pytest.mark.parametrize(("value", "required"), [("1", True), ("true", False), ("", False)])
def test_goatflow_require_signatures_is_honoured_exactly_as_goatflow_reads_it(
        plugins: Path, manager: Manager, engine: WasmEngine, monkeypatch: pytest.MonkeyPatch,
        loaders: list[Loader], value: str, required: bool) -> None:
    monkeypatch.setenv("GOATFLOW_REQUIRE_SIGNATURES", value)
    monkeypatch.delenv("PLUGHOST_REQUIRE_SIGNATURES", raising=False)
    monkeypatch.delenv("PLUGHOST_TRUSTED_KEYS", raising=False)
    wasm_dir(plugins, "wmod")
    loader = Loader(plugins, manager, engine=engine)
    loaders.append(loader)
    count, errors = loader.load_all()
    assert (count == 0) is required
    if required:
        assert isinstance(errors[0], SignatureError)


def test_verify_says_what_each_signature_covers(tmp_path: Path, plugins: Path,
                                                key: Ed25519PrivateKey) -> None:
    from plughost.signing import sign_path

    pub = raw_key_file(tmp_path, key)
    side = wasm_dir(plugins, "side")
    goatflow_sign(side / "side.wasm", key)
    whole = wasm_dir(plugins, "whole")
    sign_path(whole, key)
    single = plugins / "single.wasm"
    single.write_bytes(wat_bytes(name="single"))
    goatflow_sign(single, key)

    def verify(path: Path) -> str:
        r = subprocess.run([sys.executable, "-m", "plughost", "verify", str(path), "--trusted",
                            str(pub)], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, COLUMNS="300"))
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    assert verify(side).endswith("side.wasm.sig covers side.wasm only, not plugin.yaml or "
                                 "the other files (sign the directory for plugin.sig)")
    assert verify(whole).endswith("plugin.sig covers every file of the directory, "
                                  "plugin.yaml included")
    assert verify(single).endswith("single.wasm.sig covers single.wasm")


def zip_of(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("declared", [True, False])
def test_a_goatflow_layout_zip_with_its_plugin_under_a_folder_loads(
        plugins: Path, manager: Manager, engine: WasmEngine, loaders: list[Loader],
        declared: bool) -> None:
    manifest = {"runtime": "wasm", "version": "1.0.0", **({"name": "pkg"} if declared else {})}
    (plugins / "download.zip").write_bytes(zip_of([
        ("pkg/plugin.yaml", yaml.safe_dump(manifest).encode()),
        ("pkg/pkg.wasm", wat_bytes(name="pkg")),
        ("pkg/README.md", b"docs"),
    ]))
    loader = Loader(plugins, manager, engine=engine)
    loaders.append(loader)
    assert loader.load_all() == (1, [])
    assert manager.call("pkg", "count") == 1


def test_goatflow_package_caps(plugins: Path, manager: Manager, engine: WasmEngine,
                               loaders: list[Loader]) -> None:
    assert PackageLimits().max_files == 1000
    assert PackageLimits().max_entry_bytes == 100 * 1024 * 1024
    entries = [("plugin.yaml", b"name: many\nruntime: wasm\n"),
               ("many.wasm", wat_bytes(name="many"))]
    entries += [(f"assets/{i}.txt", b"x") for i in range(999)]
    (plugins / "many.zip").write_bytes(zip_of(entries))
    loader = Loader(plugins, manager, engine=engine)
    loaders.append(loader)
    count, errors = loader.load_all()
    assert count == 0 and "1001 entries, more than the cap of 1000" in errors[0].message
