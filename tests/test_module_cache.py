"""The compiled-module cache (runtimes/wasm_cache.py): hits, misses, and refusing every
entry that is not a trustworthy compile for this engine. Each test uses its own engine and
cache directory."""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from plughost import Loader, Manager, PluginTimeout
from plughost.runtimes import wasm_cache
from plughost.runtimes.wasm import WasmEngine
from plughost.runtimes.wasm_cache import ModuleCache

from .conftest import wat_bytes, write_plugin_dir, write_wasm

HEAD = len(wasm_cache._MAGIC) + wasm_cache._DIGEST


@pytest.fixture
def make_engine() -> Iterator[Callable[[Path | None], WasmEngine]]:
    engines: list[WasmEngine] = []

    def make(cache_dir: Path | None) -> WasmEngine:
        eng = WasmEngine(cache_dir)
        engines.append(eng)
        return eng

    yield make
    for eng in engines:
        eng.close()


@pytest.fixture
def wasm() -> bytes:
    """The bytes the Loader reads for plugin "tk" (same bytes, same cache key)."""
    return wat_bytes("testkit", "tk")


def entries(cache: Path) -> list[Path]:
    return sorted(cache.iterdir()) if cache.exists() else []


def assert_valid_entry(path: Path, eng: WasmEngine) -> bytes:
    """The entry is magic + sha256(payload) + payload, and the payload is a module this
    engine accepts. Returns the payload."""
    blob = path.read_bytes()
    assert blob.startswith(wasm_cache._MAGIC)
    payload = blob[HEAD:]
    assert len(payload) > 0
    assert blob[len(wasm_cache._MAGIC):HEAD] == hashlib.sha256(payload).digest()
    wasmtime.Module.deserialize(eng.engine, payload)
    return payload


def serve(eng: WasmEngine, plugins: Path, fn: str = "count", args: Any = None) -> Any:
    """Load plugins/ through a Loader on `eng`, call tk.<fn> once, unload everything."""
    manager = Manager(drain_timeout=5.0)
    try:
        loader = Loader(plugins, manager, engine=eng)
        assert loader.load_all() == (1, [])
        return manager.call("tk", fn, args)
    finally:
        manager.close()


def stats(eng: WasmEngine) -> tuple[int, int, int, int]:
    s = eng.cache.stats
    return s.hits, s.misses, s.rejected, s.write_errors


# --------------------------------------------------------------------------------------


def test_first_compile_is_a_miss_and_writes_one_entry(
        tmp_path: Path, plugins: Path, make_engine: Callable[[Path | None], WasmEngine],
        wasm: bytes) -> None:
    cache = tmp_path / "cache"
    eng = make_engine(cache)
    write_wasm(plugins, "tk")
    assert serve(eng, plugins) == 1
    assert stats(eng) == (0, 1, 0, 0)
    files = entries(cache)
    assert [f.name for f in files] == [f"{eng.cache.key(wasm)}.cwasm"]  # no temp files left
    assert_valid_entry(files[0], eng)


def test_second_engine_on_the_same_dir_hits(
        tmp_path: Path, plugins: Path, make_engine: Callable[[Path | None], WasmEngine],
        wasm: bytes) -> None:
    cache = tmp_path / "cache"
    write_wasm(plugins, "tk")
    first = make_engine(cache)
    assert serve(first, plugins) == 1
    before = entries(cache)[0].read_bytes()

    second = make_engine(cache)
    assert serve(second, plugins, "echo", {"from": "cache"}) == {"from": "cache"}
    assert stats(second) == (1, 0, 0, 0)
    assert entries(cache)[0].read_bytes() == before  # a hit does not rewrite


def test_same_engine_compiles_once(
        tmp_path: Path, make_engine: Callable[[Path | None], WasmEngine], wasm: bytes) -> None:
    eng = make_engine(tmp_path / "cache")
    first = eng.cache.compile(wasm)
    assert eng.cache.compile(wasm) is first  # same process: served from memory
    assert stats(eng) == (0, 1, 0, 0) and eng.cache.stats.memory_hits == 1


def test_different_modules_get_different_entries(
        tmp_path: Path, make_engine: Callable[[Path | None], WasmEngine], wasm: bytes) -> None:
    cache = tmp_path / "cache"
    eng = make_engine(cache)
    eng.cache.compile(wasm)
    eng.cache.compile(wat_bytes("testkit", "tk", version="2.0.0"))
    assert stats(eng) == (0, 2, 0, 0)
    assert len(entries(cache)) == 2


def _flip(blob: bytes) -> bytes:
    b = bytearray(blob)
    for i in (HEAD + 10, len(b) // 2, len(b) - 5):
        b[i] ^= 0xFF
    return bytes(b)


def _garbage_with_valid_digest(blob: bytes) -> bytes:
    junk = random.Random(5).randbytes(len(blob) - HEAD)
    return wasm_cache._MAGIC + hashlib.sha256(junk).digest() + junk


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "flipped-payload-bytes": _flip,
    "truncated-half": lambda b: b[: len(b) // 2],
    "truncated-to-header": lambda b: b[:HEAD],
    "truncated-last-byte": lambda b: b[:-1],
    "empty": lambda b: b"",
    "garbage": lambda b: random.Random(1).randbytes(len(b)),
    "wrong-digest": lambda b: (wasm_cache._MAGIC + hashlib.sha256(b"other").digest()
                               + b[HEAD:]),
    "wrong-magic": lambda b: b"PLUGHOST-CWASM-0\n" + b[len(wasm_cache._MAGIC):],
    "garbage-payload-with-valid-digest": _garbage_with_valid_digest,
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_entry_is_rejected_recompiled_and_rewritten(
        case: str, tmp_path: Path, plugins: Path,
        make_engine: Callable[[Path | None], WasmEngine], wasm: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    write_wasm(plugins, "tk")
    assert serve(make_engine(cache), plugins) == 1
    [entry] = entries(cache)
    good = entry.read_bytes()
    bad = CORRUPTIONS[case](good)
    entry.write_bytes(bad)

    # wasmtime trusts what it deserializes: only digest-checked payloads may reach it.
    handed: list[bytes] = []
    original = wasmtime.Module.deserialize

    def spy(engine: wasmtime.Engine, data: bytes) -> wasmtime.Module:
        handed.append(bytes(data))
        return original(engine, data)

    monkeypatch.setattr(wasmtime.Module, "deserialize", staticmethod(spy))
    eng = make_engine(cache)
    assert serve(eng, plugins) == 1  # recompiled, works
    assert stats(eng) == (0, 1, 1, 0)
    if case == "garbage-payload-with-valid-digest":
        assert handed == [bad[HEAD:]]  # intact but not a module: wasmtime refused it
    else:
        assert handed == []
    assert [f.name for f in entries(cache)] == [entry.name]
    assert_valid_entry(entry, eng)

    again = make_engine(cache)  # and the rewritten entry is a hit
    assert serve(again, plugins, "version") == "1.0.0"
    assert stats(again) == (1, 0, 0, 0)


def test_entry_for_another_engine_fingerprint_is_a_miss(
        tmp_path: Path, plugins: Path, make_engine: Callable[[Path | None], WasmEngine],
        wasm: bytes) -> None:
    cache = tmp_path / "cache"
    eng = make_engine(cache)
    foreign = ModuleCache(eng.engine, "other-fingerprint", cache)
    foreign.compile(wasm)
    assert foreign.key(wasm) != eng.cache.key(wasm)
    assert [f.name for f in entries(cache)] == [f"{foreign.key(wasm)}.cwasm"]

    write_wasm(plugins, "tk")
    assert serve(eng, plugins) == 1
    assert stats(eng) == (0, 1, 0, 0)
    assert {f.name for f in entries(cache)} == {f"{foreign.key(wasm)}.cwasm",
                                                f"{eng.cache.key(wasm)}.cwasm"}


def test_intact_entry_from_another_wasmtime_config_is_rejected_never_run(
        tmp_path: Path, plugins: Path, make_engine: Callable[[Path | None], WasmEngine],
        wasm: bytes) -> None:
    # Compiled without epoch interruption: if it ran, `loop` could never be interrupted.
    cfg = wasmtime.Config()
    cfg.epoch_interruption = False
    foreign = bytes(wasmtime.Module(wasmtime.Engine(cfg), wasm).serialize())
    cache = tmp_path / "cache"
    cache.mkdir()
    eng = make_engine(cache)
    entry = cache / f"{eng.cache.key(wasm)}.cwasm"
    entry.write_bytes(wasm_cache._MAGIC + hashlib.sha256(foreign).digest() + foreign)

    write_plugin_dir(plugins, "tk", {"resources": {"call_timeout_ms": 200}})
    manager = Manager(drain_timeout=5.0)
    try:
        assert Loader(plugins, manager, engine=eng).load_all() == (1, [])
        assert stats(eng) == (0, 1, 1, 0)
        payload = assert_valid_entry(entry, eng)
        assert payload != foreign

        # The module that runs honours deadlines. Run it off this thread so that a module
        # without epoch checks would fail this test instead of hanging it.
        outcome: list[BaseException | object] = []
        done = threading.Event()

        def run() -> None:
            try:
                outcome.append(manager.call("tk", "loop"))
            except BaseException as exc:
                outcome.append(exc)
            done.set()

        threading.Thread(target=run, daemon=True).start()
        assert done.wait(60), "loop was never interrupted: the foreign module ran"
        assert len(outcome) == 1 and isinstance(outcome[0], PluginTimeout)
        assert manager.call("tk", "count") == 1
    finally:
        manager.close()


def _root_can_write(directory: Path) -> bool:
    try:
        (directory / "probe").write_bytes(b"")
    except OSError:
        return False
    (directory / "probe").unlink()
    return True


@pytest.mark.parametrize("how", ["chmod-0500", "under-a-regular-file"])
def test_unwritable_cache_still_compiles_and_counts_write_errors(
        how: str, tmp_path: Path, plugins: Path,
        make_engine: Callable[[Path | None], WasmEngine], wasm: bytes) -> None:
    if how == "chmod-0500":
        cache = tmp_path / "cache"
        cache.mkdir()
        cache.chmod(0o500)
        if _root_can_write(cache):
            cache.chmod(0o700)
            pytest.skip("running as root: chmod does not stop writes "
                        "(covered by under-a-regular-file)")
    else:
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        cache = blocker / "cache"  # mkdir fails: its parent is a file
    try:
        eng = make_engine(cache)
        write_wasm(plugins, "tk")
        assert serve(eng, plugins) == 1
        assert eng.cache.stats.write_errors == 1
        assert eng.cache.stats.misses == 1
        assert eng.cache.stats.hits == 0
        # other bytes (the same ones are now served from memory): tries the disk again,
        # fails again, still works
        eng.cache.compile(wat_bytes("testkit", "tk", version="2.0.0"))
        assert eng.cache.stats.write_errors == 2
        assert eng.cache.stats.misses == 2
    finally:
        if how == "chmod-0500":
            cache.chmod(0o700)
    if how == "chmod-0500":
        assert entries(cache) == []  # no entry and no temp file left behind
    else:
        assert blocker.read_text() == "not a directory"


def test_missing_cache_dir_is_not_counted_as_a_rejected_entry(
        tmp_path: Path, make_engine: Callable[[Path | None], WasmEngine], wasm: bytes) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    eng = make_engine(blocker / "cache")
    eng.cache.compile(wasm)
    assert eng.cache.stats.rejected == 0


def test_cache_dir_none_disables_caching(
        tmp_path: Path, plugins: Path, make_engine: Callable[[Path | None], WasmEngine],
        wasm: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGHOST_CACHE_DIR", str(tmp_path / "env-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    write_wasm(plugins, "tk")
    before = sorted(p for p in tmp_path.rglob("*"))
    eng = make_engine(None)
    assert eng.cache.directory is None
    assert serve(eng, plugins) == 1
    assert serve(eng, plugins) == 1
    assert stats(eng) == (0, 0, 0, 0)
    assert sorted(p for p in tmp_path.rglob("*")) == before

    # The Loader's own engine honours cache_dir=None too.
    manager = Manager(drain_timeout=5.0)
    loader = Loader(plugins, manager, cache_dir=None)
    try:
        assert loader.engine.cache.directory is None
        assert loader.load_all() == (1, [])
        assert manager.call("tk", "count") == 1
    finally:
        manager.close()
        loader.engine.close()
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_default_cache_dir_follows_the_environment(
        tmp_path: Path, make_engine: Callable[[Path | None], WasmEngine], wasm: bytes,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGHOST_CACHE_DIR", str(tmp_path / "env-cache"))
    eng = WasmEngine()
    try:
        assert eng.cache.directory == tmp_path / "env-cache"
        eng.cache.compile(wasm)
        assert len(entries(tmp_path / "env-cache")) == 1
    finally:
        eng.close()


def test_concurrent_compiles_leave_one_valid_entry(
        tmp_path: Path, make_engine: Callable[[Path | None], WasmEngine], wasm: bytes) -> None:
    cache = tmp_path / "cache"
    eng = make_engine(cache)
    start = threading.Barrier(8)
    modules: list[wasmtime.Module] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait(20)
            modules.append(eng.cache.compile(wasm))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(modules) == 8
    s = eng.cache.stats
    assert s.hits + s.misses == 8 and s.misses >= 1
    assert (s.rejected, s.write_errors) == (0, 0)
    [entry] = entries(cache)  # atomic writes: one entry, no temp files
    assert_valid_entry(entry, eng)


def test_cache_dir_and_entries_are_private(
        tmp_path: Path, make_engine: Callable[[Path | None], WasmEngine], wasm: bytes) -> None:
    # The cache holds native code that the host will run: nobody else may write it.
    cache = tmp_path / "cache"
    eng = make_engine(cache)
    eng.cache.compile(wasm)
    assert cache.stat().st_mode & 0o077 == 0
    [entry] = entries(cache)
    assert entry.stat().st_mode & 0o077 == 0
    assert os.access(entry, os.R_OK)


def test_verified_bytes_never_run_code_from_the_disk_cache(
        tmp_path: Path, make_engine: Callable[[Path | None], WasmEngine]) -> None:
    """A planted entry under the key of signed bytes must not run when signatures are on:
    anyone who can write the cache dir could otherwise swap the code that runs."""
    good = wat_bytes("testkit", "tk", version="1.0.0")
    evil = wat_bytes("testkit", "tk", version="6.6.6")
    cache = tmp_path / "cache"
    planter = make_engine(cache)
    planter.cache.compile(evil)  # writes evil's entry; move it under good's key
    (cache / f"{planter.cache.key(evil)}.cwasm").rename(
        cache / f"{planter.cache.key(good)}.cwasm")
    unverified = make_engine(cache)
    unverified.cache.compile(good)
    assert unverified.cache.stats.hits == 1  # unverified loads trust the cache (documented)
    verified = make_engine(cache)
    verified.cache.compile(good, use_disk=False)
    assert (verified.cache.stats.hits, verified.cache.stats.rejected) == (0, 0)
    assert (cache / f"{planter.cache.key(good)}.cwasm").exists()  # never even read


def test_cache_dir_writable_by_others_is_not_used(
        tmp_path: Path, make_engine: Callable[[Path | None], WasmEngine], wasm: bytes) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    eng = make_engine(cache)
    eng.cache.compile(wasm)
    assert list(cache.iterdir()) == []  # nothing written to (or read from) a shared dir
