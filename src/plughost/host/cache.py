"""The default cache backend: in memory, per-plugin namespaces, TTLs, and a size cap
(least recently used entries go first)."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from typing import Any


class MemoryCache:
    def __init__(self, max_entries: int = 10_000, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._data: OrderedDict[tuple[str, str], tuple[str, float | None]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, plugin: str, key: str) -> Any:
        with self._lock:
            item = self._data.get((plugin, key))
            if item is None:
                return None
            text, expires = item
            if expires is not None and time.monotonic() >= expires:
                self._drop((plugin, key))
                return None
            self._data.move_to_end((plugin, key))
        return json.loads(text)

    def set(self, plugin: str, key: str, value: Any, ttl: float | None) -> None:
        text = json.dumps(value, separators=(",", ":"))
        size = len(text) + len(key)
        if size > self.max_bytes:
            raise ValueError(f"value of {size} bytes is larger than the cache "
                             f"({self.max_bytes} bytes)")
        expires = time.monotonic() + ttl if ttl else None
        with self._lock:
            self._drop((plugin, key))
            self._data[(plugin, key)] = (text, expires)
            self._bytes += size
            while len(self._data) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._data)))

    def delete(self, plugin: str, key: str) -> bool:
        with self._lock:
            return self._drop((plugin, key))

    def _drop(self, k: tuple[str, str]) -> bool:
        item = self._data.pop(k, None)
        if item is None:
            return False
        self._bytes -= len(item[0]) + len(k[1])
        return True
