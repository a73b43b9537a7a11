"""The default database backend: one SQLite file per plugin in the host's data dir.

Parameters are always bound by SQLite, never interpolated. `db_query` runs on a read-only
connection (`PRAGMA query_only`), so it cannot write even if handed an UPDATE; one
statement per call (sqlite3 refuses more). An authorizer keeps a plugin inside its own
file: no ATTACH/DETACH (which also stops `VACUUM INTO`), no pragmas beyond reading the
schema. The same authorizer is how table scopes are enforced: SQLite reports each table a
statement reads or writes while it compiles it (views and triggers resolved, CTE names
not mistaken for tables), and the caller's `check` refuses the statement before it runs.
SQLite's schema tables are readable by all (a plugin's own schema); its other tables
(`sqlite_sequence`, `sqlite_stat1`) need a scope like any table. `fts3_tokenizer` (native
pointers) and `load_extension` are refused. Values come back as GoatFlow's MySQL driver
gives them: text and BLOBs as strings (invalid UTF-8 replaced), numbers as numbers.

Caps: a result has at most `max_rows` rows and `max_result_bytes` of values (and no single
value is longer, `SQLITE_LIMIT_LENGTH`); each plugin's file at most `max_file_bytes`
(`max_page_count`). Time: a statement runs only while the plugin's call has deadline left. A
progress handler interrupts it when the deadline passes, and the busy timeout is no longer
than what is left.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..errors import HostCallError, PlughostError
from . import chain

TableCheck = Callable[[Iterable[str], Iterable[str]], None]

_SAFE_PRAGMAS = frozenset({"table_info", "table_xinfo", "table_list", "index_list",
                           "index_info", "index_xinfo", "foreign_key_list"})


_READS = {sqlite3.SQLITE_READ: 1}
#: action -> which argument names the written table (1 or 2)
_WRITES = {sqlite3.SQLITE_INSERT: 1, sqlite3.SQLITE_DELETE: 1, sqlite3.SQLITE_UPDATE: 1,
           sqlite3.SQLITE_CREATE_TABLE: 1, sqlite3.SQLITE_DROP_TABLE: 1,
           sqlite3.SQLITE_CREATE_TEMP_TABLE: 1, sqlite3.SQLITE_DROP_TEMP_TABLE: 1,
           sqlite3.SQLITE_ALTER_TABLE: 2, sqlite3.SQLITE_CREATE_INDEX: 2,
           sqlite3.SQLITE_DROP_INDEX: 2, sqlite3.SQLITE_CREATE_TEMP_INDEX: 2,
           sqlite3.SQLITE_DROP_TEMP_INDEX: 2, sqlite3.SQLITE_CREATE_VIEW: 1,
           sqlite3.SQLITE_DROP_VIEW: 1, sqlite3.SQLITE_CREATE_TEMP_VIEW: 1,
           sqlite3.SQLITE_DROP_TEMP_VIEW: 1, sqlite3.SQLITE_CREATE_TRIGGER: 2,
           sqlite3.SQLITE_DROP_TRIGGER: 2, sqlite3.SQLITE_CREATE_TEMP_TRIGGER: 2,
           sqlite3.SQLITE_DROP_TEMP_TRIGGER: 2, sqlite3.SQLITE_CREATE_VTABLE: 1,
           sqlite3.SQLITE_DROP_VTABLE: 1}


#: SQLite's own schema tables: readable by any statement (the plugin's own schema), and
#: written only by SQLite itself (writable_schema is a refused pragma)
_SCHEMA = frozenset({"sqlite_master", "sqlite_schema", "sqlite_temp_master",
                     "sqlite_temp_schema"})
#: functions no plugin may call: native pointers in and out, shared libraries
_REFUSED_FUNCTIONS = frozenset({"fts3_tokenizer", "load_extension"})
_RENAME_TO = re.compile(r'\bRENAME\s+TO\s+("(?:[^"]|"")+"|`[^`]+`|\[[^\]]+\]|[\w$]+)',
                        re.IGNORECASE)


def _unquoted(name: str) -> str:
    if name[:1] in "\"`[" and len(name) > 1:
        name = name[1:-1].replace('""', '"')
    return name.lower()


class _Authorizer:
    """SQLite's authorizer for one statement: the sandbox rules, and each table touched
    handed to `check`; the first refusal is kept to be raised as itself."""

    def __init__(self, check: TableCheck | None, query: str = "") -> None:
        self.check = check
        self.query = query
        self.refused: PlughostError | None = None
        self.altering = False  # after ALTER TABLE: SQLite's own rewrite of its tables

    def _refuse(self, exc: PlughostError) -> int:
        if self.refused is None:
            self.refused = exc
        return sqlite3.SQLITE_DENY

    def __call__(self, action: int, arg1: str | None, arg2: str | None, db: str | None,
                 trigger: str | None) -> int:
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() not in _SAFE_PRAGMAS:
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _REFUSED_FUNCTIONS:
            return sqlite3.SQLITE_DENY
        if db not in (None, "main", "temp"):
            return sqlite3.SQLITE_DENY
        if self.check is None:
            return sqlite3.SQLITE_OK
        where = _WRITES.get(action) or _READS.get(action)
        table = (arg1 if where == 1 else arg2) if where else None
        if not table:
            return sqlite3.SQLITE_OK
        name = table.lower()
        if name in _SCHEMA or (self.altering and name.startswith("sqlite_")):
            return sqlite3.SQLITE_OK
        try:
            if action in _WRITES:
                self.check((), (name,))
            else:
                self.check((name,), ())
            if action == sqlite3.SQLITE_ALTER_TABLE:
                # the authorizer names only the old table: a RENAME's new name is a
                # table written too (else it would move a table out of the scope's reach
                # into a name the scope does not cover)
                for m in _RENAME_TO.finditer(self.query):
                    self.check((), (_unquoted(m[1]),))
                self.altering = True
        except PlughostError as exc:
            return self._refuse(exc)
        return sqlite3.SQLITE_OK


def _row(row: sqlite3.Row) -> tuple[dict[str, Any], int]:
    """The row as JSON-able values, and roughly how many bytes they take."""
    out: dict[str, Any] = {}
    size = 0
    for k, v in dict(row).items():
        if isinstance(v, bytes):  # GoatFlow turns []byte columns into strings
            v = v.decode("utf-8", "replace")
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

    def _connect(self, plugin: str, read_only: bool, authorizer: _Authorizer
                 ) -> tuple[sqlite3.Connection, float]:
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
        conn.set_authorizer(authorizer)
        return conn, end

    def _failed(self, fn: str, plugin: str, exc: sqlite3.Error, end: float,
                authorizer: _Authorizer) -> PlughostError:
        if authorizer.refused is not None:
            return authorizer.refused
        if isinstance(exc, sqlite3.OperationalError) and time.monotonic() > end:
            return HostCallError(f"{fn}: interrupted at the call's deadline", plugin=plugin)
        if "database or disk is full" in str(exc):
            return HostCallError(f"{fn}: the plugin's database is full (cap "
                                 f"{self.max_file_bytes} bytes)", plugin=plugin)
        return HostCallError(f"{fn}: {exc}", plugin=plugin)

    def query(self, plugin: str, query: str, args: list[Any] | None, *,
              check: TableCheck | None = None) -> list[dict[str, Any]]:
        auth = _Authorizer(check, query)
        conn, end = self._connect(plugin, True, auth)
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
            raise self._failed("db_query", plugin, exc, end, auth) from None
        finally:
            conn.close()
        return out

    def execute(self, plugin: str, query: str, args: list[Any] | None, *,
                check: TableCheck | None = None) -> int:
        """Rows affected (GoatFlow exposes no last-insert id)."""
        auth = _Authorizer(check, query)
        conn, end = self._connect(plugin, False, auth)
        try:
            cur = conn.execute(query, args or [])
            return max(0, cur.rowcount)
        except sqlite3.Error as exc:
            raise self._failed("db_exec", plugin, exc, end, auth) from None
        finally:
            conn.close()
