"""The default cache backend: in memory, one namespace per plugin, quotas and finite TTLs.

Each plugin has its own namespace and its own byte and entry quota, and evicts only its own
least recently used keys: one plugin filling the cache never evicts another's keys (a
shared LRU let one plugin flush everyone). The whole cache has a cap too. When it is full,
a plugin's write first evicts that plugin's own keys, and is refused when it has none left
to give. Every entry expires: a missing TTL (or 0), or a longer one, becomes `max_ttl`.
Values are bytes (GoatFlow's cache holds bytes; plugins send them base64-encoded).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

_Entry = tuple[bytes, float]  # (value, expiry on the monotonic clock)


class _Space:
    __slots__ = ("bytes", "data")

    def __init__(self) -> None:
        self.data: OrderedDict[str, _Entry] = OrderedDict()
        self.bytes = 0


def _size(key: str, text: bytes) -> int:
    return len(key) + len(text)


class MemoryCache:
    """`max_entries`/`max_bytes`: the whole cache; `plugin_*`: each plugin's quota."""

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 16 * 1024 * 1024, *,
                 plugin_max_entries: int | None = None, plugin_max_bytes: int | None = None,
                 max_ttl: float = 24 * 3600.0) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        # By default a plugin may use a quarter of the cache: a few busy plugins share it.
        self.plugin_max_entries = plugin_max_entries or max(1, max_entries // 4)
        self.plugin_max_bytes = plugin_max_bytes or max(1, max_bytes // 4)
        self.max_ttl = max_ttl
        self._spaces: dict[str, _Space] = {}
        self._entries = 0
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, plugin: str, key: str) -> bytes | None:
        with self._lock:
            space = self._spaces.get(plugin)
            item = space.data.get(key) if space else None
            if space is None or item is None:
                return None
            text, expires = item
            if time.monotonic() >= expires:
                self._drop(plugin, space, key)
                return None
            space.data.move_to_end(key)
        return text

    def set(self, plugin: str, key: str, value: bytes, ttl: float | None) -> None:
        text = bytes(value)
        size = _size(key, text)
        if size > self.plugin_max_bytes:
            raise ValueError(f"value of {size} bytes is larger than a plugin's cache quota "
                             f"({self.plugin_max_bytes} bytes)")
        life = self.max_ttl if not ttl or ttl != ttl else min(float(ttl), self.max_ttl)  # NaN
        with self._lock:
            space = self._spaces.setdefault(plugin, _Space())
            self._drop(plugin, space, key)
            if self._full(space, size):  # expired keys make room before live ones
                self._expire(plugin, space)
            # The plugin's own quota: its oldest keys make room.
            while space.data and (len(space.data) >= self.plugin_max_entries
                                  or space.bytes + size > self.plugin_max_bytes):
                self._drop(plugin, space, next(iter(space.data)))
            # The whole cache: still only this plugin's keys make room.
            while space.data and (self._entries >= self.max_entries
                                  or self._bytes + size > self.max_bytes):
                self._drop(plugin, space, next(iter(space.data)))
            if self._entries >= self.max_entries or self._bytes + size > self.max_bytes:
                raise ValueError("the cache is full with other plugins' entries; try later")
            self._spaces[plugin] = space  # (dropping its last key removed it)
            space.data[key] = (text, time.monotonic() + life)
            space.bytes += size
            self._entries += 1
            self._bytes += size

    def delete(self, plugin: str, key: str) -> bool:
        with self._lock:
            space = self._spaces.get(plugin)
            return space is not None and self._drop(plugin, space, key)

    def usage(self, plugin: str) -> tuple[int, int]:
        """(entries, bytes) that `plugin` holds now."""
        with self._lock:
            space = self._spaces.get(plugin)
            return (len(space.data), space.bytes) if space else (0, 0)

    def _full(self, space: _Space, size: int) -> bool:
        return (len(space.data) >= self.plugin_max_entries
                or space.bytes + size > self.plugin_max_bytes
                or self._entries >= self.max_entries or self._bytes + size > self.max_bytes)

    def _expire(self, plugin: str, space: _Space) -> None:
        now = time.monotonic()
        for key in [k for k, (_, exp) in space.data.items() if exp <= now]:
            self._drop(plugin, space, key)

    def _drop(self, plugin: str, space: _Space, key: str) -> bool:
        item = space.data.pop(key, None)
        if item is None:
            return False
        size = _size(key, item[0])
        space.bytes -= size
        self._entries -= 1
        self._bytes -= size
        if not space.data:
            del self._spaces[plugin]
        return True
