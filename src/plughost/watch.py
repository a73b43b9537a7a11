"""Hot reload: watch a plugin tree with watchfiles and apply what changed (docs/operations.md).

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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import watchfiles

from .discovery import Found, is_ignored
from .errors import PlughostError, PluginLoadError
from .manifest import MANIFEST_FILE
from .signing import DIR_SIGNATURE, sidecar

if TYPE_CHECKING:
    from .loader import Loader

logger = logging.getLogger(__name__)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


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
        self._probe = f".plughost-watch-probe-{os.getpid()}-{id(self)}"
        self._thread = threading.Thread(target=self._run, name="plughost-watch", daemon=True)
        #: batches applied so far (tests and the admin view read it)
        self.batches = 0
        self._applied = threading.Condition()

    def start(self) -> None:
        """Start watching; returns once the watch is live (changes from now on are seen)."""
        self._thread.start()
        # watchfiles has no "ready" signal: touch a probe file until the watcher sees it.
        probe = self.loader.plugin_dir / self._probe
        end = time.monotonic() + 10.0
        try:
            while not self._ready.is_set() and time.monotonic() < end:
                try:
                    probe.write_bytes(b"")
                except OSError:  # a read-only plugin dir: nothing to probe with
                    self._ready.wait(0.5)
                    return
                self._ready.wait(0.05)
        finally:
            probe.unlink(missing_ok=True)

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
        root = self.loader.plugin_dir.absolute()
        restarted = False
        while not self._stop.is_set():
            identity = _identity(root)
            if identity is None:  # the whole plugin dir is gone: so are its plugins
                self._batch(set(), gone=True)
                self._stop.wait(0.5)
                continue
            # The quiet period is ours: watchfiles reports every 50 ms of activity (and
            # ticks when idle); a batch is applied once nothing changed for debounce_ms.
            # (With watchfiles' own `step` set to the debounce, detection took 1-2x it.)
            quiet = self.debounce_ms / 1000
            tick = max(10, min(100, self.debounce_ms // 4))
            # After a restart (the dir was replaced), rescan once the new watch is live:
            # files created in between raised no event we could see.
            pending: set[Path] = {root} if restarted else set()
            last = 0.0
            restarted = True
            try:
                for changes in watchfiles.watch(
                        root, watch_filter=self._relevant, stop_event=self._stop,
                        step=min(50, max(1, self.debounce_ms)), debounce=60_000,
                        raise_interrupt=False, rust_timeout=tick, yield_on_timeout=True):
                    now = time.monotonic()
                    if changes:
                        pending |= {Path(p) for _, p in changes}
                        last = now
                    if pending and now - last >= quiet:
                        batch, pending = pending, set()
                        self._batch(batch)
                    if _identity(root) != identity:
                        # replaced or removed: inotify watches the old inode; start over
                        self._batch({root})
                        break
            except Exception:
                logger.exception("watching %s failed; retrying", root)
                self._stop.wait(1.0)

    def _relevant(self, change: watchfiles.Change, path: str) -> bool:
        parts = Path(path).parts
        if parts and parts[-1] == self._probe:
            self._ready.set()
            return False
        return not any(is_ignored(part) for part in parts[-3:])

    def _batch(self, changed: set[Path], gone: bool = False) -> None:
        try:
            if gone:
                self._unload_all()
            else:
                self.apply(changed)
        except Exception:  # a watcher that dies silently is worse than a log line
            logger.exception("applying changes under %s failed", self.loader.plugin_dir)
        with self._applied:
            self.batches += 1
            self._applied.notify_all()

    def _unload_all(self) -> None:
        for found in self.loader.found():
            if found.path.absolute().is_relative_to(self.loader.plugin_dir.absolute()):
                self._act(found.name, "remove", self.loader.forget)

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
        if not loader.plugin_dir.is_dir():
            self._unload_all()
            return
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

    def _act(self, name: str, what: str, fn: Callable[[str], object]) -> None:
        try:
            fn(name)
            logger.info("watch: %s %s", what, name)
        except PlughostError as exc:  # the loader already published the error event
            self._report(name, exc, emit=False)
        except Exception as exc:  # a bug of ours: this plugin's error; the batch goes on
            logger.exception("watch: %s %s failed", what, name)
            self._report(name, PluginLoadError(f"unexpected error: {exc!r}", plugin=name))

    def _report(self, name: str, exc: PlughostError, *, emit: bool = True) -> None:
        logger.warning("watch: %s: %s", name, exc)
        self.loader.manager.log_for(name).error(f"change not applied: {exc}", source="host")
        if emit:
            self.loader.manager.emit("error", name, str(exc))


def _touches(changed: set[Path], found: Found) -> bool:
    """Did a file that defines this plugin change: its module/package file and sidecar, or
    in a plugin dir the manifest, the module/executable and the signature? Other files in
    a plugin dir (data a plugin writes, say) do not restart it."""
    root = found.path.absolute()
    if root.suffix in (".wasm", ".zip") and not root.is_dir():
        owned = {root, sidecar(root)}
    else:
        owned = {root, root / MANIFEST_FILE, root / DIR_SIGNATURE}
        if found.manifest is not None:
            owned.add(found.manifest.entry.absolute())
    return any(p.absolute() in owned for p in changed)


