"""The default database backend: one SQLite file per plugin in the host's data dir.

Parameters are always bound by SQLite, never interpolated. `db_query` runs on a read-only
connection (`PRAGMA query_only`), so it cannot write even if handed an UPDATE; one
statement per call (sqlite3 refuses more).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from ..errors import HostCallError

_SCALARS = (str, int, float, bytes, type(None))


def _params(args: Any, plugin: str) -> list[Any]:
    if args is None:
        return []
    if not isinstance(args, list) or not all(isinstance(a, _SCALARS) for a in args):
        raise HostCallError("db args must be a list of strings, numbers, booleans or nulls",
                            plugin=plugin)
    return args


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
        return conn

    def query(self, plugin: str, query: str, args: list[Any] | None) -> list[dict[str, Any]]:
        conn = self._connect(plugin, read_only=True)
        try:
            cur = conn.execute(query, _params(args, plugin))
            rows = cur.fetchmany(self.max_rows + 1)
        except sqlite3.Error as exc:
            raise HostCallError(f"db_query: {exc}", plugin=plugin) from None
        finally:
            conn.close()
        if len(rows) > self.max_rows:
            raise HostCallError(f"db_query: more than {self.max_rows} rows; add a LIMIT",
                                plugin=plugin)
        return [dict(r) for r in rows]

    def execute(self, plugin: str, query: str, args: list[Any] | None) -> dict[str, Any]:
        conn = self._connect(plugin, read_only=False)
        try:
            cur = conn.execute(query, _params(args, plugin))
            return {"rows_affected": cur.rowcount, "last_insert_id": cur.lastrowid}
        except sqlite3.Error as exc:
            raise HostCallError(f"db_exec: {exc}", plugin=plugin) from None
        finally:
            conn.close()
