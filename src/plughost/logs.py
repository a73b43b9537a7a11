"""Per-plugin logs: every line goes to stdlib `logging` and to a bounded buffer.

The buffer is what the admin view shows; it belongs to the plugin *name*, so the history
survives reloads and crashes (that is when you want to read it).

Every way a plugin logs (gk.log, the `log` host function, the grpc Log RPC, stdout and
stderr) ends in `PluginLog.log`, so the caps live here, once: a message is cut at
`MAX_MESSAGE_CHARS`, and the buffer holds at most `capacity` lines and `max_chars`
characters, dropping the oldest first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from itertools import islice

DEFAULT_CAPACITY = 1000
#: One log message, at most (longer ones are cut and say by how much).
MAX_MESSAGE_CHARS = 16 * 1024
#: One plugin's buffer, at most (the sum of its messages' lengths).
DEFAULT_MAX_CHARS = 1024 * 1024

#: gk.log levels (docs/wasm-abi.md) mapped to stdlib levels.
GK_LEVELS = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}


@dataclass(frozen=True)
class LogRecord:
    time: float
    level: str  # "debug" | "info" | "warning" | "error"
    message: str
    source: str  # "plugin" (its own log calls), "stdout", "stderr", "host"

    def as_dict(self) -> dict[str, object]:
        return {"time": self.time, "level": self.level, "message": self.message,
                "source": self.source}


class PluginLog:
    """A bounded, thread-safe log of one plugin, mirrored to `plughost.plugin.<name>`."""

    def __init__(self, name: str, capacity: int = DEFAULT_CAPACITY,
                 max_chars: int = DEFAULT_MAX_CHARS) -> None:
        self.name = name
        self.max_chars = max_chars
        self._records: deque[LogRecord] = deque(maxlen=capacity)
        self._chars = 0  # the sum of the messages' lengths in _records
        self._lock = threading.Lock()
        self._logger = logging.getLogger(f"plughost.plugin.{name}")

    def log(self, level: int, message: str, source: str = "host") -> None:
        message = message.rstrip("\n")
        if len(message) > MAX_MESSAGE_CHARS:
            cut = len(message) - MAX_MESSAGE_CHARS
            message = f"{message[:MAX_MESSAGE_CHARS]}... [{cut} more characters cut]"
        rec = LogRecord(time.time(), logging.getLevelName(level).lower(), message, source)
        with self._lock:
            records = self._records
            if len(records) == records.maxlen:  # the deque drops this one on append
                self._chars -= len(records[0].message)
            records.append(rec)
            self._chars += len(message)
            while self._chars > self.max_chars and len(records) > 1:
                self._chars -= len(records.popleft().message)
        self._logger.log(level, "[%s] %s", source, message)

    @property
    def chars(self) -> int:
        """Characters held in the buffer now (for tests and metrics)."""
        with self._lock:
            return self._chars

    def debug(self, message: str, source: str = "host") -> None:
        self.log(logging.DEBUG, message, source)

    def info(self, message: str, source: str = "host") -> None:
        self.log(logging.INFO, message, source)

    def warning(self, message: str, source: str = "host") -> None:
        self.log(logging.WARNING, message, source)

    def error(self, message: str, source: str = "host") -> None:
        self.log(logging.ERROR, message, source)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._chars = 0

    def records(self, last: int | None = None) -> list[LogRecord]:
        with self._lock:
            if last is None or last >= len(self._records):
                return list(self._records)
            return list(islice(self._records, len(self._records) - last, None))


class LineWriter:
    """Turns a byte stream (WASI stdout/stderr, a child's pipe) into log lines.

    Partial lines are held until their newline; a runaway line is cut at `max_line`.
    """

    def __init__(self, log: PluginLog, source: str, level: int = logging.INFO,
                 max_line: int = 8192) -> None:
        self._log, self._source, self._level, self._max = log, source, level, max_line
        self._buf = bytearray()
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._buf += data
            lines = []
            while True:
                i = self._buf.find(b"\n")
                if i < 0:
                    if len(self._buf) > self._max:
                        lines.append(bytes(self._buf[: self._max]))
                        del self._buf[: self._max]
                        continue
                    break
                lines.append(bytes(self._buf[:i]))
                del self._buf[: i + 1]
        for line in lines:
            self._log.log(self._level, line.decode("utf-8", "replace"), self._source)

    def flush(self) -> None:
        with self._lock:
            rest, self._buf = bytes(self._buf), bytearray()
        if rest:
            self._log.log(self._level, rest.decode("utf-8", "replace"), self._source)
