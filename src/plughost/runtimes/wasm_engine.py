"""The engine every wasm plugin shares: compile settings, the epoch ticker that enforces
deadlines, the one linker, the compiled-module cache and the WASI output pump."""

from __future__ import annotations

import importlib.metadata
import math
import platform
import threading
from pathlib import Path

import wasmtime

from .wasm_cache import ModuleCache, default_cache_dir
from .wasm_imports import define_imports
from .wasm_output import OutputPump

TICK_SECONDS = 0.01  # epoch granularity: deadlines are honoured to about this


class WasmEngine:
    """The shared engine: compile settings, the epoch ticker that enforces deadlines, and
    the compiled-module cache. Create one per host (the `Loader` does)."""

    def __init__(self, cache_dir: Path | str | None = "default") -> None:
        cfg = wasmtime.Config()
        cfg.epoch_interruption = True
        self.engine = wasmtime.Engine(cfg)
        # Everything that changes the compiled code must be in the cache key.
        fingerprint = ";".join([
            f"wasmtime={importlib.metadata.version('wasmtime')}",
            f"machine={platform.machine()}",
            "epoch_interruption=1",
        ])
        directory = default_cache_dir() if cache_dir == "default" else (
            Path(cache_dir) if cache_dir is not None else None)
        self.cache = ModuleCache(self.engine, fingerprint, directory)
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._linker: wasmtime.Linker | None = None
        self.output = OutputPump()

    def linker(self) -> wasmtime.Linker:
        """The one linker of this engine: WASI and the gk imports, defined once.

        Per-instance host functions would leak: wasmtime-py keeps every defined function
        in a process-global table until wasmtime drops it, and wasmtime drops it with the
        store, which the function's own closure kept alive. These functions hold no
        instance; they find it through `entered`.
        """
        with self._lock:
            if self._linker is None:
                linker = wasmtime.Linker(self.engine)
                linker.define_wasi()
                define_imports(linker)
                self._linker = linker
            return self._linker

    def _ensure_ticker(self) -> None:
        if self._ticker is not None:
            return
        with self._lock:
            if self._ticker is None:
                self._ticker = threading.Thread(
                    target=self._tick, name="plughost-wasm-epoch", daemon=True)
                self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            self.engine.increment_epoch()

    def arm(self, store: wasmtime.Store, seconds: float) -> None:
        """Make `store` trap once `seconds` have passed (used before every entry into wasm)."""
        self._ensure_ticker()
        store.set_epoch_deadline(max(1, math.ceil(seconds / TICK_SECONDS)) + 1)

    def __enter__(self) -> WasmEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
