"""WASI stdout/stderr of wasm plugins, carried by pipes instead of Python callbacks.

wasmtime-py's `stdout_custom` hands wasmtime a Python callback. wasmtime calls it, and the
callback's finalizer, from its own tokio worker threads, sometimes after the store is gone
and while the interpreter is finalizing: the process then aborts ("panic in a function that
cannot unwind") or segfaults at exit. So no Python callback is handed over at all: each
plugin stream is a pipe, wasmtime opens its write end by path as a plain file
(`/proc/self/fd/N`), and one thread per engine reads every pipe in bounded chunks into the
plugin's `LineWriter`. At exit that thread is simply a daemon blocked in `select`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import threading

from ..logs import LineWriter

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024  # one read never takes more than this


class Channel:
    """One stream's pipe. `path` is what `WasiConfig.stdout_file` opens; each store opens
    its own descriptor, so the reader sees end-of-file only when the channel is closed
    *and* every store that opened it is gone."""

    def __init__(self, writer: LineWriter) -> None:
        self.writer = writer
        read, self._write = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(read, False)
        self.read_fd = read
        self.path = f"/proc/self/fd/{self._write}"
        self._lock = threading.Lock()  # one reader at a time keeps the bytes in order

    def drain(self) -> bool:
        """Take what is in the pipe now: after a call returns, its output is in the log
        (wasmtime has written it before fd_write returned). False at end of file, which
        only the pump acts on (it owns the selector)."""
        with self._lock:
            while self.read_fd >= 0:
                try:
                    data = os.read(self.read_fd, CHUNK)
                except BlockingIOError:
                    return True
                except OSError as exc:
                    logger.warning("wasm output pipe failed: %s", exc)
                    return False
                if not data:
                    return False
                try:
                    self.writer.write(data)
                except Exception:  # a log handler failed: keep the pipe flowing
                    logger.exception("could not record wasm output")
            return False

    def end(self) -> None:
        """Close the read end (the pump, at end of file); later drains do nothing."""
        with self._lock:
            fd, self.read_fd = self.read_fd, -1
        if fd >= 0:
            os.close(fd)
        self.writer.flush()

    def close(self) -> None:
        """No new stores will open the pipe; what is in it is taken now (the last partial
        line too), what stores still alive write later is read by the pump."""
        fd, self._write = self._write, -1
        if fd >= 0:
            os.close(fd)
        self.drain()
        self.writer.flush()


class OutputPump:
    """The reader thread of one engine: started on first use, one selector for all pipes."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._pending: list[Channel] = []

    def open(self, writer: LineWriter) -> Channel:
        channel = Channel(writer)
        with self._lock:
            self._pending.append(channel)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="plughost-wasm-output")
                self._thread.start()
        os.write(self._wake_w, b"\0")
        return channel

    def _run(self) -> None:
        while True:
            for key, _ in self._sel.select():
                if key.data is None:
                    self._adopt()
                elif not key.data.drain():
                    self._end(key.data)

    def _adopt(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        with self._lock:
            pending, self._pending = self._pending, []
        for channel in pending:
            self._sel.register(channel.read_fd, selectors.EVENT_READ, channel)

    def _end(self, channel: Channel) -> None:
        # the channel is closed and every store that opened it is gone
        self._sel.unregister(channel.read_fd)
        channel.end()
