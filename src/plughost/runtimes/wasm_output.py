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

    def __init__(self, pump: OutputPump, writer: LineWriter) -> None:
        self._pump = pump
        self.writer = writer
        read, self._write = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(read, False)
        self.read_fd = read
        self.path = f"/proc/self/fd/{self._write}"
        self.lock = threading.Lock()  # one reader at a time keeps the bytes in order
        self.ended = False

    def drain(self) -> None:
        """Take what is in the pipe now, on the calling thread: after a call returns, its
        output is in the log (wasmtime has written it before fd_write returned)."""
        with self.lock:
            while not self.ended and self._pump.read_once(self):
                pass

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
        channel = Channel(self, writer)
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
                else:
                    with key.data.lock:
                        self.read_once(key.data)

    def _adopt(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        with self._lock:
            pending, self._pending = self._pending, []
        for channel in pending:
            self._sel.register(channel.read_fd, selectors.EVENT_READ, channel)

    def read_once(self, channel: Channel) -> bool:
        """One bounded read (channel lock held); True when there may be more."""
        if channel.ended:
            return False
        try:
            data = os.read(channel.read_fd, CHUNK)
        except BlockingIOError:
            return False
        except OSError as exc:
            logger.warning("wasm output pipe failed: %s", exc)
            data = b""
        if data:
            try:
                channel.writer.write(data)
            except Exception:  # a log handler failed: keep reading the other pipes
                logger.exception("could not record wasm output")
            return True
        # end of file: the channel is closed and every store that opened it is gone
        channel.ended = True
        self._sel.unregister(channel.read_fd)
        os.close(channel.read_fd)
        channel.writer.flush()
        return False
