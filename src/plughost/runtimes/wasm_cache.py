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
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import wasmtime

logger = logging.getLogger(__name__)

_MAGIC = b"PLUGHOST-CWASM-1\n"
_DIGEST = 32


def default_cache_dir() -> Path:
    env = os.environ.get("PLUGHOST_CACHE_DIR")
    if env:
        return Path(env)
    return Path(platformdirs.user_cache_dir("plughost")) / "modules"


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
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

    def key(self, wasm: bytes) -> str:
        h = hashlib.sha256(wasm)
        h.update(b"\0" + self._fingerprint.encode())
        return h.hexdigest()

    def compile(self, wasm: bytes) -> wasmtime.Module:
        """Return the module for `wasm`, from the cache when a trustworthy entry exists.

        Raises `wasmtime.WasmtimeError` when `wasm` itself does not compile.
        """
        if self.directory is None:
            return wasmtime.Module(self._engine, wasm)
        path = self.directory / f"{self.key(wasm)}.cwasm"
        module = self._read(path)
        if module is not None:
            with self._lock:
                self.stats.hits += 1
            return module
        module = wasmtime.Module(self._engine, wasm)
        with self._lock:
            self.stats.misses += 1
        self._write(path, bytes(module.serialize()))
        return module

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
