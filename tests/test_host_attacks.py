"""A hostile plugin author against the permission model and the host functions.

Each test is one attack, made through the real host call path (testkit's `host` function
forwards `fn|json` to gk.host_call; the grpc `relay` fixture makes any host call), and
asserts what the documented contract promises. The attacks that once got through (a
plugin_call choosing its callee's organisation, slow redirect hops past the deadline,
metadata outside the file quota, a Host header naming another site, fts3_tokenizer's
native pointers, RENAME out of a table scope, writes to sqlite_sequence, hostile JSON, a
NaN TTL, unbounded secret key names, host paths in error texts) are fixed and kept here.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plughost import Manager, PluginTimeout
from plughost.runtimes.wasm import WasmEngine

from . import test_host_functions as thf
from .test_host_functions import (
    MakeHost,
    b64,
    call_args,
    host_failures,
    load,
    ok,
    okj,
    raw_call,
    refused,
    relay,
    wasm,
)

# test_host_functions' fixtures (its `hosts` takes the operator's `policies`)
hosts = thf.hosts
no_proxy = thf.no_proxy
scoped_db = thf.scoped_db

# -- a tiny scriptable HTTP server ------------------------------------------------------------


class Routes:
    """path -> (delay seconds, status, headers, body); every request is recorded."""

    def __init__(self) -> None:
        self.port = 0
        self.routes: dict[str, tuple[float, int, dict[str, str], bytes]] = {}
        self.seen: list[tuple[str, dict[str, str]]] = []

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
def routes(no_proxy: None) -> Iterator[Routes]:
    state = Routes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            state.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            delay, status, headers, body = state.routes.get(
                self.path, (0.0, 404, {}, b"not found"))
            time.sleep(delay)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


def _db_file(tmp_path: Path, plugin: str = "tk") -> Path:
    return tmp_path / "data" / "db" / f"{plugin}.sqlite3"


# == database: table scopes ========================================================================


@pytest.mark.parametrize(("fn", "query"), [
    ("db_exec", "ATTACH DATABASE '/tmp/plughost-attack.db' AS x"),
    ("db_exec", "VACUUM INTO '/tmp/plughost-attack-vacuum.db'"),
    ("db_exec", "VACUUM"),
    ("db_query", "SELECT load_extension('/tmp/nothing.so') AS x"),
    ("db_exec", "PRAGMA query_only = OFF"),
    ("db_exec", "PRAGMA writable_schema = ON"),
    ("db_exec", "PRAGMA foreign_keys = ON"),
    ("db_query", "SELECT * FROM dbstat"),  # page-level view of every table
])
def test_db_sandbox_statements_are_refused(scoped_db: Manager, fn: str, query: str) -> None:
    assert raw_call(scoped_db, "tk", fn, {"query": query}) == b""
    assert len(host_failures(scoped_db, "tk")) == 1
    assert not Path("/tmp/plughost-attack.db").exists()
    assert not Path("/tmp/plughost-attack-vacuum.db").exists()


@pytest.mark.parametrize("query", [
    "INSERT INTO notes VALUES ('x') RETURNING v",  # db_query is read-only ...
    "INSERT INTO notes VALUES ('x') RETURNING (SELECT v FROM secret) AS s",
    "CREATE TEMP TABLE notes_tmp (v)",  # ... temp objects included
])
def test_db_query_cannot_write_even_with_returning(scoped_db: Manager, tmp_path: Path,
                                                    query: str) -> None:
    assert raw_call(scoped_db, "tk", "db_query", {"query": query}) == b""
    with sqlite3.connect(_db_file(tmp_path)) as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)


@pytest.mark.parametrize("query", [
    "SELECT rowid AS r FROM secret",
    "SELECT (SELECT v FROM secret) AS s",
    "SELECT v FROM notes UNION SELECT v FROM secret",
    "WITH RECURSIVE c(x) AS (SELECT v FROM secret) SELECT x FROM c",
    "SELECT v FROM notes ORDER BY (SELECT v FROM secret)",
    "SELECT max(v) OVER (ORDER BY (SELECT v FROM secret)) AS w FROM notes",
    "SELECT v FROM main.secret",
    'SELECT v FROM "SECRET"',
])
def test_db_reads_of_other_tables_in_unusual_places_are_refused(scoped_db: Manager,
                                                                 query: str) -> None:
    refused(scoped_db, "tk", "db_query", {"query": query},
            'access to table "secret" not permitted')


def test_db_views_and_triggers_made_by_the_plugin_do_not_launder_reads(
        scoped_db: Manager, tmp_path: Path) -> None:
    m = scoped_db
    # a permanent view named in scope over the forbidden table: made, but never readable
    assert ok(m, "tk", "db_exec", {"query": "CREATE VIEW notes_leak AS SELECT v FROM secret"}
              ) == b'{"affected":0}'
    refused(m, "tk", "db_query", {"query": "SELECT v FROM notes_leak"},
            'access to table "secret" not permitted')
    # a trigger that copies the forbidden table into an allowed one
    assert ok(m, "tk", "db_exec", {"query": "CREATE TRIGGER notes_copy AFTER INSERT ON notes "
                                            "BEGIN INSERT INTO notes_log SELECT v FROM secret;"
                                            " END"}) == b'{"affected":0}'
    refused(m, "tk", "db_exec", {"query": "INSERT INTO notes VALUES ('go')"},
            'access to table "secret" not permitted')
    with sqlite3.connect(_db_file(tmp_path)) as conn:
        assert conn.execute("SELECT count(*) FROM notes_log").fetchone() == (0,)


def test_db_an_fts_table_with_external_content_does_not_launder_reads(
        scoped_db: Manager) -> None:
    m = scoped_db
    assert ok(m, "tk", "db_exec", {"query": "CREATE VIRTUAL TABLE notes_fts USING "
                                            "fts4(v, content='secret')"}) == b'{"affected":0}'
    refused(m, "tk", "db_query", {"query": "SELECT v FROM notes_fts"},
            'access to table "secret" not permitted')


def test_db_a_trigger_on_an_out_of_scope_table_cannot_be_made(scoped_db: Manager) -> None:
    refused(scoped_db, "tk", "db_exec",
            {"query": "CREATE TEMP TRIGGER notes_t AFTER INSERT ON secret BEGIN "
                      "INSERT INTO notes VALUES (new.v); END"},
            'write access to table "secret" not permitted')


def test_db_a_runaway_query_ends_at_the_call_deadline(plugins: Path, engine: WasmEngine,
                                                      hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["db.read"], resources={"call_timeout_ms": 500})
    m = hosts()
    load(m, plugins, engine, 1)
    start = time.monotonic()
    with pytest.raises(PluginTimeout):
        raw_call(m, "tk", "db_query", {"query": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL "
                                                "SELECT x + 1 FROM c) SELECT max(x) FROM c"})
    assert time.monotonic() - start < 3


def test_db_rename_into_an_out_of_scope_name_is_refused(scoped_db: Manager,
                                                        tmp_path: Path) -> None:
    # CREATE TABLE other is refused (test_db_scope_refuses_writing_other_tables) ...
    raw_call(scoped_db, "tk", "db_exec", {"query": "ALTER TABLE notes RENAME TO other"})
    with sqlite3.connect(_db_file(tmp_path)) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    # ... so renaming an allowed table to that name must be too
    assert "other" not in names and "notes" in names


def test_db_another_tables_autoincrement_counter_cannot_be_rewritten(
        scoped_db: Manager, tmp_path: Path) -> None:
    with sqlite3.connect(_db_file(tmp_path)) as conn:
        conn.execute("CREATE TABLE secret_ids (id INTEGER PRIMARY KEY AUTOINCREMENT, v TEXT)")
        conn.execute("INSERT INTO secret_ids (v) VALUES ('a')")
    raw_call(scoped_db, "tk", "db_exec", {"query": "DELETE FROM sqlite_sequence"})
    with sqlite3.connect(_db_file(tmp_path)) as conn:
        conn.execute("DELETE FROM secret_ids")
        conn.execute("INSERT INTO secret_ids (v) VALUES ('b')")
        # AUTOINCREMENT promises ids are never reused; the plugin reset the counter
        assert conn.execute("SELECT id FROM secret_ids").fetchone() == (2,)


def test_db_fts3_tokenizer_cannot_leak_or_set_native_pointers(scoped_db: Manager) -> None:
    leaked = raw_call(scoped_db, "tk", "db_query",
                      {"query": "SELECT hex(fts3_tokenizer('simple')) AS p"})
    assert leaked == b""  # today: [{"p":"<the address of sqlite's simple tokenizer>"}]
    assert raw_call(scoped_db, "tk", "db_query", {
        "query": "SELECT fts3_tokenizer('simple', x'4141414141414141') AS p"}) == b""


# == http_request ==================================================================================


@pytest.fixture
def web_scoped(plugins: Path, engine: WasmEngine, hosts: MakeHost, no_proxy: None
               ) -> Manager:
    """"tk" may reach `allowed.test` and `*.allowed.test` only; the local server is
    127.0.0.1, outside its scope."""
    wasm(plugins, "tk", entries=[{"type": "http", "scope": ["allowed.test",
                                                            "*.allowed.test"]}])
    m = hosts()
    load(m, plugins, engine, 1)
    return m


@pytest.mark.parametrize("url", [
    "http://allowed.test@127.0.0.1:PORT/",
    "http://allowed.test\\@127.0.0.1:PORT/",
    "http://allowed.test:80\\@127.0.0.1:PORT/",
    "http://allowed.test%40127.0.0.1:PORT/",
    "http://127.0.0.1:PORT/#.allowed.test",
    "http://127.0.0.1:PORT/?.allowed.test",
    "http://127.0.0.1:PORT\\.allowed.test/",
    "http://127.0.0.1\t.allowed.test:PORT/",
    "http://127.0.0.1\n.allowed.test:PORT/",
    "http://127.0.0.1%00.allowed.test:PORT/",
    "http://127.0.0.1%2f.allowed.test:PORT/",
    "http://[::ffff:127.0.0.1%25.allowed.test]:PORT/",
    "http://127.0.0.1.:PORT/",
    "http://2130706433:PORT/",
    "http://0x7f.0.0.1:PORT/",
    "http://127.1:PORT/",
    "http://127\u30020\u30020\u30021:PORT/",
    "http:\\\\127.0.0.1:PORT/",
    "http:127.0.0.1:PORT/",
    " http://127.0.0.1:PORT/",
    "HTTP://127.0.0.1:PORT/",
    "ftp://allowed.test/",
    "file:///etc/passwd",
])
def test_http_urls_that_disguise_the_host_never_reach_it(web_scoped: Manager,
                                                         routes: Routes, url: str) -> None:
    routes.routes["/"] = (0.0, 200, {}, b"reached")
    assert raw_call(web_scoped, "tk", "http_request",
                    {"url": url.replace("PORT", str(routes.port))}) == b""
    assert routes.seen == []


@pytest.mark.parametrize("location", [
    "http://127.0.0.1:PORT/inner",
    "http://allowed.test@127.0.0.1:PORT/inner",
    "//127.0.0.1:PORT/inner",
    "file:///etc/passwd",
    "gopher://127.0.0.1:PORT/",
])
def test_http_redirects_out_of_scope_are_refused(plugins: Path, engine: WasmEngine,
                                                 hosts: MakeHost, routes: Routes,
                                                 location: str) -> None:
    """The scope lets `localhost` only; its redirects point at 127.0.0.1 (the same server
    by another name) or other schemes."""
    wasm(plugins, "tk", entries=[{"type": "http", "scope": [f"localhost:{routes.port}"]}])
    m = hosts()
    load(m, plugins, engine, 1)
    routes.routes["/start"] = (0.0, 302, {"Location": location.replace(
        "PORT", str(routes.port))}, b"")
    routes.routes["/inner"] = (0.0, 200, {}, b"inner")
    assert raw_call(m, "tk", "http_request", {"url": routes.url("/start", "localhost")}) \
        == b""
    assert [p for p, _ in routes.seen] == ["/start"]


def test_http_slow_redirect_hops_do_not_outlive_the_call(plugins: Path, engine: WasmEngine,
                                                         hosts: MakeHost,
                                                         routes: Routes) -> None:
    wasm(plugins, "tk", ["http"], allowed_hosts=["127.0.0.1"],
         resources={"call_timeout_ms": 800})
    m = hosts()
    load(m, plugins, engine, 1)
    for n in range(1, 8):
        routes.routes[f"/hop{n}"] = (0.35, 302, {"Location": f"/hop{n - 1}"}, b"")
    routes.routes["/hop0"] = (0.0, 200, {}, b"done")
    start = time.monotonic()
    with contextlib.suppress(PluginTimeout):
        raw_call(m, "tk", "http_request", {"url": routes.url("/hop7")})
    # "HTTP waits are no longer than the time left": the call ends near its 800 ms
    assert time.monotonic() - start < 1.5


def test_http_host_header_cannot_name_another_site(plugins: Path, engine: WasmEngine,
                                                   hosts: MakeHost, routes: Routes) -> None:
    wasm(plugins, "tk", ["http"], allowed_hosts=["127.0.0.1"])
    m = hosts()
    load(m, plugins, engine, 1)
    routes.routes["/"] = (0.0, 200, {}, b"ok")
    raw_call(m, "tk", "http_request", {"url": routes.url("/"),
                                       "headers": {"Host": "admin.internal.example"}})
    assert all(h.get("host") == f"127.0.0.1:{routes.port}" for _, h in routes.seen)


def test_http_header_and_method_injection_is_refused(plugins: Path, engine: WasmEngine,
                                                     hosts: MakeHost, routes: Routes) -> None:
    wasm(plugins, "tk", ["http"], allowed_hosts=["127.0.0.1"])
    m = hosts()
    load(m, plugins, engine, 1)
    routes.routes["/"] = (0.0, 200, {}, b"ok")
    assert raw_call(m, "tk", "http_request", {
        "url": routes.url("/"), "headers": {"X": "a\r\nInjected: 1"}}) == b""
    assert raw_call(m, "tk", "http_request", {
        "url": routes.url("/"), "method": "GET / HTTP/1.1\r\nHost: evil\r\n\r\nGET"}) == b""
    assert routes.seen == []


def test_http_rate_limit_holds_for_every_spelling_of_the_host(
        plugins: Path, engine: WasmEngine, hosts: MakeHost, routes: Routes) -> None:
    wasm(plugins, "tk", ["http"], allowed_hosts=["127.0.0.1"])
    m = hosts(policies={"tk": {"max_http_req_per_min": 2}})
    load(m, plugins, engine, 1)
    routes.routes["/"] = (0.0, 200, {}, b"ok")
    ok(m, "tk", "http_request", {"url": routes.url("/")})
    ok(m, "tk", "http_request", {"url": routes.url("/")})
    refused(m, "tk", "http_request", {"url": routes.url("/")},
            "HTTP request rate limit exceeded")
    # another URL spelling is the same plugin's window
    refused(m, "tk", "http_request", {"url": routes.url("/", "127.0.0.1.")},
            starts="HTTP")


# == file storage ==================================================================================


@pytest.fixture
def files(plugins: Path, engine: WasmEngine, hosts: MakeHost) -> Manager:
    wasm(plugins, "tk", ["file"])
    wasm(plugins, "other", ["file"])
    m = hosts(policies={"tk": {"max_file_storage_bytes": 100}})
    load(m, plugins, engine, 2)
    return m


@pytest.mark.parametrize("key", [
    "org-3/x", "./org-3/x", "a/../org-3/x", "org-3", "org-03/x", "..\\x", "a\\..\\..\\x",
    "a/b/../../../x", "x\x00y", "a.meta.json/", "a.meta.json/.", "/abs", "\\abs/../..",
    "//x", "../other/secret.txt",
])
def test_file_keys_that_try_to_leave_or_reach_an_organisation_are_refused(
        files: Manager, tmp_path: Path, key: str) -> None:
    assert raw_call(files, "tk", "store_file", {"key": key, "data": b64(b"x")}) == b""
    assert raw_call(files, "tk", "get_file", {"key": key}) == b""
    base = tmp_path / "data" / "files"
    assert not (base / "tk" / "org-3").exists() and not (base / "other").exists()
    assert not (tmp_path / "data" / "x").exists() and not Path("/abs").exists()


def test_file_another_plugins_files_stay_its_own(files: Manager) -> None:
    ok(files, "other", "store_file", {"key": "secret.txt", "data": b64(b"theirs")})
    refused(files, "tk", "get_file", {"key": "secret.txt"}, "file not found: secret.txt")
    refused(files, "tk", "get_file", {"key": "../other/secret.txt"},
            "invalid file key: ../other/secret.txt")
    assert ok(files, "tk", "list_files", {"prefix": "../"}) == b"null"
    assert ok(files, "tk", "list_files", {"prefix": ""}) == b"null"


def test_file_a_very_long_key_is_a_refusal_not_a_crash(files: Manager) -> None:
    assert raw_call(files, "tk", "store_file", {"key": "k" * 5000, "data": "eA=="}) == b""
    assert raw_call(files, "tk", "store_file", {"key": "d/" * 3000 + "x", "data": "eA=="}) \
        == b""
    assert ok(files, "tk", "store_file", {"key": "fine", "data": "eA=="}) == b'{"status":"ok"}'


def test_file_metadata_counts_against_the_quota(files: Manager, tmp_path: Path) -> None:
    for i in range(5):  # quota: 100 bytes
        raw_call(files, "tk", "store_file", {"key": f"f{i}", "data": "",
                                             "metadata": {"pad": "x" * 50_000}})
    used = sum(p.stat().st_size for p in (tmp_path / "data" / "files" / "tk").rglob("*")
               if p.is_file())
    assert used <= 100 + 5 * 200  # the quota, plus the host's own _size/_modified


def test_file_errors_do_not_reveal_host_paths(files: Manager, tmp_path: Path) -> None:
    ok(files, "tk", "store_file", {"key": "d/f", "data": "eA=="})
    assert raw_call(files, "tk", "store_file", {"key": "d", "data": "eA=="}) == b""
    assert str(tmp_path) not in host_failures(files, "tk")[-1].message


# == organisations, plugin_call and the call envelope ==============================================


def test_plugin_call_cannot_choose_the_callees_organisation(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "a", ["plugin.call"])
    relay(plugins, "r", ["file"])
    m = hosts()
    load(m, plugins, engine, 2)
    # the application stores organisation 7's file through r
    assert m.call("r", "host", {"function": "store_file", "_org_id": 7, "args": {
        "key": "payroll.csv", "data": b64(b"org 7 only")}}) == {"result": {"status": "ok"}}
    # a's call has no organisation; it asks r for the file "as organisation 7"
    got = okj(m, "a", "plugin_call", call_args("r", "host", {
        "function": "get_file", "args": {"key": "payroll.csv"}, "_org_id": 7}))
    assert "result" not in got, got  # today: {"result": {"data": "b3JnIDcgb25seQ==", ...}}


def test_host_call_args_never_set_the_organisation(files: Manager, tmp_path: Path) -> None:
    ok(files, "tk", "store_file", {"key": "x", "data": "eA==", "_org_id": 5})
    assert (tmp_path / "data" / "files" / "tk" / "x").exists()
    assert not (tmp_path / "data" / "files" / "tk" / "org-5").exists()


# == cache, secure config ==========================================================================


def test_cache_keys_of_another_plugin_are_unreachable(plugins: Path, engine: WasmEngine,
                                                      hosts: MakeHost) -> None:
    wasm(plugins, "a", ["cache"])
    wasm(plugins, "b", ["cache"])
    m = hosts()
    load(m, plugins, engine, 2)
    ok(m, "a", "cache_set", {"key": "k", "value": b64(b"a's")})
    for key in ("k", "plugin:a:k", "a:k", "../a/k", "a/k"):
        assert okj(m, "b", "cache_get", {"key": key}) == {"found": False, "value": None}
    ok(m, "b", "cache_delete", {"key": "k"})
    assert okj(m, "a", "cache_get", {"key": "k"})["found"] is True


def test_cache_every_entry_expires_even_with_a_nan_ttl(plugins: Path, engine: WasmEngine,
                                                       hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["cache"])
    m = hosts(cache_max_ttl=0.2)
    load(m, plugins, engine, 1)
    raw_call(m, "tk", "cache_set", '{"key": "k", "value": "eA==", "ttl": NaN}')
    time.sleep(0.4)
    assert okj(m, "tk", "cache_get", {"key": "k"})["found"] is False


def test_secure_config_of_another_plugin_or_organisation_is_unreachable(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "a")
    wasm(plugins, "b")
    m = hosts(policies={"a": {"permissions": []}, "b": {"permissions": []}})
    load(m, plugins, engine, 2)
    ok(m, "a", "secure_config_set", {"key": "tok", "value": "a-secret"})
    for key in ("tok", "a\x000\x00tok", "../a/tok", "TOK"):
        assert raw_call(m, "b", "secure_config_get", {"key": key}) == b""
    # a key that embeds the sealing separator does not read another key's value
    assert raw_call(m, "a", "secure_config_get", {"key": "tok\x00"}) == b""
    assert okj(m, "a", "secure_config_get", {"key": "tok"}) == {"value": "a-secret"}


def test_secure_config_key_names_are_capped(plugins: Path, engine: WasmEngine,
                                            hosts: MakeHost) -> None:
    wasm(plugins, "tk")
    m = hosts(policies={"tk": {"permissions": []}})
    load(m, plugins, engine, 1)
    assert raw_call(m, "tk", "secure_config_set", {"key": "k" * (1024 * 1024),
                                                   "value": "v"}) == b""


# == malformed arguments ===========================================================================


@pytest.mark.parametrize("args", [
    b'{"key": "\xff\xfe"}',  # invalid UTF-8
    b'{"key": "k"',
    b"\x00",
])
def test_malformed_json_is_a_refusal(plugins: Path, engine: WasmEngine, hosts: MakeHost,
                                     args: bytes) -> None:
    wasm(plugins, "tk", ["cache"])
    m = hosts()
    load(m, plugins, engine, 1)
    assert m.call_raw("tk", "host", b"cache_get|" + args) == b""
    assert host_failures(m, "tk")[-1].message.startswith(
        'host_call cache_get failed: plugin "tk": cache_get: arguments are not valid JSON')


@pytest.mark.parametrize("args", ['{"key": ' + "1" * 5000 + "}",
                                  "[" * 100_000 + "]" * 100_000])
def test_hostile_json_is_a_refusal_not_a_failed_call(plugins: Path, engine: WasmEngine,
                                                     hosts: MakeHost, args: str) -> None:
    wasm(plugins, "tk", ["cache"])
    m = hosts()
    load(m, plugins, engine, 1)
    refused(m, "tk", "cache_get", args, starts="cache_get: arguments are not valid JSON")


def test_huge_numbers_and_deep_json_in_one_plugin_leave_another_alone(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["cache"])
    wasm(plugins, "other", ["cache"])
    m = hosts()
    load(m, plugins, engine, 2)
    ok(m, "other", "cache_set", {"key": "k", "value": "eA=="})
    for args in ('{"key": 1e999999}', '{"key": ' + "9" * 4000 + "}",
                 json.dumps({"key": "k" * 100_000})):
        with contextlib.suppress(Exception):  # tk's own call may fail; other must not care
            raw_call(m, "tk", "cache_get", args)
    assert okj(m, "other", "cache_get", {"key": "k"}) == {"found": True, "value": "eA=="}
