"""The default secure-config backend: per-plugin secrets, encrypted at rest.

Values are sealed with Fernet (AES-128-CBC with an HMAC-SHA256, from `cryptography`) under
a host key, and stored in one SQLite file in the data dir, keyed by (plugin, organisation,
key). The host key is `HostSettings.secret_key` if given, else the file
`<data dir>/secure-config.key`, created (0600) on first use. A plugin reaches only its own
keys: the plugin name comes from the host, never from the arguments. The key's name is
bound to its value (it is part of the sealed text), so a row copied to another key or
plugin does not decrypt there.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from ..errors import HostCallError

KEY_FILE = "secure-config.key"
MAX_KEY_BYTES = 256


def load_or_create_key(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Fernet.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


class SecureConfig:
    def __init__(self, directory: Path, key: bytes | None = None, *,
                 max_value_bytes: int = 64 * 1024, max_keys: int = 1000) -> None:
        self.directory = directory
        self._key = key
        self.max_value_bytes = max_value_bytes
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._fernet: Fernet | None = None

    def _seal(self) -> Fernet:
        with self._lock:
            if self._fernet is None:
                self._fernet = Fernet(self._key or load_or_create_key(
                    self.directory / KEY_FILE))
            return self._fernet

    def _db(self) -> sqlite3.Connection:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(self.directory / "secure-config.sqlite3", timeout=5.0,
                               isolation_level=None)
        conn.execute("CREATE TABLE IF NOT EXISTS secure_config (plugin TEXT, org_id "
                     "INTEGER, key TEXT, value BLOB, PRIMARY KEY (plugin, org_id, key))")
        return conn

    @staticmethod
    def _bound(plugin: str, org_id: int, key: str, value: str) -> bytes:
        return f"{plugin}\x00{org_id}\x00{key}\x00{value}".encode()

    def get(self, plugin: str, org_id: int, key: str) -> str:
        conn = self._db()
        try:
            row = conn.execute("SELECT value FROM secure_config WHERE plugin=? AND org_id=? "
                               "AND key=?", (plugin, org_id, key)).fetchone()
        finally:
            conn.close()
        if row is None:
            raise HostCallError(f'secure config key "{key}" not found', plugin=plugin)
        try:
            plain = self._seal().decrypt(row[0]).decode()
        except (InvalidToken, UnicodeDecodeError):
            raise HostCallError(f'secure config key "{key}" cannot be decrypted with '
                                "this host's key", plugin=plugin) from None
        prefix = f"{plugin}\x00{org_id}\x00{key}\x00"
        if not plain.startswith(prefix):
            raise HostCallError(f'secure config key "{key}" was not stored for this '
                                "plugin", plugin=plugin)
        return plain[len(prefix):]

    def set(self, plugin: str, org_id: int, key: str, value: str) -> None:
        if len(key.encode()) > MAX_KEY_BYTES:
            raise HostCallError(f"secure config key longer than {MAX_KEY_BYTES} bytes",
                                plugin=plugin)
        if len(value.encode()) > self.max_value_bytes:
            raise HostCallError(f"secure config value larger than {self.max_value_bytes} "
                                "bytes", plugin=plugin)
        sealed = self._seal().encrypt(self._bound(plugin, org_id, key, value))
        conn = self._db()
        try:
            count = conn.execute("SELECT count(*) FROM secure_config WHERE plugin=? AND "
                                 "key<>?", (plugin, key)).fetchone()[0]
            if count >= self.max_keys:
                raise HostCallError(f"secure config: {count} keys, the cap", plugin=plugin)
            conn.execute("INSERT OR REPLACE INTO secure_config VALUES (?, ?, ?, ?)",
                         (plugin, org_id, key, sealed))
        finally:
            conn.close()
