"""The default database backend: one SQLite file per plugin in the host's data dir.

Parameters are always bound by SQLite, never interpolated. `db_query` runs on a read-only
connection (`PRAGMA query_only`), so it cannot write even if handed an UPDATE; one
statement per call (sqlite3 refuses more). An authorizer keeps a plugin inside its own
file: no ATTACH/DETACH (which also stops `VACUUM INTO`), no pragmas beyond reading the
schema. BLOBs come back base64-encoded (JSON has no bytes).

Caps: a result has at most `max_rows` rows and `max_result_bytes` of values (and no single
value is longer, `SQLITE_LIMIT_LENGTH`); each plugin's file at most `max_file_bytes`
(`max_page_count`). Time: a statement runs only while the plugin's call has deadline left. A
progress handler interrupts it when the deadline passes, and the busy timeout is no longer
than what is left.
"""

from __future__ import annotations

import base64
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..errors import HostCallError
from . import chain

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


def _row(row: sqlite3.Row) -> tuple[dict[str, Any], int]:
    """The row as JSON-able values, and roughly how many bytes they take."""
    out: dict[str, Any] = {}
    size = 0
    for k, v in dict(row).items():
        if isinstance(v, bytes):
            v = base64.b64encode(v).decode()
        out[k] = v
        size += len(k) + (len(v) if isinstance(v, str) else 8)
    return out, size


#: The progress handler runs every this many SQLite VM instructions (~50 us of work).
_PROGRESS_STEPS = 10_000


class SQLiteDB:
    def __init__(self, directory: Path, max_rows: int = 10_000, timeout: float = 5.0, *,
                 max_result_bytes: int = 8 * 1024 * 1024,
                 max_file_bytes: int = 256 * 1024 * 1024) -> None:
        self.directory = directory
        self.max_rows = max_rows
        self.timeout = timeout
        self.max_result_bytes = max_result_bytes
        self.max_file_bytes = max_file_bytes

    def _connect(self, plugin: str, read_only: bool) -> tuple[sqlite3.Connection, float]:
        """A connection bounded by the call's deadline; returns it and that deadline."""
        left = chain.path().left()  # dispatch refuses calls with nothing left
        budget = self.timeout if left is None else min(self.timeout, left)
        end = time.monotonic() + budget
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(self.directory / f"{plugin}.sqlite3", timeout=budget,
                               isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max(1024, self.max_result_bytes))
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {max(1, self.max_file_bytes // page)}")
        if read_only:
            conn.execute("PRAGMA query_only = ON")
        conn.set_progress_handler(lambda: int(time.monotonic() > end), _PROGRESS_STEPS)
        conn.set_authorizer(_authorize)
        return conn, end

    def _failed(self, fn: str, plugin: str, exc: sqlite3.Error, end: float) -> HostCallError:
        if isinstance(exc, sqlite3.OperationalError) and time.monotonic() > end:
            return HostCallError(f"{fn}: interrupted at the call's deadline", plugin=plugin)
        if "database or disk is full" in str(exc):
            return HostCallError(f"{fn}: the plugin's database is full (cap "
                                 f"{self.max_file_bytes} bytes)", plugin=plugin)
        return HostCallError(f"{fn}: {exc}", plugin=plugin)

    def query(self, plugin: str, query: str, args: list[Any] | None) -> list[dict[str, Any]]:
        conn, end = self._connect(plugin, read_only=True)
        out: list[dict[str, Any]] = []
        size = 0
        try:
            cur = conn.execute(query, args or [])
            while batch := cur.fetchmany(256):
                for r in batch:
                    row, n = _row(r)
                    out.append(row)
                    size += n
                if len(out) > self.max_rows:
                    raise HostCallError(f"db_query: more than {self.max_rows} rows; add a "
                                        "LIMIT", plugin=plugin)
                if size > self.max_result_bytes:
                    raise HostCallError(f"db_query: result larger than "
                                        f"{self.max_result_bytes} bytes", plugin=plugin)
        except sqlite3.Error as exc:
            raise self._failed("db_query", plugin, exc, end) from None
        finally:
            conn.close()
        return out

    def execute(self, plugin: str, query: str, args: list[Any] | None) -> dict[str, Any]:
        conn, end = self._connect(plugin, read_only=False)
        try:
            cur = conn.execute(query, args or [])
            return {"rows_affected": cur.rowcount, "last_insert_id": cur.lastrowid}
        except sqlite3.Error as exc:
            raise self._failed("db_exec", plugin, exc, end) from None
        finally:
            conn.close()
