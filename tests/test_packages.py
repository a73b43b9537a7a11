"""Plugin packages: `plughost pack`, loading `<name>.zip`, and hostile archives.

Hostile archives are built here with `zipfile`, each with a valid manifest and module so the
only thing wrong is the trick under test. Every one must be refused with an error naming the
plugin and the cause, write nothing outside the loader's private directory (which is removed
again), and leave the other plugins serving.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from plughost import (
    Event,
    Loader,
    Manager,
    ManifestError,
    PluginLoadError,
    SignatureError,
)
from plughost.cli import app
from plughost.packaging import PackageLimits, extract, pack
from plughost.runtimes.wasm import WasmEngine
from plughost.signing import generate_keypair, load_private_key, sign_path

from .conftest import wait_until, wat_bytes, write_plugin_dir, write_wasm

GRPC_PLUGIN = Path(__file__).parent / "fixtures" / "hostops" / "grpc_plugin.py"
WRAPPER = Path(__file__).parent / "fixtures" / "grpc" / "wrapper.sh"


# -- helpers -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLUGHOST_REQUIRE_SIGNATURES", raising=False)
    monkeypatch.delenv("PLUGHOST_TRUSTED_KEYS", raising=False)


MakeLoader = Callable[..., Loader]


@pytest.fixture
def loader_for(plugins: Path, manager: Manager, engine: WasmEngine) -> Iterator[MakeLoader]:
    made: list[Loader] = []

    def make(trusted: list[Any] | None = None, *, limits: PackageLimits | None = None,
             lazy: bool = False) -> Loader:
        loader = Loader(plugins, manager, lazy=lazy, trusted_keys=trusted, engine=engine,
                        package_limits=limits)
        made.append(loader)
        return loader

    yield make
    for loader in made:
        loader.close()


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """Where plugin directories are written before they are packed."""
    d = tmp_path / "src"
    d.mkdir()
    return d


def grpc_dir(parent: Path, name: str, version: str = "1.0.0", markers: Path | None = None,
             wrapper: bool = False) -> Path:
    """A grpc plugin dir; with `wrapper`, its binary is a `#!/bin/sh` script (exec bit)."""
    pdir = parent / name
    pdir.mkdir(parents=True)
    (pdir / "plugin.py").write_text(
        GRPC_PLUGIN.read_text().replace("__NAME__", name).replace("__VERSION__", version)
        .replace("__MARKERS__", str(markers) if markers else ""))
    binary = "plugin.py"
    if wrapper:
        binary = "bin/run"
        (pdir / "bin").mkdir()
        run = pdir / "bin" / "run"
        run.write_text(WRAPPER.read_text().replace("__PYTHON__", sys.executable)
                       .replace("__SCRIPT__", "plugin.py"))  # relative: runs from its dir
        run.chmod(0o755)
    (pdir / "plugin.yaml").write_text(yaml.safe_dump(
        {"name": name, "version": version, "runtime": "grpc", "binary": binary}))
    return pdir


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` (None for directories), symlinks included, not followed."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            rel = str(p.relative_to(root))
            out[rel] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return out


def zip_bytes(entries: list[tuple[zipfile.ZipInfo | str, bytes]],
              compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name" is the point of one test
        with zipfile.ZipFile(buf, "w", compression=compression) as zf:
            for info, data in entries:
                zf.writestr(info, data)
    return buf.getvalue()


def base_entries(name: str) -> list[tuple[zipfile.ZipInfo | str, bytes]]:
    """A valid wasm package: plugin.yaml and the module."""
    manifest = yaml.safe_dump({"name": name, "version": "1.0.0", "runtime": "wasm"})
    return [("plugin.yaml", manifest.encode()), (f"{name}.wasm", wat_bytes(name=name))]


def special(name: str, mode: int, data: bytes = b"") -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix, so external_attr carries st_mode
    info.external_attr = mode << 16
    return info, data


def one_error(errors: list[Any], name: str) -> PluginLoadError | ManifestError:
    mine = [e for e in errors if getattr(e, "plugin", None) == name]
    assert len(mine) == 1, errors
    assert isinstance(mine[0], PluginLoadError | ManifestError), repr(mine[0])
    assert f"'{name}'" in str(mine[0])
    return mine[0]


def private_leftovers(loader: Loader) -> list[Path]:
    root = loader.stager._root
    return [] if root is None else sorted(root.rglob("*"))


# -- pack, then load ------------------------------------------------------------------------


def test_cli_pack_then_load_wasm_and_grpc(tmp_path: Path, src: Path, plugins: Path,
                                          manager: Manager, loader_for: MakeLoader) -> None:
    write_plugin_dir(src, "w", version="1.2.0")
    grpc_dir(src, "g", "2.0.0")
    env = dict(os.environ, COLUMNS="200")
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "plughost", "pack", str(src / name), "-o",
         str(plugins / f"{name}.zip")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env) for name in ("w", "g")}  # in parallel: start-up is the slow part
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert f"{name}.zip" in out
    assert sorted(p.name for p in plugins.iterdir()) == ["g.zip", "w.zip"]  # no temp left
    loader = loader_for()
    assert loader.load_all() == (2, [])
    kinds = {d.name: d.type for d in loader.discovered_plugins()}
    assert kinds == {"w": "wasm", "g": "grpc"}
    assert manager.call("w", "version") == "1.2.0"
    assert manager.call("g", "version") == "2.0.0"
    # the grpc plugin runs from the private unpacked copy, not from anything in plugins/
    cwd = Path(manager.call("g", "cwd")).resolve()
    assert loader.stager._root is not None
    assert cwd.is_relative_to(loader.stager._root.resolve())
    assert (cwd / "plugin.yaml").is_file()
    assert sorted(p.name for p in plugins.iterdir()) == ["g.zip", "w.zip"]
    loader.close()
    assert not cwd.exists()


def test_pack_is_deterministic_and_keeps_the_exec_bit(tmp_path: Path, src: Path,
                                                      plugins: Path, manager: Manager,
                                                      loader_for: MakeLoader) -> None:
    pdir = grpc_dir(src, "sh", wrapper=True)
    (pdir / "data").mkdir()
    (pdir / "data" / "table.json").write_text("{}")
    a, b = tmp_path / "a.zip", plugins / "sh.zip"
    assert pack(pdir, a) == 4
    os.utime(pdir / "plugin.py", (1, 1))  # timestamps do not matter
    pack(pdir, b)
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(b) as zf:
        names = zf.namelist()
        modes = {i.filename: i.external_attr >> 16 for i in zf.infolist()}
    assert names == sorted(names) == ["bin/run", "data/table.json", "plugin.py", "plugin.yaml"]
    assert modes["bin/run"] & 0o111 and not modes["plugin.yaml"] & 0o111
    # the shell wrapper is exec'd directly (X_OK): its bit survived the round trip
    assert loader_for().load_all() == (1, [])
    assert manager.call("sh", "version") == "1.0.0"


def test_pack_refuses_what_it_cannot_pack(tmp_path: Path, src: Path) -> None:
    (src / "empty").mkdir()
    with pytest.raises(PluginLoadError, match=r"no plugin\.yaml"):
        pack(src / "empty", tmp_path / "x.zip")
    pdir = write_plugin_dir(src, "linked")
    (pdir / "link").symlink_to("/etc/passwd")
    with pytest.raises(PluginLoadError, match="link, which is not a regular file"):
        pack(pdir, tmp_path / "x.zip")
    (pdir / "link").unlink()
    (pdir / "dirlink").symlink_to(src, target_is_directory=True)
    with pytest.raises(PluginLoadError, match="symlink"):
        pack(pdir, tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()
    r = CliRunner().invoke(app, ["pack", str(src / "empty"), "-o", str(tmp_path / "y.zip")])
    assert r.exit_code != 0 and "no plugin.yaml" in " ".join(r.stderr.split())
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_signed_directory_packed_verifies_inside(tmp_path: Path, src: Path, plugins: Path,
                                                 manager: Manager,
                                                 loader_for: MakeLoader) -> None:
    generate_keypair(tmp_path / "k")
    key, pub = load_private_key(tmp_path / "k"), tmp_path / "k.pub"
    for pdir in (write_plugin_dir(src, "w"), grpc_dir(src, "g")):
        sign_path(pdir, key)
        pack(pdir, plugins / f"{pdir.name}.zip")
        with zipfile.ZipFile(plugins / f"{pdir.name}.zip") as zf:
            assert "plugin.sig" in zf.namelist()
    unsigned = write_plugin_dir(src, "u")
    pack(unsigned, plugins / "u.zip")
    # tampered after packing: same plugin.sig, different module inside
    with zipfile.ZipFile(plugins / "w.zip") as zf:
        entries = [(i.filename, zf.read(i)) for i in zf.infolist()]
    entries = [(n, wat_bytes(name="t", version="6.6.6") if n == "w.wasm" else
                d.replace(b"name: w", b"name: t") if n == "plugin.yaml" else d)
               for n, d in entries]
    (plugins / "t.zip").write_bytes(zip_bytes(list(entries)))

    loader = loader_for([pub])
    count, errors = loader.load_all()
    assert count == 2 and manager.names() == ["g", "w"]
    assert manager.call("w", "version") == "1.0.0" and manager.call("g", "version") == "1.0.0"
    assert isinstance(one_error(errors, "u"), SignatureError)
    assert "unsigned" in str(one_error(errors, "u"))
    assert isinstance(one_error(errors, "t"), SignatureError)
    assert "does not match" in str(one_error(errors, "t"))
    # refused packages leave nothing unpacked; only the two running versions have dirs
    assert len([p for p in loader.stager._root.iterdir()]) == 2  # type: ignore[union-attr]


def test_zip_sidecar_signature(tmp_path: Path, src: Path, plugins: Path, manager: Manager,
                               loader_for: MakeLoader) -> None:
    generate_keypair(tmp_path / "k")
    key, pub = load_private_key(tmp_path / "k"), tmp_path / "k.pub"
    pack(write_plugin_dir(src, "x"), plugins / "x.zip")
    sig = sign_path(plugins / "x.zip", key)
    assert sig == plugins / "x.zip.sig"
    assert loader_for([pub]).load_all() == (1, [])
    assert manager.call("x", "version") == "1.0.0"
    manager.shutdown_all()
    # any change to the archive bytes (here: its comment) breaks the sidecar
    with zipfile.ZipFile(plugins / "x.zip", "a") as zf:
        zf.comment = b"changed"
    count, errors = loader_for([pub]).load_all()
    assert count == 0
    assert isinstance(one_error(errors, "x"), SignatureError)


def test_replaced_package_is_reloaded_by_the_watcher(src: Path, plugins: Path,
                                                     manager: Manager,
                                                     loader_for: MakeLoader) -> None:
    pack(write_plugin_dir(src, "x", version="1.0.0"), plugins / "x.zip")
    loader = loader_for()
    loader.load_all()
    reloaded = threading.Event()

    def listener(e: Event) -> None:
        if e.kind == "reload" and e.plugin == "x" and e.detail == "2.0.0":
            reloaded.set()

    manager.add_listener(listener)
    loader.watch_dir(debounce_ms=100)
    first = private_leftovers(loader)
    (src / "x" / "x.wasm").write_bytes(wat_bytes(name="x", version="2.0.0"))
    pack(src / "x", plugins / "x.zip")  # pack writes a temp file and renames it in
    assert reloaded.wait(20)
    assert manager.call("x", "version") == "2.0.0"
    # the old version's private copy went away with it
    wait_until(lambda: not any(p.exists() for p in first))
    assert len(list(loader.stager._root.iterdir())) == 1  # type: ignore[union-attr]


# -- hostile archives -----------------------------------------------------------------------


def _crc_corrupted(name: str) -> bytes:
    data = bytearray(zip_bytes(base_entries(name), compression=zipfile.ZIP_STORED))
    module = wat_bytes(name=name)
    at = data.find(module)
    data[at + len(module) // 2] ^= 0xFF  # stored: flip a byte of the module itself
    return bytes(data)


def _hostile(case: str, name: str, outside: Path) -> tuple[bytes, str]:
    """(archive bytes, a fragment the refusal must contain) for one trick. The loader's
    limits are small (1 MB total, 20 files), except for the ratio bombs (defaults)."""
    e = base_entries(name)
    big = b"\0" * 3_000_000
    if case == "zip-slip":
        return zip_bytes([*e, ("../evil", b"pwned")]), "'..'"
    if case == "zip-slip-nested":
        return zip_bytes([*e, ("sub/../../../evil", b"pwned")]), "'..'"
    if case == "zip-slip-backslash":
        return zip_bytes([*e, ("..\\..\\evil", b"pwned")]), "malformed"
    if case == "absolute":
        return zip_bytes([*e, (str(outside / "abs-evil"), b"pwned")]), "absolute"
    if case == "symlink":
        return zip_bytes([*e, special("link", stat.S_IFLNK | 0o777, b"/etc/passwd")]), \
            "symlink"
    if case == "symlink-escape-then-write":
        return zip_bytes([*e, special("up", stat.S_IFLNK | 0o777, b"../../.."),
                          ("up/evil", b"pwned")]), "symlink"
    if case == "device":
        return zip_bytes([*e, special("dev", stat.S_IFCHR | 0o666)]), "device"
    if case == "fifo":
        return zip_bytes([*e, special("pipe", stat.S_IFIFO | 0o666)]), "special"
    if case == "bomb-total":
        return zip_bytes([*e, ("zeros.bin", big)]), "bytes"  # vs max_total_bytes=1 MB
    if case == "bomb-ratio":
        return zip_bytes([*e, ("zeros.bin", b"\0" * 5_000_000)]), "expands more than 200x"
    if case == "bomb-many":  # each entry declares less than the cap, together more
        return zip_bytes([*e, ("z1", b"\0" * 600_000), ("z2", b"\0" * 600_000)]), \
            "more than 1000000 bytes uncompressed"
    if case == "bomb-spread":  # each entry under the per-entry ratio check's 1 MB floor
        return zip_bytes([*e, *[(f"z{i}", b"\0" * 900_000) for i in range(6)]]), \
            "overall"
    if case == "too-many-files":
        return zip_bytes([*e, *[(f"f{i}", b"x") for i in range(30)]]), "entries"
    if case == "truncated":
        good = zip_bytes(e)
        return good[: len(good) // 2], "zip"
    if case == "garbage":
        return os.urandom(4096), "zip"
    if case == "crc":
        return _crc_corrupted(name), "corrupt"
    if case == "duplicate":
        return zip_bytes([*e, ("plugin.yaml", b"name: other\n")]), "twice"
    if case == "duplicate-dot":
        return zip_bytes([*e, (f"./{name}.wasm", b"\0asm")]), "twice"
    if case == "encrypted-entry":
        data = bytearray(zip_bytes([*e, ("secret.bin", b"x" * 100)],
                                   compression=zipfile.ZIP_STORED))
        for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            at = data.rfind(sig)  # the last entry: secret.bin
            data[at + flag_at] |= 0x01
        return bytes(data), "corrupt"
    if case == "manifest-escapes":
        manifest = yaml.safe_dump({"name": name, "runtime": "wasm", "wasm": "../x.wasm"})
        return zip_bytes([("plugin.yaml", manifest.encode()), *e[1:]]), "wasm"
    if case == "no-manifest":
        return zip_bytes(e[1:]), "plugin.yaml"
    raise AssertionError(case)


HOSTILE = ["zip-slip", "zip-slip-nested", "zip-slip-backslash", "absolute", "symlink",
           "symlink-escape-then-write", "device", "fifo", "bomb-total", "bomb-ratio",
           "bomb-many", "bomb-spread",
           "too-many-files", "truncated", "garbage", "crc", "duplicate", "duplicate-dot",
           "encrypted-entry", "manifest-escapes", "no-manifest"]


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_archive_is_refused_and_contained(tmp_path: Path, plugins: Path,
                                                  manager: Manager, loader_for: MakeLoader,
                                                  case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    data, needle = _hostile(case, "bad", outside)
    (plugins / "bad.zip").write_bytes(data)
    write_wasm(plugins, "ok")
    before = tree(tmp_path)
    limits = PackageLimits(max_files=20) if case in ("bomb-ratio", "bomb-spread") else \
        PackageLimits(max_total_bytes=1_000_000, max_files=20)
    loader = loader_for(limits=limits)
    count, errors = loader.load_all()
    err = one_error(errors, "bad")
    assert needle in str(err), str(err)
    if case != "manifest-escapes":  # see test_manifest_error_in_a_package_names_the_package
        assert "bad.zip" in str(err)
    assert count == 1 and manager.names() == ["ok"]
    assert manager.call("ok", "version") == "1.0.0"
    # nothing landed anywhere: not next to the plugins, not above them, not in /
    assert tree(tmp_path) == before
    assert not (outside / "abs-evil").exists()
    assert not Path("/evil").exists()
    # and the private extraction dir is gone again
    assert private_leftovers(loader) == []
    # a lazy call hits the same refusal
    manager.shutdown_all()
    lazy = loader_for(limits=limits, lazy=True)
    lazy.load_all()
    with pytest.raises((PluginLoadError, ManifestError)):
        manager.call("bad", "version")
    assert private_leftovers(lazy) == []


def test_extract_refuses_into_an_existing_dir_and_cleans_up(tmp_path: Path) -> None:
    """extract() itself: the destination is created fresh, and removed on refusal."""
    dest = tmp_path / "dest"
    data = zip_bytes([*base_entries("x"), ("../evil", b"pwned")])
    with pytest.raises(PluginLoadError, match=r"package refused.*'\.\.'") as info:
        extract(data, dest, plugin="x", source=tmp_path / "x.zip")
    assert info.value.plugin == "x" and info.value.path == str(tmp_path / "x.zip")
    assert not dest.exists() and not (tmp_path / "evil").exists()
    with pytest.raises(PluginLoadError, match="not a valid zip archive"):
        extract(b"PK\x03\x04 and then nothing", dest, plugin="x", source=tmp_path / "x.zip")
    assert not dest.exists()
    dest.mkdir()
    with pytest.raises(FileExistsError):
        extract(zip_bytes(base_entries("x")), dest, plugin="x", source=tmp_path / "x.zip")
    ok = extract(zip_bytes(base_entries("x")), tmp_path / "fresh", plugin="x",
                 source=tmp_path / "x.zip")
    assert sorted(p.name for p in ok.iterdir()) == ["plugin.yaml", "x.wasm"]
    assert stat.S_IMODE(ok.stat().st_mode) == 0o700
    assert stat.S_IMODE((ok / "x.wasm").stat().st_mode) == 0o600


def test_header_declaring_fewer_bytes_than_stored_is_refused(tmp_path: Path) -> None:
    """A central directory that under-declares an entry's size: refused (the data does not
    match its checksum), and nothing of it stays on disk."""
    payload = os.urandom(600_000)  # incompressible: the ratio check stays out of it
    data = bytearray(zip_bytes([*base_entries("x"), ("blob", payload)],
                               compression=zipfile.ZIP_STORED))
    # declare 10 bytes for `blob` in the central directory (the one zipfile believes)
    at = data.rfind(b"PK\x01\x02")
    data[at + 24:at + 28] = (10).to_bytes(4, "little")
    with pytest.raises(PluginLoadError, match="x"):
        extract(bytes(data), tmp_path / "d", plugin="x", source=tmp_path / "x.zip",
                limits=PackageLimits(max_total_bytes=500_000))
    assert not (tmp_path / "d").exists()


# -- bugs -----------------------------------------------------------------------------------


def test_package_of_a_manifest_without_name_loads(src: Path, plugins: Path,
                                                  manager: Manager,
                                                  loader_for: MakeLoader) -> None:
    pdir = src / "nn"
    pdir.mkdir()
    (pdir / "nn.wasm").write_bytes(wat_bytes(name="nn"))
    (pdir / "plugin.yaml").write_text("version: 1.0.0\nruntime: wasm\n")
    pack(pdir, plugins / "nn.zip")
    assert loader_for().load_all() == (1, [])
    assert manager.call("nn", "version") == "1.0.0"


def test_file_and_directory_with_one_name_is_refused(plugins: Path, manager: Manager,
                                                     loader_for: MakeLoader) -> None:
    (plugins / "bad.zip").write_bytes(zip_bytes([*base_entries("bad"), ("a", b"file"),
                                                 ("a/b", b"file under a file")]))
    write_wasm(plugins, "ok")
    loader = loader_for()
    count, errors = loader.load_all()
    one_error(errors, "bad")
    assert count == 1 and manager.names() == ["ok"]


def test_manifest_error_in_a_package_names_the_package(plugins: Path,
                                                       loader_for: MakeLoader) -> None:
    manifest = yaml.safe_dump({"name": "bad", "runtime": "wasm", "wasm": "../x.wasm"})
    (plugins / "bad.zip").write_bytes(zip_bytes([("plugin.yaml", manifest.encode()),
                                                 ("bad.wasm", wat_bytes(name="bad"))]))
    _, errors = loader_for().load_all()
    err = one_error(errors, "bad")
    assert "'..'" in str(err)
    assert err.path is not None and err.path.startswith(str(plugins / "bad.zip"))


def _patched_manifest(name: str, mode: str) -> bytes:
    data = bytearray(zip_bytes(base_entries(name), compression=zipfile.ZIP_STORED))
    for sig, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = data.find(sig)  # the first entry: plugin.yaml
        if mode == "encrypted":
            data[at + flag_at] |= 0x01
        else:
            data[at + method_at:at + method_at + 2] = (99).to_bytes(2, "little")
    return bytes(data)


@pytest.mark.parametrize("mode", ["encrypted", "unknown-method"])
def test_unreadable_manifest_inside_a_package_is_reported(plugins: Path, manager: Manager,
                                                          loader_for: MakeLoader,
                                                          mode: str) -> None:
    (plugins / "bad.zip").write_bytes(_patched_manifest("bad", mode))
    write_wasm(plugins, "ok")
    count, errors = loader_for().load_all()
    one_error(errors, "bad")
    assert count == 1 and manager.names() == ["ok"]


def test_fixture_archives_are_what_they_claim() -> None:
    """Sanity of the helpers: the patched archives really carry the trick."""
    with zipfile.ZipFile(io.BytesIO(_patched_manifest("x", "encrypted"))) as zf:
        assert zf.infolist()[0].flag_bits & 0x01
    with zipfile.ZipFile(io.BytesIO(_crc_corrupted("x"))) as zf:
        assert zf.testzip() == "x.wasm"
    info, _ = special("l", stat.S_IFLNK | 0o777)
    assert stat.S_ISLNK(info.external_attr >> 16)
