"""On-disk cache of compiled wasm modules, so a second load does not recompile.

Entries are keyed by sha256(module bytes) + wasmtime version + engine settings, written
atomically, and carry a digest of their own payload. `Module.deserialize` trusts its input
completely, so an entry whose digest does not match (corrupt, truncated, or written by
something else) is never handed to it: it is deleted and replaced by a fresh compile.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import wasmtime

logger = logging.getLogger(__name__)

_MAGIC = b"PLUGHOST-CWASM-1\n"
# Compiled modules kept in memory: each holds its code and a memory image (an fd), so
# a reload-heavy host keeps only the last few; the disk cache serves the rest.
_MEMORY_ENTRIES = 8
_DIGEST = 32


def default_cache_dir() -> Path:
    env = os.environ.get("PLUGHOST_CACHE_DIR")
    if env:
        return Path(env)
    return Path(platformdirs.user_cache_dir("plughost")) / "modules"


@dataclass
class CacheStats:
    hits: int = 0  # served from disk
    misses: int = 0  # not on disk: compiled (and written)
    memory_hits: int = 0  # served from this process's memory (same bytes loaded again)
    rejected: int = 0  # entries found but refused (corrupt, foreign, unreadable)
    write_errors: int = 0


class ModuleCache:
    """Compiles modules through the cache. `directory=None` disables caching."""

    def __init__(self, engine: wasmtime.Engine, engine_fingerprint: str,
                 directory: Path | None) -> None:
        self._engine = engine
        self._fingerprint = engine_fingerprint
        self.directory = directory
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._memory: OrderedDict[str, wasmtime.Module] = OrderedDict()
        self._checked: bool | None = None if directory is not None else False

    def key(self, wasm: bytes) -> str:
        h = hashlib.sha256(wasm)
        h.update(b"\0" + self._fingerprint.encode())
        return h.hexdigest()

    def compile(self, wasm: bytes, *, use_disk: bool = True) -> wasmtime.Module:
        """Return the module for `wasm`, from the cache when a trustworthy entry exists.

        `use_disk=False` (signature verification on) never deserializes from disk: a cache
        entry is native code that anyone able to write the cache dir could have planted,
        so verified bytes are compiled (or found compiled in this process's memory).
        Raises `wasmtime.WasmtimeError` when `wasm` itself does not compile.
        """
        key = self.key(wasm)
        with self._lock:
            module = self._memory.get(key)
            if module is not None:
                self._memory.move_to_end(key)
                self.stats.memory_hits += 1
                return module
        directory = self.directory if use_disk and self._usable() else None
        path = directory / f"{key}.cwasm" if directory is not None else None
        module = self._read(path) if path is not None else None
        if module is not None:
            with self._lock:
                self.stats.hits += 1
        else:
            module = wasmtime.Module(self._engine, wasm)
            if path is not None:
                with self._lock:
                    self.stats.misses += 1
                self._write(path, bytes(module.serialize()))
        with self._lock:
            self._memory[key] = module
            while len(self._memory) > _MEMORY_ENTRIES:
                self._memory.popitem(last=False)
        return module

    def _usable(self) -> bool:
        """The disk cache is used only in a directory that is ours alone."""
        if self._checked is not None:
            return self._checked
        assert self.directory is not None
        try:
            st = self.directory.stat()
        except (FileNotFoundError, NotADirectoryError):
            self._checked = True  # created 0700 on first write (which may fail: counted)
            return True
        except OSError:
            self._checked = False
            return False
        ok = st.st_uid == os.getuid() and not st.st_mode & 0o022
        if not ok:
            logger.warning("module cache %s is writable by others or not ours; not using it",
                           self.directory)
        self._checked = ok
        return ok

    def _read(self, path: Path) -> wasmtime.Module | None:
        try:
            blob = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None  # no entry (or no cache dir yet): a plain miss
        except OSError as exc:
            logger.warning("module cache entry %s unreadable (%s); recompiling", path, exc)
            self._reject(path)
            return None
        head = len(_MAGIC) + _DIGEST
        payload = blob[head:]
        if (len(blob) <= head or not blob.startswith(_MAGIC)
                or hashlib.sha256(payload).digest() != blob[len(_MAGIC):head]):
            logger.warning("module cache entry %s is corrupt or foreign; replacing it", path)
            self._reject(path)
            return None
        try:
            return wasmtime.Module.deserialize(self._engine, payload)
        except wasmtime.WasmtimeError as exc:
            # Intact but not ours to run (another wasmtime build or engine setting).
            logger.warning("module cache entry %s rejected by wasmtime (%s); replacing it",
                           path, str(exc).splitlines()[0] if str(exc) else exc)
            self._reject(path)
            return None

    def _reject(self, path: Path) -> None:
        with self._lock:
            self.stats.rejected += 1
        with contextlib.suppress(OSError):
            path.unlink()

    def _write(self, path: Path, payload: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".cwasm")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(_MAGIC + hashlib.sha256(payload).digest() + payload)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)  # readers see the old entry or the whole new one
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            # A read-only or full cache dir costs speed, never correctness.
            with self._lock:
                self.stats.write_errors += 1
            logger.warning("cannot write module cache entry %s: %s", path, exc)
