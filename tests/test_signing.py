"""Signatures with real ed25519 keys: every load path verifies, the verified bytes
are the bytes that run, and the formats are GoatFlow's.

Three plugin shapes are signed throughout: a single `.wasm` (sidecar `x.wasm.sig`), a wasm
plugin directory and a grpc plugin directory (`plugin.sig`). The grpc fixture writes a
marker file into a directory outside the plugin tree when it starts, so "nothing of it
runs" can be checked.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from typer.testing import CliRunner

from plughost import (
    Event,
    Loader,
    Manager,
    PlughostError,
    PluginCallError,
    PluginUnavailable,
    SignatureError,
)
from plughost.cli import app
from plughost.runtimes.supervisor import RestartPolicy
from plughost.runtimes.wasm import WasmEngine
from plughost.signing import (
    generate_keypair,
    list_directory,
    load_private_key,
    load_trusted_keys,
    parse_public_keys,
    sign_path,
    verify_path,
)

from .conftest import wait_until, wat_bytes, write_plugin_dir, write_wasm

GRPC_PLUGIN = Path(__file__).parent / "fixtures" / "hostops" / "grpc_plugin.py"
FAST = RestartPolicy(initial_backoff=0.05, max_crashes=5, window=30)
KINDS = ["file", "wasm-dir", "grpc"]
DIR_KINDS = ["wasm-dir", "grpc"]


# -- helpers -----------------------------------------------------------------------------


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


class Keys:
    """Key pairs made with plughost.signing.generate_keypair, by name."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(exist_ok=True)

    def pair(self, name: str) -> tuple[Ed25519PrivateKey, Path]:
        priv = self.dir / name
        if not priv.exists():
            generate_keypair(priv)
        return load_private_key(priv), self.dir / f"{name}.pub"


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "keys")


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    d = tmp_path / "markers"
    d.mkdir()
    return d


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Signature settings come from the test only."""
    monkeypatch.delenv("PLUGHOST_REQUIRE_SIGNATURES", raising=False)
    monkeypatch.delenv("PLUGHOST_TRUSTED_KEYS", raising=False)


MakeLoader = Callable[..., Loader]


@pytest.fixture
def loader_for(plugins: Path, manager: Manager, engine: WasmEngine) -> Iterator[MakeLoader]:
    """loader_for(trusted=[...], lazy=False, require=None): a Loader closed after the test."""
    made: list[Loader] = []

    def make(trusted: list[Any] | None = None, *, lazy: bool = False,
             require: bool | None = None) -> Loader:
        loader = Loader(plugins, manager, lazy=lazy, trusted_keys=trusted,
                        require_signatures=require, engine=engine, restart_policy=FAST)
        made.append(loader)
        return loader

    yield make
    for loader in made:
        loader.close()


def grpc_source(name: str, version: str, markers: Path) -> str:
    return (GRPC_PLUGIN.read_text().replace("__NAME__", name)
            .replace("__VERSION__", version).replace("__MARKERS__", str(markers)))


def build(kind: str, plugins: Path, name: str, markers: Path, version: str = "1.0.0") -> Path:
    """A plugin of `kind`; returns what gets signed (the .wasm file or the directory)."""
    if kind == "file":
        return write_wasm(plugins, name, version=version)
    if kind == "wasm-dir":
        pdir = write_plugin_dir(plugins, name, version=version)
    else:
        pdir = plugins / name
        pdir.mkdir(parents=True)
        (pdir / "plugin.py").write_text(grpc_source(name, version, markers))
        (pdir / "plugin.yaml").write_text(yaml.safe_dump(
            {"name": name, "version": version, "runtime": "grpc", "binary": "plugin.py"}))
    (pdir / "README.md").write_text(f"{name}: docs are covered by the signature too\n")
    return pdir


def code_of(kind: str, path: Path) -> Path:
    return {"file": path, "wasm-dir": path / f"{path.name}.wasm",
            "grpc": path / "plugin.py"}[kind]


def new_code(kind: str, name: str, version: str, markers: Path) -> bytes:
    if kind == "grpc":
        return grpc_source(name, version, markers).encode()
    return wat_bytes(name=name, version=version)


def sig_of(path: Path) -> Path:
    return path / "plugin.sig" if path.is_dir() else path.with_name(path.name + ".sig")


def started(markers: Path, name: str) -> list[Path]:
    return sorted(markers.glob(f"started-{name}-*"))


def refused(errors: list[Any], name: str) -> SignatureError:
    """The one SignatureError load_all reported for `name`."""
    mine = [e for e in errors if getattr(e, "plugin", None) == name]
    assert len(mine) == 1, errors
    assert isinstance(mine[0], SignatureError), mine
    assert name in str(mine[0])
    return mine[0]


def messages(manager: Manager, name: str) -> list[str]:
    return [f"{r.level}: {r.message}" for r in manager.log_for(name).records()]


# -- signed and refused ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_signed_plugin_loads(plugins: Path, keys: Keys, markers: Path, manager: Manager,
                             loader_for: MakeLoader, kind: str) -> None:
    key, pub = keys.pair("release")
    path = build(kind, plugins, "p", markers)
    sign_path(path, key)
    count, errors = loader_for([pub]).load_all()
    assert (count, errors) == (1, [])
    assert manager.call("p", "version") == "1.0.0"
    assert verify_path(path, load_trusted_keys([pub]))[0] == 0
    if kind == "grpc":
        assert len(started(markers, "p")) == 1


def _tamper(case: str, kind: str, path: Path, keys: Keys, markers: Path) -> str:
    """Sign `path` with the trusted key, then break it as `case` says; returns a message
    fragment the refusal must contain."""
    good, _ = keys.pair("release")
    other, _ = keys.pair("other")
    if case == "unsigned":
        return "unsigned"
    sign_path(path, other if case == "wrong-key" else good)
    sig = sig_of(path)
    if case == "tampered-module":
        code = code_of(kind, path)
        code.write_bytes(new_code(kind, "p", "6.6.6", markers))
    elif case == "tampered-manifest":
        m = path / "plugin.yaml"
        m.write_text(m.read_text() + "description: changed after signing\n")
    elif case == "added-file":
        (path / "extra.txt").write_text("not signed")
    elif case == "removed-file":
        (path / "README.md").unlink()
    elif case == "renamed-file":
        (path / "README.md").rename(path / "README.txt")
    elif case == "truncated-sig":
        sig.write_text(sig.read_text().strip()[:100])
        return "expected 64"
    elif case == "garbage-sig":
        sig.write_bytes(b"\xff\xfe not a signature at all")
        return "not hex"
    elif case == "empty-sig":
        sig.write_text("")
        return "expected 64"
    elif case == "flipped-sig":
        raw = bytearray(bytes.fromhex(sig.read_text()))
        raw[10] ^= 0x01
        sig.write_text(raw.hex())
    return "does not match"


CASES = [(k, c) for k in KINDS for c in
         ["unsigned", "tampered-module", "wrong-key", "truncated-sig", "garbage-sig",
          "empty-sig", "flipped-sig"]]
CASES += [(k, c) for k in DIR_KINDS for c in
          ["tampered-manifest", "added-file", "removed-file", "renamed-file"]]


@pytest.mark.parametrize("kind, case", CASES, ids=[f"{k}-{c}" for k, c in CASES])
def test_bad_signature_is_refused_and_nothing_runs(
        plugins: Path, keys: Keys, markers: Path, manager: Manager, loader_for: MakeLoader,
        kind: str, case: str) -> None:
    key, pub = keys.pair("release")
    path = build(kind, plugins, "p", markers)
    needle = _tamper(case, kind, path, keys, markers)
    ok = write_wasm(plugins, "ok")  # a good neighbour keeps loading
    sign_path(ok, key)
    loader = loader_for([pub])
    count, errors = loader.load_all()
    err = refused(errors, "p")
    assert needle in str(err)
    assert count == 1 and manager.names() == ["ok"]
    assert manager.get("p") is None
    with pytest.raises(PluginUnavailable, match="discovered but failed to load") as info:
        manager.call("p", "version")
    assert needle in str(info.value)
    assert started(markers, "p") == []  # no process was ever started
    # every explicit load path refuses it the same way
    for attempt in (loader.ensure_loaded, loader.load_or_reload, loader.reload):
        with pytest.raises(SignatureError, match="'p'"):
            attempt("p")
    assert started(markers, "p") == []
    assert manager.call("ok", "version") == "1.0.0"
    # the refusal is in the plugin's log
    assert any(m.startswith("error:") and "load failed" in m for m in messages(manager, "p"))


@pytest.mark.parametrize("kind", KINDS)
def test_lazy_first_call_verifies(plugins: Path, keys: Keys, markers: Path,
                                  manager: Manager, loader_for: MakeLoader, kind: str) -> None:
    key, pub = keys.pair("release")
    path = build(kind, plugins, "p", markers)
    sign_path(path, key)
    code_of(kind, path).write_bytes(new_code(kind, "p", "6.6.6", markers))
    loader_for([pub], lazy=True).load_all()
    with pytest.raises(SignatureError, match="does not match"):
        manager.call("p", "version")
    assert manager.get("p") is None and started(markers, "p") == []


def test_refused_directory_leaves_no_private_copy(plugins: Path, keys: Keys, markers: Path,
                                                  loader_for: MakeLoader) -> None:
    key, pub = keys.pair("release")
    path = build("grpc", plugins, "p", markers)
    sign_path(path, key)
    (path / "extra").write_text("x")
    loader = loader_for([pub])
    assert refused(loader.load_all()[1], "p")
    root = loader.stager._root
    assert root is None or list(root.iterdir()) == []


# -- keys: rotation, environment, off -------------------------------------------------------


def test_rotation_two_trusted_keys_then_old_one_dropped(plugins: Path, keys: Keys,
                                                        markers: Path, manager: Manager,
                                                        loader_for: MakeLoader) -> None:
    old, old_pub = keys.pair("old")
    new, new_pub = keys.pair("new")
    sign_path(build("file", plugins, "a", markers), old)
    sign_path(build("wasm-dir", plugins, "b", markers), new)
    sign_path(build("grpc", plugins, "c", markers), old)
    both = loader_for([old_pub, new_pub])
    assert both.load_all() == (3, [])
    assert [manager.call(n, "version") for n in "abc"] == ["1.0.0"] * 3
    both.close()
    assert manager.names() == []

    only_new = loader_for([new_pub])
    count, errors = only_new.load_all()
    assert count == 1 and manager.names() == ["b"]
    assert "does not match" in str(refused(errors, "a"))
    assert "does not match" in str(refused(errors, "c"))
    assert len(started(markers, "c")) == 1  # only the run under the old trust

    # re-signing with the new key brings them back
    sign_path(plugins / "a.wasm", new)
    sign_path(plugins / "c", new)
    only_new.load_or_reload("a")
    only_new.load_or_reload("c")
    assert manager.names() == ["a", "b", "c"]


def test_one_key_file_with_both_keys(plugins: Path, keys: Keys, markers: Path,
                                     manager: Manager, loader_for: MakeLoader,
                                     tmp_path: Path) -> None:
    old, old_pub = keys.pair("old")
    new, new_pub = keys.pair("new")
    both = tmp_path / "trusted.pub"
    both.write_text(old_pub.read_text() + new_pub.read_text())
    sign_path(build("file", plugins, "a", markers), old)
    sign_path(build("file", plugins, "b", markers), new)
    assert loader_for([both]).load_all() == (2, [])


def test_require_signatures_without_keys_refuses_loudly(
        plugins: Path, keys: Keys, markers: Path, manager: Manager, loader_for: MakeLoader,
        monkeypatch: pytest.MonkeyPatch) -> None:
    key, _ = keys.pair("release")
    monkeypatch.setenv("PLUGHOST_REQUIRE_SIGNATURES", "1")
    sign_path(build("grpc", plugins, "signed", markers), key)
    build("file", plugins, "unsigned", markers)
    count, errors = loader_for().load_all()
    assert count == 0 and manager.names() == []
    msg = str(refused(errors, "signed"))
    assert "no trusted keys" in msg and "PLUGHOST_TRUSTED_KEYS" in msg
    assert "unsigned" in str(refused(errors, "unsigned"))
    assert started(markers, "signed") == []


def test_trusted_keys_from_the_environment(plugins: Path, keys: Keys, markers: Path,
                                           manager: Manager, loader_for: MakeLoader,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    a, a_pub = keys.pair("a")
    b, b_pub = keys.pair("b")
    monkeypatch.setenv("PLUGHOST_TRUSTED_KEYS", f"{a_pub}{os.pathsep}{b_pub}")
    sign_path(build("file", plugins, "one", markers), a)
    sign_path(build("grpc", plugins, "two", markers), b)
    build("wasm-dir", plugins, "three", markers)
    count, errors = loader_for().load_all()  # keys in the environment turn verification on
    assert count == 2 and manager.names() == ["one", "two"]
    assert "unsigned" in str(refused(errors, "three"))


def test_environment_key_file_that_is_unreadable_is_an_error(
        plugins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        manager: Manager, engine: WasmEngine) -> None:
    monkeypatch.setenv("PLUGHOST_TRUSTED_KEYS", str(tmp_path / "missing.pub"))
    with pytest.raises(SignatureError, match=r"missing\.pub"):
        Loader(plugins, manager, engine=engine)


@pytest.mark.parametrize("kind", KINDS)
def test_verification_off_loads_unsigned_with_a_warning(
        plugins: Path, markers: Path, manager: Manager, loader_for: MakeLoader,
        kind: str) -> None:
    build(kind, plugins, "p", markers)
    assert loader_for().load_all() == (1, [])
    assert manager.call("p", "version") == "1.0.0"
    warnings = [m for m in messages(manager, "p") if m.startswith("warning:")]
    assert any("unsigned" in m for m in warnings), messages(manager, "p")


def test_explicitly_off_with_keys_given(plugins: Path, keys: Keys, markers: Path,
                                        manager: Manager, loader_for: MakeLoader) -> None:
    key, pub = keys.pair("release")
    build("file", plugins, "p", markers)
    sign_path(build("wasm-dir", plugins, "s", markers), key)
    assert loader_for([pub], require=False).load_all() == (2, [])
    assert any("unsigned" in m for m in messages(manager, "p"))
    assert any("signature present but not verified" in m for m in messages(manager, "s"))


@pytest.mark.parametrize("kind", DIR_KINDS)
def test_signed_dir_with_a_symlink_is_refused(plugins: Path, keys: Keys, markers: Path,
                                              manager: Manager, loader_for: MakeLoader,
                                              kind: str) -> None:
    key, pub = keys.pair("release")
    pdir = build(kind, plugins, "p", markers)
    sign_path(pdir, key)
    (pdir / "link").symlink_to(pdir / "README.md")  # what it points to is not vouched for
    loader = loader_for([pub])
    err = refused(loader.load_all()[1], "p")
    assert "link" in str(err) and "not a regular file" in str(err)
    assert started(markers, "p") == []
    root = loader.stager._root
    assert root is None or list(root.iterdir()) == []


# -- time of check, time of use -------------------------------------------------------------


def test_grpc_runs_from_a_verified_private_copy(plugins: Path, keys: Keys, markers: Path,
                                                manager: Manager,
                                                loader_for: MakeLoader) -> None:
    key, pub = keys.pair("release")
    pdir = build("grpc", plugins, "g", markers)
    sign_path(pdir, key)
    loader = loader_for([pub])
    assert loader.load_all() == (1, [])
    cwd = Path(manager.call("g", "cwd"))
    assert cwd.resolve() != pdir.resolve()
    assert not cwd.resolve().is_relative_to(plugins.resolve())
    assert loader.stager._root is not None
    assert cwd.resolve().is_relative_to(loader.stager._root.resolve())
    # the copies live under one 0700 directory of the host's: no other user reaches them
    assert stat.S_IMODE(os.stat(loader.stager._root).st_mode) == 0o700
    assert (cwd / "plugin.py").read_bytes() == (pdir / "plugin.py").read_bytes()
    pid = manager.call("g", "pid")

    # swap the original after the check: the running code, and any restart, is the copy
    (pdir / "plugin.py").write_text(grpc_source("g", "6.6.6", markers))
    os.kill(pid, signal.SIGKILL)
    restarted: list[Any] = []

    def answered() -> bool:
        try:
            restarted.append(manager.call("g", "pid"))
        except PlughostError:  # PluginUnavailable while it restarts
            return False
        return bool(restarted[-1] != pid)

    wait_until(answered, 20)
    assert manager.call("g", "version") == "1.0.0"
    # and a reload verifies the swapped file: refused, the running copy keeps serving
    with pytest.raises(SignatureError, match="does not match"):
        loader.reload("g")
    assert manager.call("g", "version") == "1.0.0"
    assert manager.call("g", "pid") == restarted[-1]
    loader.close()
    assert not cwd.exists()  # private copies go with the loader


@pytest.mark.parametrize("kind", ["file", "wasm-dir"])
def test_wasm_every_load_path_reverifies(plugins: Path, keys: Keys, markers: Path,
                                         manager: Manager, loader_for: MakeLoader,
                                         kind: str) -> None:
    key, pub = keys.pair("release")
    path = build(kind, plugins, "w", markers)
    sign_path(path, key)
    loader = loader_for([pub])
    assert loader.load_all() == (1, [])
    serving = manager.get("w")
    events: list[Event] = []
    manager.add_listener(events.append)

    code_of(kind, path).write_bytes(wat_bytes(name="w", version="6.6.6"))  # old sig kept
    with pytest.raises(SignatureError, match="does not match"):
        loader.reload("w")
    with pytest.raises(SignatureError, match="does not match"):
        loader.load_or_reload("w")
    assert manager.get("w") is serving
    assert manager.call("w", "version") == "1.0.0"
    assert [e.kind for e in events] == ["error", "error"]
    assert any("reload failed, the running version keeps serving" in m
               for m in messages(manager, "w"))

    # the watcher goes through the same check
    got_error = threading.Event()
    reloaded = threading.Event()
    manager.add_listener(lambda e: (got_error.set() if e.kind == "error" and e.plugin == "w"
                                    else reloaded.set() if e.kind == "reload" else None))
    watcher = loader.watch_dir(debounce_ms=100)
    got_error.clear()
    code_of(kind, path).write_bytes(wat_bytes(name="w", version="6.6.7"))
    assert got_error.wait(20)
    assert manager.get("w") is serving and manager.call("w", "version") == "1.0.0"
    # a properly signed new version is accepted by the watcher
    batches = watcher.batches
    code_of(kind, path).write_bytes(wat_bytes(name="w", version="2.0.0"))
    sign_path(path, key)
    assert reloaded.wait(20)
    wait_until(lambda: manager.call("w", "version") == "2.0.0")
    assert watcher.batches > batches


def test_wasm_module_is_compiled_from_the_verified_bytes(plugins: Path, keys: Keys,
                                                         markers: Path, manager: Manager,
                                                         loader_for: MakeLoader) -> None:
    """A signed dir plugin runs from its private copy: a module swapped on disk after the
    check is not what runs (a fresh instance after a trap comes from the verified one)."""
    key, pub = keys.pair("release")
    pdir = build("wasm-dir", plugins, "w", markers)
    sign_path(pdir, key)
    loader = loader_for([pub])
    assert loader.load_all() == (1, [])
    (pdir / "w.wasm").write_bytes(wat_bytes(name="w", version="6.6.6"))
    with pytest.raises(PluginCallError):
        manager.call("w", "trap")  # the instance is discarded
    assert manager.call("w", "version") == "1.0.0"


# -- key files ------------------------------------------------------------------------------


def test_public_key_file_formats(plugins: Path, keys: Keys, markers: Path,
                                 manager: Manager, loader_for: MakeLoader,
                                 tmp_path: Path) -> None:
    k1, k2, k3 = (Ed25519PrivateKey.generate() for _ in range(3))
    text = (
        "# release keys\n"
        f"{raw_public(k1).hex()}\n"
        "\n"
        f"   {base64.b64encode(raw_public(k2)).decode()}   # the base64 one, indented\n"
        f"{raw_public(k3).hex().upper()}  # upper-case hex\n"
        "# end\n"
    )
    parsed = parse_public_keys(text)
    assert [raw_public_of(k) for k in parsed] == [raw_public(k) for k in (k1, k2, k3)]
    keyfile = tmp_path / "ring.pub"
    keyfile.write_text(text)
    for name, key in (("one", k1), ("two", k2), ("three", k3)):
        sign_path(build("file", plugins, name, markers), key)
    assert loader_for([keyfile]).load_all() == (3, [])


def raw_public_of(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_trusted_keys_as_raw_bytes_and_key_objects(plugins: Path, markers: Path,
                                                   manager: Manager,
                                                   loader_for: MakeLoader) -> None:
    k1, k2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    sign_path(build("file", plugins, "one", markers), k1)
    sign_path(build("file", plugins, "two", markers), k2)
    assert loader_for([raw_public(k1), k2.public_key()]).load_all() == (2, [])


@pytest.mark.parametrize("line, why", [
    ("abcd", "too short"),
    ("00" * 31, "31 bytes hex"),
    ("00" * 64, "64 bytes hex"),
    (base64.b64encode(b"\x01" * 31).decode(), "31 bytes base64"),
    ("zz" * 32, "not hex, not base64"),
    ("-----BEGIN PRIVATE KEY-----", "a PEM line"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
     "an OpenSSH key"),
])
def test_invalid_key_lines_are_refused(tmp_path: Path, line: str, why: str) -> None:
    good = raw_public(Ed25519PrivateKey.generate()).hex()
    text = f"# ok\n{good}\n{line}\n"
    with pytest.raises(SignatureError, match=r":3: not a 32-byte ed25519 public key"):
        parse_public_keys(text)
    keyfile = tmp_path / "bad.pub"
    keyfile.write_text(text)
    with pytest.raises(SignatureError, match=r"bad\.pub:3"):
        load_trusted_keys([keyfile])


def test_key_file_with_no_keys_is_refused(tmp_path: Path, plugins: Path, manager: Manager,
                                          engine: WasmEngine) -> None:
    keyfile = tmp_path / "empty.pub"
    keyfile.write_text("# nothing here yet\n\n")
    with pytest.raises(SignatureError, match="no public keys"):
        Loader(plugins, manager, trusted_keys=[keyfile], engine=engine)
    with pytest.raises(SignatureError, match="32 bytes"):
        load_trusted_keys([b"\x00" * 31])


# -- GoatFlow compatibility ------------------------------------------------------------------


def test_single_file_signature_is_goatflow_format(plugins: Path, keys: Keys,
                                                  markers: Path) -> None:
    key, pub = keys.pair("release")
    path = build("file", plugins, "p", markers)
    sig_path = sign_path(path, key)
    assert sig_path == plugins / "p.wasm.sig"
    text = sig_path.read_text()
    assert len(text.strip()) == 128 and all(c in "0123456789abcdef" for c in text.strip())
    # checked with `cryptography` alone: ed25519 over the raw 32-byte sha256 of the file
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(
        next(ln for ln in pub.read_text().splitlines() if not ln.startswith("#"))))
    digest = hashlib.sha256(path.read_bytes()).digest()
    public.verify(bytes.fromhex(text.strip()), digest)  # raises if not


def test_goatflow_made_signature_is_accepted(plugins: Path, markers: Path, manager: Manager,
                                             loader_for: MakeLoader) -> None:
    """A sidecar made the way GoatFlow's signer makes it (upper-case hex, no newline, some
    surrounding whitespace) over sha256(file) verifies in plughost."""
    key = Ed25519PrivateKey.generate()
    path = build("file", plugins, "p", markers)
    sig = key.sign(hashlib.sha256(path.read_bytes()).digest())
    sig_of(path).write_text("  " + sig.hex().upper() + "\r\n\n")
    assert loader_for([raw_public(key)]).load_all() == (1, [])
    # and the signature over the file itself (not its digest) is *not* the format
    sig_of(path).write_text(key.sign(path.read_bytes()).hex())
    with pytest.raises(SignatureError, match="does not match"):
        verify_path(path, [key.public_key()])


def test_directory_signature_is_over_the_canonical_list(plugins: Path, markers: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pdir = build("wasm-dir", plugins, "d", markers)
    (pdir / "sub").mkdir()
    (pdir / "sub" / "data.bin").write_bytes(b"\x00\x01")
    (pdir / ".hidden").write_text("hidden files are covered too")
    sign_path(pdir, key)
    files = sorted(p.relative_to(pdir).as_posix() for p in pdir.rglob("*")
                   if p.is_file() and p.name != "plugin.sig")
    listing = "".join(f"{hashlib.sha256((pdir / f).read_bytes()).hexdigest()}  {f}\n"
                      for f in sorted(files, key=lambda f: f.encode()))
    assert list_directory(pdir).text == listing.encode()
    key.public_key().verify(bytes.fromhex((pdir / "plugin.sig").read_text().strip()),
                            hashlib.sha256(listing.encode()).digest())


def test_private_key_seed_forms(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    for i, text in enumerate([seed.hex(), base64.b64encode(seed).decode(),
                              (seed + raw_public(key)).hex()]):  # Go's seed||public form
        f = tmp_path / f"k{i}"
        f.write_text(text + "\n")
        assert raw_public(load_private_key(f)) == raw_public(key)
    bad = tmp_path / "bad"
    bad.write_text("not a key")
    with pytest.raises(SignatureError):
        load_private_key(bad)


# -- the command line -----------------------------------------------------------------------


def plughost(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PLUGHOST_CACHE_DIR=str(cwd / ".cache"), COLUMNS="200")
    env.pop("PLUGHOST_TRUSTED_KEYS", None)
    env.pop("PLUGHOST_REQUIRE_SIGNATURES", None)
    return subprocess.run([sys.executable, "-m", "plughost", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_cli_keygen_sign_verify(tmp_path: Path, plugins: Path, markers: Path) -> None:
    r = plughost("keygen", "release", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    priv, pub = tmp_path / "release", tmp_path / "release.pub"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert len(load_trusted_keys([pub])) == 1
    load_private_key(priv)
    before = priv.read_bytes()

    wasm = build("file", plugins, "p", markers)
    again, signed = plughost_all([("keygen", "release"), ("sign", wasm, "--key", priv)],
                                 cwd=tmp_path)
    assert again.returncode != 0
    assert "refusing to overwrite" in one_line(again.stderr)
    assert "Traceback" not in again.stderr
    assert priv.read_bytes() == before
    assert signed.returncode == 0, signed.stderr
    assert sig_of(wasm).exists()

    wasm_copy = plugins / "q.wasm"  # the tampered twin, checked in parallel with the good one
    wasm_copy.write_bytes(wat_bytes(name="p", version="6.6.6"))
    (plugins / "q.wasm.sig").write_bytes(sig_of(wasm).read_bytes())
    good, bad = plughost_all([("verify", wasm, "--trusted", pub),
                              ("verify", wasm_copy, "--trusted", pub)], cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert "valid signature" in good.stdout
    assert bad.returncode != 0
    assert "does not match" in one_line(bad.stderr) and "Traceback" not in bad.stderr

    # a directory, in-process (same commands)
    pdir = build("grpc", plugins, "g", markers)
    assert invoke("sign", pdir, "--key", priv).exit_code == 0
    assert (pdir / "plugin.sig").exists()
    r = invoke("verify", pdir, "--trusted", pub)
    assert r.exit_code == 0 and "valid signature" in r.stdout


def plughost_all(commands: list[tuple[str | Path, ...]], cwd: Path
                 ) -> list[subprocess.CompletedProcess[str]]:
    """Run independent `python -m plughost` commands at once (interpreter start-up is the
    slow part)."""
    threads = []
    out: dict[int, subprocess.CompletedProcess[str]] = {}

    def run(i: int, args: tuple[str | Path, ...]) -> None:
        out[i] = plughost(*args, cwd=cwd)

    for i, args in enumerate(commands):
        t = threading.Thread(target=run, args=(i, args))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(90)
    return [out[i] for i in range(len(commands))]


def invoke(*args: str | Path) -> Any:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exception
    return result


@pytest.mark.parametrize("case, needle", [
    ("tampered", "does not match"),
    ("unsigned", "unsigned"),
    ("wrong-key", "does not match"),
    ("added-file", "does not match"),
    ("garbage-sig", "not hex"),
    ("bad-keyfile", "not a 32-byte ed25519 public key"),
    ("missing-path", "No such file"),
])
def test_cli_verify_failures_are_one_clear_line(tmp_path: Path, plugins: Path, keys: Keys,
                                                markers: Path, case: str,
                                                needle: str) -> None:
    key, pub = keys.pair("release")
    other, _ = keys.pair("other")
    pdir = build("wasm-dir", plugins, "d", markers)
    sign_path(pdir, other if case == "wrong-key" else key)
    target: Path = pdir
    if case == "tampered":
        (pdir / "d.wasm").write_bytes(wat_bytes(name="d", version="6.6.6"))
    elif case == "unsigned":
        (pdir / "plugin.sig").unlink()
    elif case == "added-file":
        (pdir / "new").write_text("x")
    elif case == "garbage-sig":
        (pdir / "plugin.sig").write_text("hello")
    elif case == "bad-keyfile":
        pub = tmp_path / "bad.pub"
        pub.write_text("not a key\n")
    elif case == "missing-path":
        target = plugins / "nope.wasm"
    r = invoke("verify", target, "--trusted", pub)
    assert r.exit_code != 0
    assert needle in one_line(r.stderr), r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout


def test_cli_sign_with_an_unusable_key_fails_cleanly(tmp_path: Path, plugins: Path,
                                                     markers: Path) -> None:
    target = build("file", plugins, "p", markers)
    bad = tmp_path / "k"
    bad.write_text("this is not a key\n")
    r = invoke("sign", target, "--key", bad)
    assert r.exit_code != 0 and "not an ed25519 private key" in one_line(r.stderr)
    r = invoke("sign", target, "--key", tmp_path / "missing")
    assert r.exit_code != 0 and "missing" in r.stderr
    assert not sig_of(target).exists()


def test_cli_several_trusted_key_files(tmp_path: Path, plugins: Path, keys: Keys,
                                       markers: Path) -> None:
    a, a_pub = keys.pair("a")
    _, b_pub = keys.pair("b")
    target = build("file", plugins, "p", markers)
    sign_path(target, a)
    r = invoke("verify", target, "--trusted", b_pub, "--trusted", a_pub)
    assert r.exit_code == 0 and "trusted key #2" in r.stdout


# -- bugs -----------------------------------------------------------------------------------


def test_cli_keygen_refuses_to_overwrite_an_existing_public_key(tmp_path: Path) -> None:
    pub = tmp_path / "release.pub"
    pub.write_text("# the production key\n" + "11" * 32 + "\n")
    before = pub.read_text()
    r = invoke("keygen", tmp_path / "release")
    assert pub.read_text() == before
    assert r.exit_code != 0


def test_cli_sign_with_an_encrypted_key_is_one_clear_line(tmp_path: Path, plugins: Path,
                                                          markers: Path) -> None:
    key = Ed25519PrivateKey.generate()
    enc = tmp_path / "enc.pem"
    enc.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"pw")))
    target = build("file", plugins, "p", markers)
    result = CliRunner().invoke(app, ["sign", str(target), "--key", str(enc)])
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code != 0 and "encrypted" in result.stderr


def test_signed_dir_with_a_fifo_is_refused_not_crashing(plugins: Path, keys: Keys,
                                                        markers: Path, manager: Manager,
                                                        loader_for: MakeLoader) -> None:
    key, pub = keys.pair("release")
    pdir = build("wasm-dir", plugins, "d", markers)
    os.mkfifo(pdir / "pipe")
    ok = write_wasm(plugins, "ok")
    sign_path(ok, key)
    count, errors = loader_for([pub]).load_all()
    assert count == 1 and manager.names() == ["ok"]
    refused(errors, "d")
