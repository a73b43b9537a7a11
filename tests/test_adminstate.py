"""The operator's admin state (adminstate.py): real SQLite files, reopened, shared between
threads, and every kind of bad file refused with the file's name."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plughost.adminstate import ADMIN_DB, AdminState, AdminStateError, SqliteAdminState
from plughost.errors import ManifestError, PlughostError
from plughost.host.policy import Policy
from plughost.manifest import Permission

BLOCKED = Policy(status="blocked")
NARROW = Policy.model_validate({"revoke": [{"type": "db", "access": "write"}],
                                "grant": [{"type": "http", "scope": ["reports.internal"]}],
                                "max_db_queries_per_min": 1200})


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / ADMIN_DB


@pytest.fixture
def state(db: Path) -> Iterator[SqliteAdminState]:
    with SqliteAdminState(db) as s:
        yield s


def raw(db: Path, *statements: str) -> None:
    """Edit the file behind the host's back, as an operator with sqlite3 would."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for s in statements:
            conn.execute(s)
    finally:
        conn.close()


def refused(db: Path) -> AdminStateError:
    with pytest.raises(AdminStateError) as info:
        SqliteAdminState.open(db)
    assert str(db) in str(info.value) and info.value.path == str(db)
    assert isinstance(info.value, PlughostError)
    return info.value


def test_enabled_round_trip(state: SqliteAdminState) -> None:
    assert state.enabled("stats") is None
    state.set_enabled("stats", False)
    assert state.enabled("stats") is False
    state.set_enabled("stats", True)
    assert state.enabled("stats") is True
    assert state.enabled("other") is None


def test_policies_round_trip(state: SqliteAdminState) -> None:
    assert state.policy("stats") is None and state.policies() == {}
    state.set_policy("stats", NARROW)
    state.set_policy("legacy", BLOCKED)
    got = state.policy("stats")
    assert got == NARROW and got is not NARROW
    assert got is not None and got.grant == [Permission(type="http",
                                                        scope=["reports.internal"])]
    assert state.policies() == {"legacy": BLOCKED, "stats": NARROW}
    state.set_policy("legacy", None)  # None deletes
    assert state.policy("legacy") is None and list(state.policies()) == ["stats"]
    state.set_policy("legacy", None)  # deleting nothing is fine


def test_constructor_touches_nothing_and_first_use_opens(db: Path) -> None:
    s = SqliteAdminState(db)
    assert not db.parent.exists()
    assert s.enabled("stats") is None  # lazy open
    assert db.is_file()
    s.close()


def test_a_new_instance_sees_a_disable(db: Path) -> None:
    with SqliteAdminState(db) as first:
        first.set_enabled("stats", False)
        first.set_policy("stats", BLOCKED)
        # another instance (another connection) sees it while the first is still open
        with SqliteAdminState(db) as second:
            assert second.enabled("stats") is False
    again = SqliteAdminState.open(db)
    assert again.enabled("stats") is False and again.policy("stats") == BLOCKED
    again.close()


def test_a_disable_survives_the_process_dying_right_after(db: Path) -> None:
    # the host answers the API and dies before any close or checkpoint
    code = ("import os, sys; from pathlib import Path; "
            "from plughost.adminstate import SqliteAdminState; "
            "s = SqliteAdminState(Path(sys.argv[1])); s.set_enabled('stats', False); "
            "os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(db)], check=True, timeout=60)
    with SqliteAdminState(db) as s:
        assert s.enabled("stats") is False


def test_journal_is_wal_and_commits_are_synced(state: SqliteAdminState, db: Path) -> None:
    state.set_enabled("stats", True)
    conn = state._conn  # the one connection: its per-connection setting
    assert conn is not None
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    check.close()


def test_concurrent_writers(db: Path) -> None:
    first, second = SqliteAdminState(db), SqliteAdminState(db)  # two connections too
    errors: list[BaseException] = []
    start = threading.Barrier(8)
    rounds = 100  # even: the last write, n = 99, disables p<i> and enables "shared"

    def work(i: int) -> None:
        s = first if i % 2 else second
        try:
            start.wait()
            for n in range(rounds):
                s.set_enabled(f"p{i}", n % 2 == 0)
                s.set_policy(f"p{i}", Policy(max_http_req_per_min=n))
                s.set_enabled("shared", bool(n % 2))
                s.set_policy(f"gone{i}", BLOCKED)
                s.forget(f"gone{i}")  # a transaction: two statements, nobody between
                assert s.policy(f"p{i}") == Policy(max_http_req_per_min=n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    for i in range(8):
        assert first.enabled(f"p{i}") is False
        assert second.policy(f"p{i}") == Policy(max_http_req_per_min=rounds - 1)
    assert first.enabled("shared") is True
    assert not any(name.startswith("gone") for name in first.snapshot())
    first.close()
    second.close()


def test_transactions_from_many_threads_on_one_instance(state: SqliteAdminState) -> None:
    # forget is two statements in one transaction: two threads must not interleave in
    # the one connection ("cannot start a transaction within a transaction")
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(200):
                state.forget(f"p{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_garbage_bytes_are_refused_and_kept(db: Path) -> None:
    db.parent.mkdir()
    junk = b"not a database, an operator's notes\n" * 50
    db.write_bytes(junk)
    assert "is not a SQLite database" in refused(db).message
    assert db.read_bytes() == junk  # never reset


def test_a_damaged_database_is_refused(db: Path) -> None:
    db.parent.mkdir()
    db.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 32)  # a header, then junk
    assert "cannot be opened: file is not a database" in refused(db).message
    db.unlink()
    with SqliteAdminState(db) as s:
        for i in range(300):
            s.set_policy(f"p{i}", Policy(max_http_req_per_min=i))
    with db.open("r+b") as f:  # a page overwritten: a disk error, a bad copy
        f.seek(2 * 4096)
        f.write(b"\xff" * 4096)
    assert "is damaged" in refused(db).message


def test_a_symlink_is_refused(db: Path, tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.db"
    SqliteAdminState.open(real).close()  # even to a good admin state
    db.parent.mkdir()
    db.symlink_to(real)
    assert "symlink" in refused(db).message
    db.unlink()
    db.symlink_to(tmp_path / "missing.db")  # dangling: not created through
    assert "symlink" in refused(db).message
    assert not (tmp_path / "missing.db").exists()


def test_a_directory_or_fifo_is_refused(db: Path) -> None:
    db.mkdir(parents=True)
    assert "is a directory" in refused(db).message
    db.rmdir()
    os.mkfifo(db)
    assert "not a regular file" in refused(db).message  # and it did not block


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a directory")
    error = refused(tmp_path / "data" / ADMIN_DB)
    assert "cannot be used" in error.message and "exists" in error.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_file_is_refused(db: Path) -> None:
    SqliteAdminState.open(db).close()
    db.chmod(0)
    assert "Permission denied" in refused(db).message


def test_a_newer_schema_is_refused(db: Path) -> None:
    SqliteAdminState.open(db).close()
    raw(db, "PRAGMA user_version = 2")
    assert "schema version 2, from a newer" in refused(db).message


def test_another_database_is_refused(db: Path) -> None:
    db.parent.mkdir()
    raw(db, "CREATE TABLE tickets (id INTEGER)")
    assert "a SQLite database, but not plughost's" in refused(db).message
    assert sqlite3.connect(db).execute("SELECT count(*) FROM sqlite_master").fetchone() == (1,)


def test_an_empty_file_is_a_new_state(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    db.parent.mkdir()
    db.touch()
    with caplog.at_level(logging.WARNING, "plughost.adminstate"), SqliteAdminState(db) as s:
        assert s.enabled("stats") is None
    assert "is empty" in caplog.text


@pytest.mark.parametrize("stored", ['{"status": "nope"}', "{not json", "[1]", "X'00ff'", "7"])
def test_a_corrupted_policy_row(state: SqliteAdminState, db: Path, stored: str,
                                caplog: pytest.LogCaptureFixture) -> None:
    state.set_policy("good", BLOCKED)
    state.set_policy("bad", NARROW)
    value = stored if stored[:1] in "X7" else "'" + stored.replace("'", "''") + "'"
    raw(db, f"UPDATE plugin_policy SET policy = {value} WHERE name = 'bad'")
    with pytest.raises(AdminStateError) as info:
        state.policy("bad")
    assert info.value.plugin == "bad" and info.value.path == str(db)
    assert "'bad'" in str(info.value) and str(db) in str(info.value)
    assert state.policy("good") == BLOCKED  # the other rows still read
    with caplog.at_level(logging.ERROR, "plughost.adminstate"):
        assert state.policies() == {"good": BLOCKED}
        snap = state.snapshot()
    assert "'bad'" in caplog.text and str(db) in caplog.text
    assert snap["bad"]["policy"] is None and "does not validate" in snap["bad"]["policy_error"]
    assert snap["good"]["policy"] == {"status": "blocked"}


def test_a_corrupted_enabled_row(state: SqliteAdminState, db: Path) -> None:
    state.set_enabled("stats", True)
    state.set_enabled("crm", False)
    with pytest.raises(sqlite3.IntegrityError):  # the CHECK constraint: 0 or 1 only
        raw(db, "UPDATE plugin_enabled SET enabled = 0.5 WHERE name = 'stats'")
    raw(db, "PRAGMA ignore_check_constraints = ON",
        "UPDATE plugin_enabled SET enabled = 'yes' WHERE name = 'stats'")
    with pytest.raises(AdminStateError, match="not 0 or 1") as info:
        state.enabled("stats")
    assert info.value.plugin == "stats" and info.value.path == str(db)
    assert state.enabled("crm") is False
    state.set_policy("stats", BLOCKED)
    snap = state.snapshot()
    assert snap["stats"]["enabled"] is None and "not 0 or 1" in snap["stats"]["enabled_error"]
    assert snap["stats"]["policy"] == {"status": "blocked"}  # the rest of the row stands
    assert snap["crm"]["enabled"] is False and "enabled_error" not in snap["crm"]


def test_permissions(db: Path) -> None:
    old = os.umask(0)  # the modes are the module's, not the umask's
    try:
        with SqliteAdminState(db) as s:
            s.set_enabled("stats", False)
            wal = db.with_name(ADMIN_DB + "-wal")
            assert wal.exists() and stat.S_IMODE(wal.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_forget(state: SqliteAdminState) -> None:
    for name in ("stats", "crm"):
        state.set_enabled(name, False)
        state.set_policy(name, BLOCKED)
    state.forget("stats")
    assert state.enabled("stats") is None and state.policy("stats") is None
    assert list(state.snapshot()) == ["crm"]
    assert state.enabled("crm") is False and state.policy("crm") == BLOCKED
    state.forget("never-seen")


def test_snapshot_has_everything_with_times(state: SqliteAdminState) -> None:
    before = time.time()
    state.set_enabled("stats", False)
    state.set_policy("crm", NARROW)
    snap = state.snapshot()
    assert list(snap) == ["crm", "stats"]
    keys = {"enabled", "enabled_updated_at", "policy", "policy_updated_at"}
    assert set(snap["crm"]) == set(snap["stats"]) == keys  # no error for what is unset
    assert snap["stats"]["enabled"] is False and snap["stats"]["policy"] is None
    assert snap["stats"]["policy_updated_at"] is None
    assert before <= snap["stats"]["enabled_updated_at"] <= time.time()
    assert snap["crm"]["enabled"] is None and snap["crm"]["enabled_updated_at"] is None
    assert snap["crm"]["policy"] == NARROW.model_dump(mode="json", exclude_unset=True)
    time.sleep(0.01)
    state.set_enabled("stats", True)
    later = state.snapshot()["stats"]
    assert later["enabled"] is True and later["enabled_updated_at"] > \
        snap["stats"]["enabled_updated_at"]


@pytest.mark.parametrize("name", ["", "Stats", "../x", "a/b", "x" * 65, ".hidden", "a b"])
def test_invalid_names_are_refused(state: SqliteAdminState, name: str) -> None:
    for call in (lambda: state.enabled(name), lambda: state.set_enabled(name, False),
                 lambda: state.policy(name), lambda: state.set_policy(name, BLOCKED),
                 lambda: state.forget(name)):
        with pytest.raises(ValueError, match="not a plugin name"):
            call()
    assert state.snapshot() == {}


def test_a_policy_that_does_not_validate_is_not_stored(state: SqliteAdminState) -> None:
    bogus = Policy.model_construct(status="maybe")  # type: ignore[arg-type]
    with pytest.raises(ManifestError) as info:
        state.set_policy("stats", bogus)
    assert info.value.plugin == "stats"
    assert state.policy("stats") is None


def test_close_is_idempotent(db: Path) -> None:
    s: AdminState = SqliteAdminState.open(db)
    s.set_enabled("stats", False)
    s.close()
    s.close()
    with pytest.raises(AdminStateError, match="closed"):
        s.enabled("stats")
    SqliteAdminState(db).close()  # never opened
