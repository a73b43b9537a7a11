"""Hot reload: watch a plugin tree with watchfiles and hand over debounced batches.

The watcher only produces batches of changed paths: it waits for a quiet period, then for
the changed files to settle (a copy or download in progress), then calls `on_batch` with
the paths (the loader's `sync`, which decides and applies what they mean; see
reconcile.py). Hidden and editor temp files never trigger anything. When the watched
directory is replaced or removed, the watch starts over, and a batch for the root itself
lets `sync` see what is there now.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import watchfiles

from .discovery import is_ignored

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


Batch = Callable[[set[Path]], object]


class Watcher:
    """A background thread handing `on_batch` the changes under `root`, debounced."""

    def __init__(self, root: Path, on_batch: Batch, *, debounce_ms: int = 500,
                 settle_timeout: float = 10.0) -> None:
        self.root = Path(root)
        self._on_batch = on_batch
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
        probe = self.root / self._probe
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
        """Watching: started, not asked to stop. `alive` says whether its thread still runs."""
        return self._thread.is_alive() and not self._stop.is_set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait_for_batch(self, after: int, timeout: float) -> bool:
        """Wait until more than `after` batches were applied (for tests and tools)."""
        with self._applied:
            return self._applied.wait_for(lambda: self.batches > after, timeout)

    def _run(self) -> None:
        root = self.root.absolute()
        restarted = False
        while not self._stop.is_set():
            identity = _identity(root)
            if identity is None:  # the whole plugin dir is gone: so are its plugins
                self._batch({root})
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

    def _batch(self, changed: set[Path]) -> None:
        try:
            self._settle(changed)
            self._on_batch(changed)
        except Exception:  # a watcher that dies silently is worse than a log line
            logger.exception("applying changes under %s failed", self.root)
        with self._applied:
            self.batches += 1
            self._applied.notify_all()

    # -- settling ---------------------------------------------------------------------------

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
