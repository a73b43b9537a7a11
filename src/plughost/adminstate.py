"""The operator's admin state, kept across restarts: per plugin, enabled or disabled, and
the permission policy (host/policy.py `Policy`) edited through the API.

`AdminState` is what callers need; `SqliteAdminState` keeps it in `<data dir>/admin.db`
(a PostgreSQL one, for several replicas, can implement the same protocol).

The file is the operator's word, so nothing here ever resets it: a file that is a symlink,
not a regular file, unreadable, not SQLite, someone else's database, damaged, or written by
a newer plughost is `AdminStateError` naming the file and the cause (a silently fresh file
would re-enable every plugin the operator disabled). A policy row that no longer
validates is an error for that plugin only: `policy(name)` raises (its load fails, as a
broken policies.yaml entry does: ignoring it could grant what the operator took away),
while the listings, `policies()` and `snapshot()`, log it and go on with the other rows.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Protocol, Self

from pydantic import ValidationError

from .errors import AdminStateError, ManifestError
from .host.policy import Policy
from .inputs import describe
from .manifest import is_valid_name

logger = logging.getLogger(__name__)

ADMIN_DB = "admin.db"
#: `PRAGMA user_version`: bumped, with a migration in `_schema`, when the tables change
SCHEMA_VERSION = 1
#: `PRAGMA application_id` ("plha"): tells our file from any other SQLite database
APPLICATION_ID = 0x706C6861
_HEADER = b"SQLite format 3\x00"
_TABLES = """
CREATE TABLE plugin_enabled (name TEXT PRIMARY KEY NOT NULL,
    enabled INTEGER NOT NULL CHECK (enabled IN (0, 1)), updated_at REAL NOT NULL);
CREATE TABLE plugin_policy (name TEXT PRIMARY KEY NOT NULL, policy TEXT NOT NULL,
    updated_at REAL NOT NULL);
"""


class AdminState(Protocol):
    """The operator's per-plugin admin state. Names are plugin names
    (`manifest.is_valid_name`); anything else is `ValueError`."""

    def enabled(self, name: str) -> bool | None:
        """Whether the operator enabled (True) or disabled (False) it; None: never set."""
    def set_enabled(self, name: str, enabled: bool) -> None: ...
    def policy(self, name: str) -> Policy | None: ...
    def set_policy(self, name: str, policy: Policy | None) -> None:
        """Store `policy`; None deletes it."""
    def policies(self) -> dict[str, Policy]: ...
    def forget(self, name: str) -> None:
        """Drop everything about `name` (it was uninstalled)."""
    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Everything, per plugin name, JSON-able (the API's listing)."""
    def close(self) -> None: ...


def _checked(name: str) -> str:
    if not isinstance(name, str) or not is_valid_name(name):
        raise ValueError(f"not a plugin name: {name!r:.80}")
    return name


def _validated(text: Any) -> Policy:
    """`text` (JSON, or what a hand edit left) as a Policy; ValueError with pydantic's
    first complaint, short."""
    try:
        return Policy.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ValueError(f"{loc}: {first['msg']}" if loc else first["msg"]) from None


class SqliteAdminState:
    """`AdminState` in one SQLite file. The constructor touches nothing: the file is
    opened at first use, on entering `with`, or at once by `SqliteAdminState.open(path)`
    (the way to see a bad file at startup). Safe from many threads (one connection, one
    lock: the writes are rare and tiny); other processes may share the file (WAL, a busy
    timeout)."""

    def __init__(self, path: Path, *, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    @classmethod
    def open(cls, path: Path, *, timeout: float = 5.0) -> Self:
        state = cls(path, timeout=timeout)
        with state._db():
            return state

    def __enter__(self) -> Self:
        with self._db():
            return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _error(self, message: str, plugin: str | None = None) -> AdminStateError:
        return AdminStateError(message, plugin=plugin, path=self.path)

    def _flag(self, name: str, value: object) -> bool:
        # the CHECK constraint keeps 0 and 1, unless a hand edit turned checks off
        if value not in (0, 1) or isinstance(value, float):
            raise self._error(f"the stored enabled flag is {value!r:.40}, not 0 or 1", name)
        return bool(value)

    def _bad(self, what: str) -> AdminStateError:
        return self._error(f"the admin state file {what}")

    def _decode(self, name: str, text: Any) -> Policy:
        try:
            return _validated(text)
        except ValueError as exc:
            raise self._error(f"the stored policy does not validate: {exc}", name) from None

    def _listed(self, name: str, text: Any) -> dict[str, Any]:
        return self._decode(name, text).model_dump(mode="json", exclude_unset=True)

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
        # IMMEDIATE: the write lock at once, so two processes cannot interleave
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _db(self, plugin: str | None = None) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock; a SQLite error comes out as ours."""
        with self._lock:
            if self._closed:
                raise self._error("the admin state is closed", plugin)
            if self._conn is None:
                try:
                    self._conn = self._open_retrying()
                except sqlite3.Error as exc:
                    raise self._bad(f"cannot be opened: {exc}") from None
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise self._error(f"the admin state file failed: {exc}", plugin) from None

    def _prepare_file(self) -> None:
        """Refuse what must not be opened; create the file (0600, in a 0700 dir)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                pass
            else:
                os.fchmod(fd, 0o600)  # whatever the umask; SQLite's -wal/-shm copy it
                os.close(fd)
                # the new name must outlast a power cut as the first write will
                dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
                logger.info("admin state %s created", self.path)
                return
            st = os.lstat(self.path)
            # a symlink could be re-aimed at another file by whoever can write its dir
            if stat.S_ISLNK(st.st_mode):
                raise self._bad("is a symlink; it must be a regular file")
            if not stat.S_ISREG(st.st_mode):
                kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
                raise self._bad(f"is {kind}; it must be a regular file")
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_NOCTTY | os.O_CLOEXEC)
            try:
                head = os.read(fd, len(_HEADER))
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._bad(f"cannot be used: {describe(exc)}") from None
        if head and head != _HEADER:
            raise self._bad("is not a SQLite database")
        if not head:  # SQLite reads an empty file as an empty database: say so
            logger.warning("admin state %s is empty: no plugin state kept yet", self.path)

    def _open_retrying(self) -> sqlite3.Connection:
        """`_connect`, again while another connection holds the lock a new file's first
        opening needs (switching to WAL answers "database is locked" at once, without
        SQLite's busy wait), for up to the busy timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return self._connect()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    def _connect(self) -> sqlite3.Connection:
        self._prepare_file()
        # mode=rw: SQLite opens the file just checked, never creates one of its own
        uri = f"file:{urllib.request.pathname2url(os.path.abspath(self.path))}?mode=rw"
        conn = sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA trusted_schema = OFF")  # a planted trigger runs nothing
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise self._bad(f"is damaged: {check}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                logger.warning("admin state %s: journal mode %s, not WAL", self.path, mode)
            # FULL: in WAL mode NORMAL may lose the last commits to a power cut or an OS
            # crash, though the API already answered; a lost "disabled" re-enables the
            # plugin. Writes are a few a day, so the fsync per commit costs nothing.
            conn.execute("PRAGMA synchronous = FULL")
            self._schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _schema(self, conn: sqlite3.Connection) -> None:
        with self._transaction(conn):  # two hosts opening a new file create it once
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            app = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if version == 0 and tables == 0:
                for statement in _TABLES.split(";")[:-1]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif app != APPLICATION_ID or version == 0:
                raise self._bad("is a SQLite database, but not plughost's")
            elif version > SCHEMA_VERSION:
                raise self._bad(f"has schema version {version}, from a newer plughost "
                                f"(this one knows up to {SCHEMA_VERSION})")
            # version < SCHEMA_VERSION: a later plughost migrates here, in this transaction

    # -- AdminState ----------------------------------------------------------------------

    def enabled(self, name: str) -> bool | None:
        with self._db(_checked(name)) as conn:
            row = conn.execute("SELECT enabled FROM plugin_enabled WHERE name = ?",
                               (name,)).fetchone()
        return None if row is None else self._flag(name, row[0])

    def set_enabled(self, name: str, enabled: bool) -> None:
        with self._db(_checked(name)) as conn:
            conn.execute("INSERT OR REPLACE INTO plugin_enabled VALUES (?, ?, ?)",
                         (name, int(bool(enabled)), time.time()))

    def policy(self, name: str) -> Policy | None:
        with self._db(_checked(name)) as conn:
            row = conn.execute("SELECT policy FROM plugin_policy WHERE name = ?",
                               (name,)).fetchone()
        return None if row is None else self._decode(name, row[0])

    def set_policy(self, name: str, policy: Policy | None) -> None:
        _checked(name)
        if policy is None:
            with self._db(name) as conn:
                conn.execute("DELETE FROM plugin_policy WHERE name = ?", (name,))
            return
        # the keys the operator set, as they set them; checked to read back, so a
        # `model_construct`ed policy cannot store what `policy()` would refuse later
        text = policy.model_dump_json(exclude_unset=True)
        try:
            _validated(text)
        except ValueError as exc:
            raise ManifestError(f"the policy does not validate: {exc}", plugin=name) from None
        with self._db(name) as conn:
            conn.execute("INSERT OR REPLACE INTO plugin_policy VALUES (?, ?, ?)",
                         (name, text, time.time()))

    def policies(self) -> dict[str, Policy]:
        with self._db() as conn:
            rows = conn.execute("SELECT name, policy FROM plugin_policy ORDER BY name"
                                ).fetchall()
        out: dict[str, Policy] = {}
        for name, text in rows:
            try:
                out[name] = self._decode(name, text)
            except AdminStateError as exc:
                logger.error("%s; left out of the listing", exc)
        return out

    def forget(self, name: str) -> None:
        with self._db(_checked(name)) as conn, self._transaction(conn):  # both, or neither
            conn.execute("DELETE FROM plugin_enabled WHERE name = ?", (name,))
            conn.execute("DELETE FROM plugin_policy WHERE name = ?", (name,))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per plugin name, sorted: `enabled`, `enabled_updated_at`, `policy` (the keys
        set), `policy_updated_at` (unix times, as `loaded_at`). A broken value is None,
        with `enabled_error` or `policy_error` beside it; the other rows are as usual."""
        with self._db() as conn:
            rows = conn.execute(
                "SELECT n.name, e.enabled, e.updated_at, p.policy, p.updated_at FROM (SELECT "
                "name FROM plugin_enabled UNION SELECT name FROM plugin_policy) AS n LEFT "
                "JOIN plugin_enabled AS e USING (name) LEFT JOIN plugin_policy AS p USING "
                "(name) ORDER BY n.name").fetchall()
        out: dict[str, dict[str, Any]] = {}
        for name, flag, flag_at, text, policy_at in rows:
            row = out[name] = {"enabled": None, "enabled_updated_at": flag_at,
                               "policy": None, "policy_updated_at": policy_at}
            for key, at, read in (("enabled", flag_at, partial(self._flag, name, flag)),
                                  ("policy", policy_at, partial(self._listed, name, text))):
                try:
                    if at is not None:
                        row[key] = read()
                except AdminStateError as exc:
                    logger.error("%s", exc)
                    row[f"{key}_error"] = exc.message
        return out


class MemoryAdminState:
    """Admin state that lasts as long as the process (an application that keeps its own,
    or tests); the same checks as the SQLite one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._enabled: dict[str, tuple[bool, float]] = {}
        self._policies: dict[str, tuple[Policy, float]] = {}

    def enabled(self, name: str) -> bool | None:
        with self._lock:
            got = self._enabled.get(_checked(name))
        return None if got is None else got[0]

    def set_enabled(self, name: str, enabled: bool) -> None:
        with self._lock:
            self._enabled[_checked(name)] = (bool(enabled), time.time())

    def policy(self, name: str) -> Policy | None:
        with self._lock:
            got = self._policies.get(_checked(name))
        return None if got is None else got[0]

    def set_policy(self, name: str, policy: Policy | None) -> None:
        with self._lock:
            if policy is None:
                self._policies.pop(_checked(name), None)
            else:
                self._policies[_checked(name)] = (policy, time.time())

    def policies(self) -> dict[str, Policy]:
        with self._lock:
            return {n: p for n, (p, _) in sorted(self._policies.items())}

    def forget(self, name: str) -> None:
        with self._lock:
            self._enabled.pop(_checked(name), None)
            self._policies.pop(name, None)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            names = sorted(set(self._enabled) | set(self._policies))
            out: dict[str, dict[str, Any]] = {}
            for n in names:
                flag, policy = self._enabled.get(n), self._policies.get(n)
                out[n] = {"enabled": flag[0] if flag else None,
                          "enabled_updated_at": flag[1] if flag else None,
                          "policy": (policy[0].model_dump(mode="json", exclude_unset=True)
                                     if policy else None),
                          "policy_updated_at": policy[1] if policy else None}
            return out

    def close(self) -> None:
        pass

