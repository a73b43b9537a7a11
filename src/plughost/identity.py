"""Names of bare modules: a `.wasm` with no manifest is named by its registration.

GoatFlow keys a plugin by the name `gk_register` returns, never by its file: its
`hello-wasm/hello.wasm` is the plugin `hello-wasm`. plughost does the same, and guards it:

- the name is learnt by asking the module (the wasm runtime's `identify`: one start under
  the usual limits, `gk_register`, shut down; once per module digest), and then sticks to
  the file's path, so rescans, reloads and the watcher use it;
- until then the file stem is a provisional name that blocks nobody (discovery.py);
- a name taken from another plugin is refused, with both paths (discovery.py);
- a reload whose new version registers another name is refused: the running version keeps
  serving (`NameChanged`);
- a lazy first call by the registered name finds the module: unknown names make the loader
  ask the modules it has not asked yet (`Identities.pending`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

from .discovery import Found
from .errors import NameChanged, PlughostError
from .signing import sidecar

__all__ = ["Identities"]

def _stamp(path: Path) -> tuple[int, ...] | None:
    """The module's and its signature's mtime and size: a change to either asks again."""
    out: list[int] = []
    for p in (path, sidecar(path)):
        try:
            st = os.stat(p)
        except OSError:
            if p == path:
                return None
            continue
        out += [st.st_mtime_ns, st.st_size]
    return tuple(out)


class Identities:
    """What the loader has learnt: path -> registered name, and the modules that could
    not be asked (not asked again until their file changes). Thread-safe."""

    def __init__(self) -> None:
        self._names: dict[Path, str] = {}
        #: path -> (its file's stamp when asking failed, why)
        self._failed: dict[Path, tuple[tuple[int, ...] | None, PlughostError]] = {}
        self._lock = threading.Lock()

    def names(self) -> dict[Path, str]:
        with self._lock:
            return dict(self._names)

    def name_of(self, path: Path) -> str | None:
        with self._lock:
            return self._names.get(path)

    def learn(self, path: Path, name: str) -> None:
        with self._lock:
            self._names[path] = name
            self._failed.pop(path, None)

    def could_not_ask(self, path: Path, why: PlughostError) -> None:
        with self._lock:
            self._failed[path] = (_stamp(path), why)

    def failure(self, path: Path) -> PlughostError | None:
        """Why asking this module failed, while its file is unchanged since."""
        with self._lock:
            failed = self._failed.get(path)
        return failed[1] if failed is not None and failed[0] == _stamp(path) else None

    def forget(self, paths: Iterable[Path]) -> None:
        with self._lock:
            for p in paths:
                self._names.pop(p, None)
                self._failed.pop(p, None)

    def outdated(self, found: Found) -> bool:
        """Is `found.error` a failure to ask a module whose file has changed since?"""
        with self._lock:
            failed = self._failed.get(found.path)
        return failed is not None and failed[1] is found.error and failed[0] != _stamp(
            found.path)

    def asked_and_failed(self, found: Found) -> bool:
        """Is `found.error` this module's failure to be asked its name (of any age)?"""
        with self._lock:
            failed = self._failed.get(found.path)
        return failed is not None and failed[1] is found.error

    def pending(self, entries: Iterable[Found], *, retry: bool = False) -> list[Found]:
        """Provisional entries worth asking: not asked yet, or changed since asking failed
        (`retry`: those that failed too, for an explicit load)."""
        return [f for f in entries if f.provisional and (
            (f.error is None and self.failure(f.path) is None)
            or (retry and self.asked_and_failed(f)) or self.outdated(f))]

    @staticmethod
    def changed(found: Found, name: str) -> NameChanged:
        return NameChanged(
            f"its new version registers as {name!r}; a plugin's name cannot change, so "
            f"{found.name!r} keeps serving (remove the file, then add the new one)",
            plugin=found.name, path=found.path)
