"""The default database backend: one SQLite file per plugin in the host's data dir.

Parameters are always bound by SQLite, never interpolated. `db_query` runs on a read-only
connection (`PRAGMA query_only`), so it cannot write even if handed an UPDATE; one
statement per call (sqlite3 refuses more). An authorizer keeps a plugin inside its own
file: no ATTACH/DETACH (which also stops `VACUUM INTO`), no pragmas beyond reading the
schema. BLOBs come back base64-encoded (JSON has no bytes).
"""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path
from typing import Any

from ..errors import HostCallError

_SAFE_PRAGMAS = frozenset({"table_info", "table_xinfo", "table_list", "index_list",
                           "index_info", "index_xinfo", "foreign_key_list"})


def _authorize(action: int, arg1: str | None, arg2: str | None, db: str | None,
               trigger: str | None) -> int:
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() not in _SAFE_PRAGMAS:
        return sqlite3.SQLITE_DENY
    if db not in (None, "main", "temp"):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _row(row: sqlite3.Row) -> dict[str, Any]:
    return {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v
            for k, v in dict(row).items()}


class SQLiteDB:
    def __init__(self, directory: Path, max_rows: int = 10_000, timeout: float = 5.0) -> None:
        self.directory = directory
        self.max_rows = max_rows
        self.timeout = timeout

    def _connect(self, plugin: str, read_only: bool) -> sqlite3.Connection:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(self.directory / f"{plugin}.sqlite3", timeout=self.timeout,
                               isolation_level=None)
        conn.row_factory = sqlite3.Row
        if read_only:
            conn.execute("PRAGMA query_only = ON")
        conn.set_authorizer(_authorize)
        return conn

    def query(self, plugin: str, query: str, args: list[Any] | None) -> list[dict[str, Any]]:
        conn = self._connect(plugin, read_only=True)
        try:
            cur = conn.execute(query, args or [])
            rows = cur.fetchmany(self.max_rows + 1)
        except sqlite3.Error as exc:
            raise HostCallError(f"db_query: {exc}", plugin=plugin) from None
        finally:
            conn.close()
        if len(rows) > self.max_rows:
            raise HostCallError(f"db_query: more than {self.max_rows} rows; add a LIMIT",
                                plugin=plugin)
        return [_row(r) for r in rows]

    def execute(self, plugin: str, query: str, args: list[Any] | None) -> dict[str, Any]:
        conn = self._connect(plugin, read_only=False)
        try:
            cur = conn.execute(query, args or [])
            return {"rows_affected": cur.rowcount, "last_insert_id": cur.lastrowid}
        except sqlite3.Error as exc:
            raise HostCallError(f"db_exec: {exc}", plugin=plugin) from None
        finally:
            conn.close()
