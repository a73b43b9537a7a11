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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

DEFAULT_CAPACITY = 1000
#: One log message, at most (longer ones are cut and say by how much).
MAX_MESSAGE_CHARS = 16 * 1024
#: One plugin's buffer, at most (the sum of its messages' lengths).
DEFAULT_MAX_CHARS = 1024 * 1024

#: gk.log levels (docs/wasm-abi.md) mapped to stdlib levels.
GK_LEVELS = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}
#: A line's structured fields, at most (more are dropped; values are cut at 1 KiB).
MAX_FIELDS = 64
MAX_FIELD_CHARS = 1024


@dataclass(frozen=True)
class LogRecord:
    time: float
    level: str  # "debug" | "info" | "warning" | "error"
    message: str
    source: str  # "plugin" (its own log calls), "stdout", "stderr", "host"
    #: structured fields (an hclog line's key/values, the log host function's `fields`)
    fields: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"time": self.time, "level": self.level,
                                  "message": self.message, "source": self.source}
        if self.fields:
            out["fields"] = dict(self.fields)
        return out


def _capped(fields: Mapping[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in list((fields or {}).items())[:MAX_FIELDS]:
        text = v if isinstance(v, str) else repr(v)
        out[str(k)[:MAX_FIELD_CHARS]] = text[:MAX_FIELD_CHARS]
    return out


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

    def log(self, level: int, message: str, source: str = "host",
            fields: Mapping[str, Any] | None = None) -> None:
        message = message.rstrip("\n")
        if len(message) > MAX_MESSAGE_CHARS:
            cut = len(message) - MAX_MESSAGE_CHARS
            message = f"{message[:MAX_MESSAGE_CHARS]}... [{cut} more characters cut]"
        kept = _capped(fields)
        rec = LogRecord(time.time(), logging.getLevelName(level).lower(), message, source,
                        kept)
        with self._lock:
            records = self._records
            if len(records) == records.maxlen:  # the deque drops this one on append
                self._chars -= _size(records[0])
            records.append(rec)
            self._chars += _size(rec)
            while self._chars > self.max_chars and len(records) > 1:
                self._chars -= _size(records.popleft())
        if kept:
            self._logger.log(level, "[%s] %s %s", source, message, kept)
        else:
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


def _size(rec: LogRecord) -> int:
    """What a record counts against the buffer's characters."""
    return len(rec.message) + sum(len(k) + len(v) for k, v in rec.fields.items())


#: `parse(line) -> (level, message, fields)`, or None for a line to log as it is.
LineParser = Callable[[str], "tuple[int, str, Mapping[str, Any]] | None"]


class LineWriter:
    """Turns a byte stream (WASI stdout/stderr, a child's pipe) into log lines.

    Partial lines are held until their newline; a runaway line is cut at `max_line`.
    `parse` may read a line's own level and fields (a go-plugin's hclog lines).
    """

    def __init__(self, log: PluginLog, source: str, level: int = logging.INFO,
                 max_line: int = 8192, parse: LineParser | None = None) -> None:
        self._log, self._source, self._level, self._max = log, source, level, max_line
        self._parse = parse
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
            self._emit(line.decode("utf-8", "replace"))

    def _emit(self, text: str) -> None:
        parsed = self._parse(text) if self._parse is not None else None
        if parsed is None:
            self._log.log(self._level, text, self._source)
        else:
            level, message, fields = parsed
            self._log.log(level, message, self._source, fields)

    def flush(self) -> None:
        with self._lock:
            rest, self._buf = bytes(self._buf), bytearray()
        if rest:
            self._emit(rest.decode("utf-8", "replace"))
