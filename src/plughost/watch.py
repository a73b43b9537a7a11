"""Hot reload: watch a plugin tree with watchfiles and apply what changed (SPEC 8).

Each debounced batch of changes is applied by rescanning the tree and comparing it with
what was there before, so every case reduces to three: a plugin appeared (discovered, and
loaded unless lazy), disappeared (unloaded and forgotten), or one of its files changed
(reloaded through the loader's atomic path, so a broken new version leaves the old one
serving). Renames, moved-in directories and new subdirectories are just combinations.
Hidden and editor temp files never trigger anything; files still being written are waited
for until their size and mtime stop moving.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import watchfiles

from .discovery import Found, is_ignored
from .errors import PlughostError

if TYPE_CHECKING:
    from .loader import Loader

logger = logging.getLogger(__name__)


def _relevant(change: watchfiles.Change, path: str) -> bool:
    return not any(is_ignored(part) for part in Path(path).parts[-3:])


def _fingerprint(paths: Iterable[Path]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for p in sorted(paths):
        try:
            st = p.stat()
            out.append((str(p), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(p), -1, -1))
    return tuple(out)


class Watcher:
    """A background thread applying filesystem changes under `loader.plugin_dir`."""

    def __init__(self, loader: Loader, *, debounce_ms: int = 500,
                 settle_timeout: float = 10.0) -> None:
        self.loader = loader
        self.debounce_ms = debounce_ms
        self.settle_timeout = settle_timeout
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="plughost-watch", daemon=True)
        #: batches applied so far (tests and the admin view read it)
        self.batches = 0
        self._applied = threading.Condition()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def wait_for_batch(self, after: int, timeout: float) -> bool:
        """Wait until more than `after` batches were applied (for tests and tools)."""
        with self._applied:
            return self._applied.wait_for(lambda: self.batches > after, timeout)

    def _run(self) -> None:
        root = str(self.loader.plugin_dir)
        try:
            self._ready.set()
            for changes in watchfiles.watch(
                    root, watch_filter=_relevant, stop_event=self._stop,
                    step=self.debounce_ms, debounce=max(self.debounce_ms * 4, 2000),
                    raise_interrupt=False, rust_timeout=1000, yield_on_timeout=False):
                try:
                    self.apply({Path(p) for _, p in changes})
                except Exception:  # a watcher that dies silently is worse than a log line
                    logger.exception("applying changes under %s failed", root)
                with self._applied:
                    self.batches += 1
                    self._applied.notify_all()
        except Exception:
            logger.exception("watching %s stopped", root)

    # -- applying a batch ----------------------------------------------------------------

    def _settle(self, paths: set[Path]) -> None:
        """Wait until the changed files stop changing (a copy or download in progress)."""
        files = {p for p in paths if not p.is_dir()}
        if not files:
            return
        end = time.monotonic() + self.settle_timeout
        pause = min(0.1, self.debounce_ms / 5000)
        last = _fingerprint(files)
        while time.monotonic() < end and not self._stop.is_set():
            time.sleep(pause)
            now = _fingerprint(files)
            if now == last:
                return
            last = now

    def apply(self, changed: set[Path]) -> None:
        loader = self.loader
        self._settle(changed)
        before = {f.name: f for f in loader.found()}
        try:
            loader.discover_all()
        except PlughostError as exc:
            logger.warning("rescan failed: %s", exc)
            return
        after = {f.name: f for f in loader.found()}

        for name in sorted(before.keys() - after.keys()):
            self._act(name, "remove", loader.forget)
        for name in sorted(after.keys() - before.keys()):
            error = after[name].error
            if error is not None:
                self._report(name, error)
            elif not loader.lazy:
                self._act(name, "load", loader.ensure_loaded)
        for name in sorted(before.keys() & after.keys()):
            old, new = before[name], after[name]
            if not (_touches(changed, old) or _touches(changed, new) or old.path != new.path
                    or (old.error is None) != (new.error is None)):
                continue
            if new.error is not None:  # the running version (if any) keeps serving
                self._report(name, new.error)
            elif loader.manager.get(name) is not None:
                self._act(name, "reload", loader.reload)
            elif not loader.lazy:
                self._act(name, "load", loader.ensure_loaded)

    def _act(self, name: str, what: str, fn: object) -> None:
        try:
            fn(name)  # type: ignore[operator]
            logger.info("watch: %s %s", what, name)
        except PlughostError as exc:
            self._report(name, exc)

    def _report(self, name: str, exc: PlughostError) -> None:
        logger.warning("watch: %s: %s", name, exc)
        self.loader.manager.log_for(name).error(f"change not applied: {exc}", source="host")
        self.loader.manager.emit("error", name, str(exc))


def _touches(changed: set[Path], found: Found) -> bool:
    """Did any changed path belong to this plugin (its file, its sidecar, its tree)?"""
    root = found.path
    if root.suffix in (".wasm", ".zip"):
        owned = {root, root.with_name(root.name + ".sig")}
        return any(p in owned for p in changed)
    return any(_is_within(p, root) for p in changed)


def _is_within(p: Path, root: Path) -> bool:
    try:
        return os.path.commonpath([p, root]) == str(root)
    except ValueError:
        return False
