"""How the loader learns a bare module's name: it asks the module (its registration), and
keeps the answer in `Identities` (identity.py); discovery is then derived again with it.

A mixin of `Loader`, kept apart because naming is its own rule (docs/plugin-authors.md,
"Names") with its own failure modes: a module that cannot be asked, a name another plugin
holds, a reload that would rename a running plugin.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import TYPE_CHECKING

from .discovery import Found, bare_manifest
from .errors import PlughostError, PluginLoadError, PluginNotFound
from .identity import Identities
from .logs import PluginLog
from .plugin import Identifying, Runtime, Staged, StartContext
from .runtimes.base import release_private_copy

if TYPE_CHECKING:
    from .manager import Manager
    from .staging import Stager

logger = logging.getLogger(__name__)


class Naming:
    """The naming part of `Loader` (which provides the attributes below)."""

    identities: Identities
    manager: Manager
    runtimes: dict[str, Runtime]
    stager: Stager
    _lock: threading.Lock
    _all: list[Found]
    _found: dict[str, Found]

    def _derive(self) -> list[Found]:
        raise NotImplementedError  # Loader's

    def _identify(self, found: Found) -> Found:
        """Ask a provisional bare module its name; returns its entry under that name (or
        raises why it cannot be named or loaded, e.g. the name belongs to another plugin)."""
        try:
            staged = self.stager.stage(found)
            name = self._registered_name(found, staged)
        except Exception as exc:
            if not isinstance(exc, PlughostError):  # a bug of ours: still this module's
                logger.exception("unexpected error asking %s its name", found.path)
                exc = PluginLoadError(f"unexpected error: {exc!r}", plugin=found.name,
                                      path=found.path)
            self._could_not_ask(found, exc)
            raise exc from None
        entry = self._named(found, name)
        if entry is None:
            raise PluginNotFound("disappeared while it was being named", plugin=found.name,
                                 path=found.path)
        return entry

    def _named(self, found: Found, name: str) -> Found | None:
        """Learn that the module at `found.path` registers as `name`; its entry under that
        name (None if it is gone), or raise why that name is not its to have."""
        self.identities.learn(found.path, name)
        with self._lock:
            self._derive()
            entry = next((f for f in self._all if f.path == found.path), None)
        if entry is not None and entry.error is not None:
            raise entry.error
        return entry

    def _could_not_ask(self, found: Found, exc: PlughostError) -> None:
        logger.warning("cannot ask %s its name: %s", found.path, exc)
        self.identities.could_not_ask(found.path, exc)
        with self._lock:
            self._derive()
            owner = self._found.get(found.name)
        # In the stem's log and events only while no other plugin has that name.
        if owner is not None and owner.path == found.path:
            self.manager.log_for(found.name).error(f"load failed: {exc.message}",
                                                   source="host")
            self.manager.emit("error", found.name, str(exc))

    def _registered_name(self, found: Found, staged: Staged) -> str:
        runtime = self.runtimes.get("wasm")
        if not isinstance(runtime, Identifying):
            raise PluginLoadError("this loader's wasm runtime cannot name a bare module",
                                  plugin=found.name, path=found.path)
        # Started only to be asked its name: its host calls get nothing, as GoatFlow's
        # get nothing during gk_register, and its output is not kept.
        return runtime.identify(staged, StartContext(
            host=self.manager.host, log=PluginLog(found.name), verified=self.stager.require))

    def _same_name(self, found: Found, staged: Staged) -> Staged:
        """A bare module must still register as the name it is known by: a running one is
        not renamed by a reload (`NameChanged`); one not loaded is known by its new name
        from now on, and is refused if that name is another plugin's."""
        name = self._registered_name(found, staged)
        if name == found.name:
            return staged
        running = self.manager.get(found.name)
        if running is not None and running.source.path == found.path:
            release_private_copy(staged.source)
            raise Identities.changed(found, name)
        try:
            self._named(found, name)
        except PlughostError:
            release_private_copy(staged.source)
            raise
        return replace(staged, source=replace(staged.source, name=name,
                                              manifest=bare_manifest(name)))
