"""Host functions end to end: real wasm plugins (testkit's `host` function forwards
`b"<fn>|<json>"` to gk.host_call), real grpc SDK plugins (tests/fixtures/host/relay.py), a
real SQLite file, a local HTTP server, a local SMTP server (aiosmtpd).

Every Manager here has `HostSettings(data_dir=tmp_path / "data")`: nothing touches the real
user directories. A host call that the host refuses comes back as None in wasm, with a
"host call refused: ..." line in the plugin's log; tests tell a refusal from a JSON `null`
result by counting those lines.
"""

from __future__ import annotations

import datetime
import http.server
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import wasmtime
import yaml

from plughost import CallCycle, Loader, Manager, PluginCallError, PluginLoadError, PluginTimeout
from plughost.host import HostContext, HostSettings
from plughost.host.functions import go_rfc3339_nano
from plughost.host.mail import SMTPSettings
from plughost.manifest import PERMISSIONS
from plughost.runtimes.wasm import WasmEngine

from .conftest import WAT, MakeHost, SmtpCollector, wait_until, write_plugin_dir

HOST_FIXTURES = Path(__file__).parent / "fixtures" / "host"



# -- helpers -----------------------------------------------------------------------------



def load(manager: Manager, plugins: Path, engine: WasmEngine, expected: int) -> Loader:
    loader = Loader(plugins, manager, engine=engine)
    assert loader.load_all() == (expected, [])
    return loader


def wasm(plugins: Path, name: str, permissions: list[str], **manifest: Any) -> Path:
    """testkit as plugin dir `name` granted `permissions` (the manifest is the grant)."""
    return write_plugin_dir(plugins, name, {"permissions": permissions, **manifest})


def relay(plugins: Path, name: str, permissions: list[str], **manifest: Any) -> Path:
    """tests/fixtures/host/relay.py as grpc plugin dir `name`."""
    pdir = plugins / name
    pdir.mkdir(parents=True)
    (pdir / "relay.py").write_text((HOST_FIXTURES / "relay.py").read_text()
                                   .replace("__NAME__", name))
    data: dict[str, Any] = {"name": name, "version": "1.0.0", "runtime": "grpc",
                            "binary": "relay.py", "permissions": permissions}
    data.update(manifest)
    (pdir / "plugin.yaml").write_text(yaml.safe_dump(data))
    return pdir


def host_messages(manager: Manager, name: str) -> list[str]:
    return [r.message for r in manager.log_for(name).records() if r.source == "host"]


def refusals(manager: Manager, name: str) -> list[str]:
    return [m for m in host_messages(manager, name) if m.startswith("host call refused")]


def raw_call(manager: Manager, name: str, fn: str, args: Any) -> Any:
    text = args if isinstance(args, str) else json.dumps(args)
    return manager.call(name, "host", f"{fn}|{text}".encode())


def ok(manager: Manager, name: str, fn: str, args: Any) -> Any:
    """A host call that must be served: no new refusal in the log; returns its result."""
    before = len(refusals(manager, name))
    result = raw_call(manager, name, fn, args)
    assert refusals(manager, name)[before:] == [], f"{fn} was refused"
    return result


def refused(manager: Manager, name: str, fn: str, args: Any, *fragments: str) -> str:
    """A host call that must be refused: None, one new log line naming the reason."""
    before = len(refusals(manager, name))
    assert raw_call(manager, name, fn, args) is None
    new = refusals(manager, name)[before:]
    assert len(new) == 1, f"expected one refusal for {fn}, got {new}"
    for f in fragments:
        assert f in new[0], f"{f!r} not in {new[0]!r}"
    return new[0]


def plugin_records(manager: Manager, name: str) -> list[tuple[str, str]]:
    return [(r.level, r.message) for r in manager.log_for(name).records()
            if r.source == "plugin"]


# -- permissions: every host function but translate needs its own -------------------------


NEEDS = [
    ("db_query", "db.read", {"query": "SELECT 1 AS one"}),
    ("db_exec", "db.write", {"query": "CREATE TABLE t (x)"}),
    ("cache_get", "cache", {"key": "k"}),
    ("cache_set", "cache", {"key": "k", "value": 1}),
    ("cache_delete", "cache", {"key": "k"}),
    ("http_request", "http", {"url": "http://127.0.0.1:9/"}),
    ("send_email", "email", {"to": "a@example.com", "subject": "s", "body": "b"}),
    ("log", "log", {"level": "info", "message": "m"}),
    ("config_get", "config", {"key": "k"}),
    ("plugin_call", "plugin.call", {"plugin": "other", "function": "count"}),
]


@pytest.mark.parametrize(("fn", "permission", "args"), NEEDS, ids=[n[0] for n in NEEDS])
def test_each_host_function_is_refused_without_its_permission(
        plugins: Path, engine: WasmEngine, hosts: MakeHost, tmp_path: Path,
        fn: str, permission: str, args: dict[str, Any]) -> None:
    # Everything else is granted: the refusal is about exactly this permission.
    wasm(plugins, "tk", sorted(PERMISSIONS - {permission}), config={"k": "secret"})
    wasm(plugins, "other", [])
    m = hosts()
    load(m, plugins, engine, 2)
    msg = refused(m, "tk", fn, args, "permission", f"'{permission}'", f"'{fn}'")
    assert "secret" not in msg
    assert m.call("other", "count") == 1  # plugin_call never reached it
    assert ("info", "m") not in plugin_records(m, "tk")  # log did not write
    assert not (tmp_path / "data" / "db" / "tk.sqlite3").exists()  # db never opened
    assert m.call("tk", "count") == 1  # a refusal does not break the instance


def test_granted_functions_are_served_and_translate_needs_no_permission(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["config"], config={"k": "v"})
    wasm(plugins, "bare", [])
    m = hosts()
    load(m, plugins, engine, 2)
    assert ok(m, "tk", "config_get", {"key": "k"}) == "v"
    assert ok(m, "bare", "translate", {"key": "hi"}) == "hello"


# -- db_exec / db_query ----------------------------------------------------------------


@pytest.fixture
def db(plugins: Path, engine: WasmEngine, hosts: MakeHost) -> Manager:
    """Plugin "tk" with db.read and db.write, on the default SQLite backend."""
    wasm(plugins, "tk", ["db.read", "db.write"])
    m = hosts()
    load(m, plugins, engine, 1)
    return m


def test_db_create_insert_and_query_rows_as_dicts(db: Manager, tmp_path: Path) -> None:
    assert ok(db, "tk", "db_exec", {
        "query": "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, score REAL)"}) \
        is not None
    assert ok(db, "tk", "db_exec", {"query": "INSERT INTO people (name, score) VALUES (?, ?)",
                                    "args": ["alice", 1.5]}) == {"rows_affected": 1,
                                                                 "last_insert_id": 1}
    assert ok(db, "tk", "db_exec", {"query": "INSERT INTO people (name, score) VALUES (?, ?)",
                                    "args": ["bob", None]})["last_insert_id"] == 2
    assert ok(db, "tk", "db_query", {"query": "SELECT id, name, score FROM people ORDER BY id"}
              ) == [{"id": 1, "name": "alice", "score": 1.5},
                    {"id": 2, "name": "bob", "score": None}]
    assert ok(db, "tk", "db_query", {"query": "SELECT name FROM people WHERE id = ?",
                                     "args": [2]}) == [{"name": "bob"}]
    assert ok(db, "tk", "db_query", {"query": "SELECT name FROM people WHERE id = ?",
                                     "args": [99]}) == []
    assert ok(db, "tk", "db_exec", {"query": "UPDATE people SET score = ? WHERE score IS NULL",
                                    "args": [2]})["rows_affected"] == 1
    # The default backend is one SQLite file per plugin in the host's data dir.
    path = tmp_path / "data" / "db" / "tk.sqlite3"
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name, score FROM people ORDER BY id").fetchall() == [
            ("alice", 1.5), ("bob", 2.0)]


INJECTIONS = ["x'); DROP TABLE t;--", "1 OR 1=1", "' OR '1'='1", 'a"); DELETE FROM t; --',
              "Robert'); DROP TABLE t; --\x00tail"]


def test_db_sql_injection_attempts_stay_data(db: Manager) -> None:
    ok(db, "tk", "db_exec", {"query": "CREATE TABLE t (v TEXT)"})
    for value in INJECTIONS:
        assert ok(db, "tk", "db_exec", {"query": "INSERT INTO t (v) VALUES (?)",
                                        "args": [value]})["rows_affected"] == 1
    for value in INJECTIONS:  # each comes back verbatim, and matches only itself
        assert ok(db, "tk", "db_query", {"query": "SELECT v FROM t WHERE v = ?",
                                         "args": [value]}) == [{"v": value}]
    assert ok(db, "tk", "db_query", {"query": "SELECT count(*) AS n FROM t"}) == [
        {"n": len(INJECTIONS)}]
    assert ok(db, "tk", "db_query", {"query": "SELECT v FROM t WHERE rowid = ?",
                                     "args": ["1 OR 1=1"]}) == []
    assert ok(db, "tk", "db_query", {
        "query": "SELECT name FROM sqlite_master WHERE type = 'table'"}) == [{"name": "t"}]


def test_db_query_cannot_write(db: Manager) -> None:
    ok(db, "tk", "db_exec", {"query": "CREATE TABLE t (v TEXT)"})
    ok(db, "tk", "db_exec", {"query": "INSERT INTO t VALUES (?)", "args": ["keep"]})
    for sql in ["UPDATE t SET v = 'gone'", "DELETE FROM t", "INSERT INTO t VALUES ('new')",
                "DROP TABLE t", "CREATE TABLE u (x)",
                "WITH x AS (SELECT 1) DELETE FROM t"]:
        refused(db, "tk", "db_query", {"query": sql}, "db_query", "readonly")
    assert ok(db, "tk", "db_query", {"query": "SELECT v FROM t"}) == [{"v": "keep"}]
    assert ok(db, "tk", "db_query", {
        "query": "SELECT name FROM sqlite_master WHERE type = 'table'"}) == [{"name": "t"}]


def test_db_two_statements_in_one_call_are_refused(db: Manager) -> None:
    ok(db, "tk", "db_exec", {"query": "CREATE TABLE t (v TEXT)"})
    refused(db, "tk", "db_exec", {"query": "INSERT INTO t VALUES ('a'); DROP TABLE t"},
            "db_exec", "one statement")
    refused(db, "tk", "db_query", {"query": "SELECT 1; DELETE FROM t"},
            "db_query", "one statement")
    assert ok(db, "tk", "db_query", {"query": "SELECT count(*) AS n FROM t"}) == [{"n": 0}]


@pytest.mark.parametrize("bad", [[[1]], [{"a": 1}], "not a list", 5, {"a": 1}],
                         ids=["nested-list", "object-arg", "string", "number", "object"])
def test_db_args_must_be_a_list_of_scalars(db: Manager, bad: Any) -> None:
    ok(db, "tk", "db_exec", {"query": "CREATE TABLE t (v)"})
    refused(db, "tk", "db_exec", {"query": "INSERT INTO t VALUES (?)", "args": bad},
            "'args' must be a list")
    refused(db, "tk", "db_query", {"query": "SELECT * FROM t WHERE v = ?", "args": bad},
            "'args' must be a list")
    assert ok(db, "tk", "db_query", {"query": "SELECT count(*) AS n FROM t"}) == [{"n": 0}]


def test_db_argument_shapes_and_sql_errors_are_refused_clearly(db: Manager) -> None:
    refused(db, "tk", "db_query", {"args": []}, "db_query", "'query' must be a non-empty string")
    refused(db, "tk", "db_exec", {"query": 5}, "db_exec", "'query' must be a non-empty string")
    refused(db, "tk", "db_query", [1, 2], "db_query", "expected")
    refused(db, "tk", "db_query", "{not json", "db_query", "not valid JSON")
    refused(db, "tk", "db_query", {"query": "SELEKT 1"}, "db_query", "syntax error")
    refused(db, "tk", "db_query", {"query": "SELECT * FROM missing"}, "no such table")
    refused(db, "tk", "db_exec", {"query": "CREATE TABLE t (v)"} | {"args": [1]},
            "db_exec", "bindings")
    assert db.call("tk", "count") == 1


def test_each_plugin_has_its_own_database(plugins: Path, engine: WasmEngine,
                                          hosts: MakeHost, tmp_path: Path) -> None:
    wasm(plugins, "a", ["db.read", "db.write"])
    wasm(plugins, "b", ["db.read", "db.write"])
    m = hosts()
    load(m, plugins, engine, 2)
    ok(m, "a", "db_exec", {"query": "CREATE TABLE secret (v TEXT)"})
    ok(m, "a", "db_exec", {"query": "INSERT INTO secret VALUES (?)", "args": ["a-only"]})
    refused(m, "b", "db_query", {"query": "SELECT v FROM secret"}, "no such table")
    ok(m, "b", "db_exec", {"query": "CREATE TABLE secret (v TEXT)"})  # no clash
    ok(m, "b", "db_exec", {"query": "INSERT INTO secret VALUES (?)", "args": ["b-only"]})
    assert ok(m, "a", "db_query", {"query": "SELECT v FROM secret"}) == [{"v": "a-only"}]
    assert ok(m, "b", "db_query", {"query": "SELECT v FROM secret"}) == [{"v": "b-only"}]
    assert sorted(p.name for p in (tmp_path / "data" / "db").glob("*.sqlite3")) == [
        "a.sqlite3", "b.sqlite3"]


def test_db_row_cap_refuses_bigger_results(plugins: Path, engine: WasmEngine,
                                           hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["db.read", "db.write"])
    m = hosts(db_max_rows=3)
    load(m, plugins, engine, 1)
    ok(m, "tk", "db_exec", {"query": "CREATE TABLE t (n INTEGER)"})
    for i in range(4):
        ok(m, "tk", "db_exec", {"query": "INSERT INTO t VALUES (?)", "args": [i]})
    assert ok(m, "tk", "db_query", {"query": "SELECT n FROM t ORDER BY n LIMIT 3"}) == [
        {"n": 0}, {"n": 1}, {"n": 2}]
    refused(m, "tk", "db_query", {"query": "SELECT n FROM t"}, "more than 3 rows")


def test_db_exec_cannot_write_files_outside_the_data_dir(db: Manager, tmp_path: Path) -> None:
    target = tmp_path / "escaped.sqlite3"
    ok(db, "tk", "db_exec", {"query": "CREATE TABLE t (v)"})
    raw_call(db, "tk", "db_exec", {"query": f"VACUUM INTO '{target}'"})
    assert not target.exists()


def test_db_attach_cannot_reach_files_outside_the_plugins_database(
        db: Manager, tmp_path: Path) -> None:
    target = tmp_path / "attached.sqlite3"
    raw_call(db, "tk", "db_query", {"query": f"ATTACH DATABASE '{target}' AS x"})
    raw_call(db, "tk", "db_exec", {"query": f"ATTACH DATABASE '{target}' AS y"})
    assert not target.exists()


def test_db_query_blob_result_is_a_refusal_not_a_failed_call(db: Manager) -> None:
    assert db.call("tk", "count") == 1
    before = len(refusals(db, "tk"))
    result = raw_call(db, "tk", "db_query", {"query": "SELECT X'00FF' AS b"})
    if result is None:  # refused: then it says why
        assert len(refusals(db, "tk")) == before + 1
    else:  # or served in some JSON encoding of the blob
        assert list(result[0]) == ["b"]
    assert db.call("tk", "count") == 2  # same instance: its state survived


def test_db_query_blob_result_over_grpc_is_a_logged_refusal(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    relay(plugins, "r", ["db.read"])
    m = hosts()
    load(m, plugins, engine, 1)
    out = m.call("r", "host", {"function": "db_query",
                               "args": {"query": "SELECT X'00FF' AS b"}})
    if "error" in out:
        assert "unreachable" not in out["error"]
        assert any("db_query" in r for r in refusals(m, "r"))
    assert m.call("r", "host", {"function": "db_query",
                                "args": {"query": "SELECT 1 AS one"}}) == {
        "result": [{"one": 1}]}


def test_db_query_results_are_strict_json(db: Manager) -> None:
    raw = db.call_raw("tk", "host", b'db_query|{"query": "SELECT 1e999 AS x"}')
    # Infinity has no JSON spelling: the host refuses (logged) rather than send non-JSON.
    assert raw == b""
    assert any("cannot be sent as JSON" in r.message for r in db.log_for("tk").records())


# -- cache ---------------------------------------------------------------------------


def test_cache_round_trip_of_json_values(plugins: Path, engine: WasmEngine,
                                         hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["cache"])
    m = hosts()
    load(m, plugins, engine, 1)
    values: dict[str, Any] = {"obj": {"a": [1, 2, {"b": None}], "s": "é\"'"}, "str": "text",
                              "int": 42, "float": 2.5, "bool": True, "list": [], "null": None}
    for key, value in values.items():
        assert ok(m, "tk", "cache_set", {"key": key, "value": value}) is None
    for key, value in values.items():
        assert ok(m, "tk", "cache_get", {"key": key}) == value
    assert ok(m, "tk", "cache_get", {"key": "never-set"}) is None  # a miss is not a refusal
    ok(m, "tk", "cache_set", {"key": "int", "value": 43})  # overwrite
    assert ok(m, "tk", "cache_get", {"key": "int"}) == 43
    assert ok(m, "tk", "cache_delete", {"key": "int"}) is True
    assert ok(m, "tk", "cache_delete", {"key": "int"}) is False
    assert ok(m, "tk", "cache_get", {"key": "int"}) is None


def test_cache_is_namespaced_per_plugin(plugins: Path, engine: WasmEngine,
                                        hosts: MakeHost) -> None:
    wasm(plugins, "a", ["cache"])
    wasm(plugins, "b", ["cache"])
    m = hosts()
    load(m, plugins, engine, 2)
    ok(m, "a", "cache_set", {"key": "k", "value": "a's"})
    assert ok(m, "b", "cache_get", {"key": "k"}) is None
    assert ok(m, "b", "cache_delete", {"key": "k"}) is False
    ok(m, "b", "cache_set", {"key": "k", "value": "b's"})
    assert ok(m, "a", "cache_get", {"key": "k"}) == "a's"
    assert ok(m, "b", "cache_get", {"key": "k"}) == "b's"
    assert ok(m, "b", "cache_delete", {"key": "k"}) is True
    assert ok(m, "a", "cache_get", {"key": "k"}) == "a's"


def test_cache_ttl_expires(plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["cache"])
    m = hosts()
    load(m, plugins, engine, 1)
    ok(m, "tk", "cache_set", {"key": "short", "value": 1, "ttl": 0.3})
    ok(m, "tk", "cache_set", {"key": "long", "value": 2, "ttl": 3600})
    ok(m, "tk", "cache_set", {"key": "forever", "value": 3})
    assert ok(m, "tk", "cache_get", {"key": "short"}) == 1
    wait_until(lambda: ok(m, "tk", "cache_get", {"key": "short"}) is None, timeout=5)
    assert ok(m, "tk", "cache_get", {"key": "long"}) == 2
    assert ok(m, "tk", "cache_get", {"key": "forever"}) == 3


@pytest.mark.parametrize("ttl", [-1, "soon", True, [1]])
def test_cache_set_bad_ttl_or_key_is_refused(plugins: Path, engine: WasmEngine,
                                             hosts: MakeHost, ttl: Any) -> None:
    wasm(plugins, "tk", ["cache"])
    m = hosts()
    load(m, plugins, engine, 1)
    refused(m, "tk", "cache_set", {"key": "k", "value": 1, "ttl": ttl}, "cache_set", "'ttl'")
    refused(m, "tk", "cache_set", {"value": 1}, "cache_set", "'key'")
    refused(m, "tk", "cache_get", {"key": ""}, "cache_get", "'key'")
    refused(m, "tk", "cache_delete", {"key": 7}, "cache_delete", "'key'")
    assert ok(m, "tk", "cache_get", {"key": "k"}) is None


def test_cache_cap_evicts_least_recently_used(plugins: Path, engine: WasmEngine,
                                              hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["cache"])
    m = hosts(cache_max_entries=8, cache_plugin_max_entries=2)
    load(m, plugins, engine, 1)
    ok(m, "tk", "cache_set", {"key": "a", "value": 1})
    ok(m, "tk", "cache_set", {"key": "b", "value": 2})
    assert ok(m, "tk", "cache_get", {"key": "a"}) == 1  # a is now the most recently used
    ok(m, "tk", "cache_set", {"key": "c", "value": 3})  # evicts b, not a
    assert ok(m, "tk", "cache_get", {"key": "b"}) is None
    assert ok(m, "tk", "cache_get", {"key": "a"}) == 1
    assert ok(m, "tk", "cache_get", {"key": "c"}) == 3
    ok(m, "tk", "cache_set", {"key": "d", "value": 4})  # a was read before c: a goes
    assert ok(m, "tk", "cache_get", {"key": "a"}) is None
    assert ok(m, "tk", "cache_get", {"key": "c"}) == 3
    assert ok(m, "tk", "cache_get", {"key": "d"}) == 4


def test_cache_value_larger_than_the_cap_is_refused(plugins: Path, engine: WasmEngine,
                                                    hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["cache"])
    m = hosts(cache_max_bytes=400, cache_plugin_max_bytes=100)
    load(m, plugins, engine, 1)
    ok(m, "tk", "cache_set", {"key": "small", "value": "x" * 50})
    refused(m, "tk", "cache_set", {"key": "big", "value": "x" * 200}, "cache_set",
            "larger than")
    assert ok(m, "tk", "cache_get", {"key": "big"}) is None
    assert ok(m, "tk", "cache_get", {"key": "small"}) == "x" * 50  # not evicted by it


# -- http_request ---------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpServer:
    port: int
    seen: list[Seen] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    """A local server: /hello, /big (4096 bytes), /redirect (302 to /hello), POST /echo."""
    state = HttpServer(port=0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _record(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            state.seen.append(Seen(self.command, self.path,
                                   {k.lower(): v for k, v in self.headers.items()}, body))
            return body

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None
                  ) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._record()
            if self.path == "/hello":
                self._send(200, b"hello world", {"X-Test": "yes",
                                                 "Content-Type": "text/plain; charset=utf-8"})
            elif self.path == "/big":
                self._send(200, b"x" * 4096)
            elif self.path == "/redirect":
                self._send(302, b"moved", {"Location": "/hello"})
            else:
                self._send(404, b"not found")

        def do_POST(self) -> None:
            body = self._record()
            self._send(201, b"got:" + body, {"Content-Type": "text/plain"})

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx honours *_PROXY variables; the local server must be reached directly."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def web(plugins: Path, engine: WasmEngine, hosts: MakeHost, no_proxy: None) -> Manager:
    """"tk" with http, allowed_hosts [127.0.0.1]; "none" with http and no allowed_hosts."""
    wasm(plugins, "tk", ["http"], allowed_hosts=["127.0.0.1"])
    wasm(plugins, "none", ["http"])
    m = hosts(http_max_bytes=1000)
    load(m, plugins, engine, 2)
    return m


def test_http_get_to_an_allowed_host(web: Manager, http_server: HttpServer) -> None:
    resp = ok(web, "tk", "http_request", {"method": "GET", "url": http_server.url("/hello"),
                                          "headers": {"X-Req": "from-plugin"}})
    assert resp["status"] == 200
    assert resp["body"] == "hello world"
    headers = {k.lower(): v for k, v in resp["headers"].items()}
    assert headers["x-test"] == "yes"
    assert headers["content-length"] == "11"
    assert [(s.method, s.path) for s in http_server.seen] == [("GET", "/hello")]
    assert http_server.seen[0].headers["x-req"] == "from-plugin"
    missing = ok(web, "tk", "http_request", {"url": http_server.url("/nope")})  # GET default
    assert (missing["status"], missing["body"]) == (404, "not found")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1@localhost", "127.0.0.2",
                                  "[::1]"])
def test_http_host_not_in_allowed_hosts_is_refused(web: Manager, http_server: HttpServer,
                                                   host: str) -> None:
    refused(web, "tk", "http_request", {"url": http_server.url("/hello", host=host)},
            "http_request", "not in the manifest's allowed_hosts")
    assert http_server.seen == []


def test_http_empty_allowed_hosts_refuses_everything(web: Manager,
                                                     http_server: HttpServer) -> None:
    for url in [http_server.url("/hello"), http_server.url("/hello", host="localhost")]:
        refused(web, "none", "http_request", {"url": url}, "http_request", "allowed_hosts")
    assert http_server.seen == []


def test_http_response_bigger_than_the_cap_is_refused(web: Manager,
                                                      http_server: HttpServer) -> None:
    refused(web, "tk", "http_request", {"url": http_server.url("/big")}, "http_request",
            "larger than 1000 bytes")
    assert ok(web, "tk", "http_request", {"url": http_server.url("/hello")})["status"] == 200


def test_http_redirect_is_returned_not_followed(web: Manager, http_server: HttpServer) -> None:
    resp = ok(web, "tk", "http_request", {"url": http_server.url("/redirect")})
    assert resp["status"] == 302
    assert {k.lower(): v for k, v in resp["headers"].items()}["location"] == "/hello"
    assert resp["body"] == "moved"
    assert [s.path for s in http_server.seen] == ["/redirect"]


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1/",
                                 "http:///no-host", "127.0.0.1/x"])
def test_http_non_http_urls_are_refused(web: Manager, http_server: HttpServer, url: str) -> None:
    refused(web, "tk", "http_request", {"url": url}, "http_request", "not an http(s) URL")
    assert http_server.seen == []


def test_http_argument_errors_are_refused(web: Manager, http_server: HttpServer) -> None:
    refused(web, "tk", "http_request", {"method": "GET"}, "http_request", "'url'")
    refused(web, "tk", "http_request", {"url": http_server.url("/hello"),
                                        "headers": {"X-N": 1}}, "http_request", "'headers'")
    refused(web, "tk", "http_request", {"url": http_server.url("/hello"),
                                        "headers": ["X: y"]}, "http_request", "'headers'")
    refused(web, "tk", "http_request", "\"http://127.0.0.1/\"", "http_request", "expected")
    assert http_server.seen == []


def test_http_post_body_reaches_the_server(web: Manager, http_server: HttpServer) -> None:
    resp = ok(web, "tk", "http_request", {"method": "POST", "url": http_server.url("/echo"),
                                          "headers": {"Content-Type": "text/plain"},
                                          "body": "payload-123 é"})
    assert (resp["status"], resp["body"]) == (201, "got:payload-123 é")
    assert http_server.seen[-1].method == "POST"
    assert http_server.seen[-1].body == "payload-123 é".encode()
    assert http_server.seen[-1].headers["content-type"] == "text/plain"
    # A JSON (non-string) body is sent as its JSON text.
    ok(web, "tk", "http_request", {"method": "post", "url": http_server.url("/echo"),
                                   "body": {"a": [1, 2]}})
    assert json.loads(http_server.seen[-1].body) == {"a": [1, 2]}


# -- send_email -----------------------------------------------------------------------


@pytest.fixture
def mailer(plugins: Path, engine: WasmEngine, hosts: MakeHost,
           smtp_server: tuple[int, SmtpCollector]) -> Manager:
    wasm(plugins, "mailer", ["email"])
    m = hosts(smtp=SMTPSettings(host="127.0.0.1", port=smtp_server[0],
                                sender="host@example.com", timeout=5.0))
    load(m, plugins, engine, 1)
    return m


def test_send_email_arrives_with_the_plugin_header(mailer: Manager,
                                                   smtp_server: tuple[int, SmtpCollector]) -> None:
    _, inbox = smtp_server
    assert ok(mailer, "mailer", "send_email", {"to": "alice@example.com", "subject": "Report",
                                               "body": "All good.\nLine two."}) == {"sent": True}
    assert len(inbox.received) == 1
    env = inbox.received[0]
    assert env.mail_from == "host@example.com"
    assert env.rcpt_tos == ["alice@example.com"]
    msg = env.message
    assert msg["Subject"] == "Report"
    assert msg["To"] == "alice@example.com"
    assert msg["From"] == "host@example.com"
    assert msg["X-Plughost-Plugin"] == "mailer"
    body = msg.get_body(("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == "All good.\nLine two.\n"
    ok(mailer, "mailer", "send_email", {"to": ["b@example.com", "c@example.com"],
                                        "subject": "Two", "body": "x", "html": "<b>x</b>"})
    env2 = inbox.received[1]
    assert sorted(env2.rcpt_tos) == ["b@example.com", "c@example.com"]
    html = env2.message.get_body(("html",))
    assert html is not None and "<b>x</b>" in html.get_content()


def test_send_email_without_smtp_configured_is_refused(plugins: Path, engine: WasmEngine,
                                                       hosts: MakeHost) -> None:
    wasm(plugins, "mailer", ["email"])
    m = hosts()
    load(m, plugins, engine, 1)
    refused(m, "mailer", "send_email", {"to": "a@example.com", "subject": "s", "body": "b"},
            "send_email", "no SMTP server is configured")


@pytest.mark.parametrize("to", ["nobody", [], ["a@example.com", 5], None, {"a": "b@c.d"}],
                         ids=["no-at", "empty", "non-string", "missing", "object"])
def test_send_email_invalid_to_is_refused(mailer: Manager, smtp_server: tuple[int, SmtpCollector],
                                          to: Any) -> None:
    args: dict[str, Any] = {"subject": "s", "body": "b"}
    if to is not None:
        args["to"] = to
    refused(mailer, "mailer", "send_email", args, "send_email", "'to'")
    assert smtp_server[1].received == []


def test_send_email_header_injection_is_refused(
        mailer: Manager, smtp_server: tuple[int, SmtpCollector]) -> None:
    for args in [{"to": "a@example.com", "subject": "Hi\r\nBcc: evil@example.com", "body": "b"},
                 {"to": "a@example.com\r\nBcc: evil@example.com", "subject": "s", "body": "b"},
                 {"to": "a@example.com", "subject": "Hi\nX-Plughost-Plugin: other",
                  "body": "b"}]:
        # refused either by the address check or by the email library's header check
        refused(mailer, "mailer", "send_email", args, "send_email", "send_email")
    assert smtp_server[1].received == []


# -- log / config_get / translate ------------------------------------------------------


def test_log_writes_the_plugin_log_at_the_right_level(plugins: Path, engine: WasmEngine,
                                                      hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["log"])
    m = hosts()
    load(m, plugins, engine, 1)
    for level, message in [("debug", "d1"), ("info", "i1"), ("warn", "w1"),
                           ("warning", "w2"), ("error", "e1"), ("ERROR", "e2"), (0, "d2"),
                           (1, "i2"), (2, "w3"), (3, "e3")]:
        assert ok(m, "tk", "log", {"level": level, "message": message}) is None
    ok(m, "tk", "log", {"message": "default-level"})
    assert plugin_records(m, "tk") == [
        ("debug", "d1"), ("info", "i1"), ("warning", "w1"), ("warning", "w2"),
        ("error", "e1"), ("error", "e2"), ("debug", "d2"), ("info", "i2"), ("warning", "w3"),
        ("error", "e3"), ("info", "default-level")]
    refused(m, "tk", "log", {"level": "loud", "message": "x"}, "log", "unknown level")
    refused(m, "tk", "log", {"level": "info"}, "log", "message")
    refused(m, "tk", "log", {"level": "info", "message": 5}, "log", "message")
    assert len(plugin_records(m, "tk")) == 11


def test_config_get(plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["config"], config={"k": "v", "n": 3, "deep": {"a": [1, None]}})
    wasm(plugins, "other", ["config"], config={"k": "other's"})
    m = hosts()
    load(m, plugins, engine, 2)
    assert ok(m, "tk", "config_get", {"key": "k"}) == "v"
    assert ok(m, "tk", "config_get", {"key": "n"}) == 3
    assert ok(m, "tk", "config_get", {"key": "deep"}) == {"a": [1, None]}
    assert ok(m, "tk", "config_get", {"key": "absent"}) is None
    assert ok(m, "other", "config_get", {"key": "k"}) == "other's"  # its own config
    refused(m, "tk", "config_get", {"key": ""}, "config_get", "'key'")
    refused(m, "tk", "config_get", {}, "config_get", "'key'")
    refused(m, "tk", "config_get", ["k"], "config_get", "expected")


I18N = {"en": {"hi": "hello", "greet": "Hello {name}, you have {n} new messages",
               "only_en": "english only"},
        "de": {"hi": "hallo", "greet": "Hallo {name}"}}


def write_i18n_plugin(plugins: Path, name: str, permissions: list[str]) -> None:
    """testkit with a richer registration i18n (the testkit has only en.hi)."""
    text = (WAT / "testkit.wat").read_text()
    old = '\\"i18n\\":{\\"en\\":{\\"hi\\":\\"hello\\"}}'
    assert old in text
    new = '\\"i18n\\":' + json.dumps(I18N, separators=(",", ":")).replace('"', '\\"')
    module = wasmtime.wat2wasm(text.replace(old, new).replace("__NAME__", name)
                               .replace("__VERSION__", "1.0.0"))
    pdir = plugins / name
    pdir.mkdir(parents=True)
    (pdir / f"{name}.wasm").write_bytes(module)
    (pdir / "plugin.yaml").write_text(yaml.safe_dump(
        {"name": name, "version": "1.0.0", "runtime": "wasm", "permissions": permissions}))


@pytest.fixture
def i18n(plugins: Path, engine: WasmEngine, hosts: MakeHost) -> Manager:
    write_i18n_plugin(plugins, "words", [])  # translate needs no permission
    wasm(plugins, "tk", [])
    m = hosts()
    load(m, plugins, engine, 2)
    return m


def test_translate_known_key_and_fallback_to_the_key(i18n: Manager) -> None:
    assert ok(i18n, "tk", "translate", {"key": "hi"}) == "hello"  # testkit's own table
    assert ok(i18n, "tk", "translate", {"key": "hi", "lang": "en"}) == "hello"
    assert ok(i18n, "tk", "translate", {"key": "missing.key"}) == "missing.key"
    assert ok(i18n, "words", "translate", {"key": "hi", "lang": "de"}) == "hallo"
    assert ok(i18n, "words", "translate", {"key": "nope", "lang": "de"}) == "nope"


def test_translate_language_fallback(i18n: Manager) -> None:
    assert ok(i18n, "tk", "translate", {"key": "hi", "lang": "en-GB"}) == "hello"
    assert ok(i18n, "words", "translate", {"key": "hi", "lang": "de-AT"}) == "hallo"
    assert ok(i18n, "words", "translate", {"key": "hi", "lang": "fr"}) == "hello"
    assert ok(i18n, "words", "translate", {"key": "only_en", "lang": "de"}) == "english only"


def test_translate_fills_placeholders(i18n: Manager) -> None:
    assert ok(i18n, "words", "translate", {"key": "greet", "args": {"name": "Ann", "n": 3}}
              ) == "Hello Ann, you have 3 new messages"
    assert ok(i18n, "words", "translate", {"key": "greet", "lang": "de-CH",
                                           "args": {"name": "Ann"}}) == "Hallo Ann"
    # A missing value leaves its placeholder; format() features are not exposed.
    assert ok(i18n, "words", "translate", {"key": "greet", "args": {"name": "Ann"}}
              ) == "Hello Ann, you have {n} new messages"
    assert ok(i18n, "tk", "translate", {"key": "Hi {name}!", "args": {"name": "Bob"}}
              ) == "Hi Bob!"
    assert ok(i18n, "tk", "translate", {"key": "{x.__class__}", "args": {"x": 1}}
              ) == "{x.__class__}"


def test_translate_argument_errors_are_refused(i18n: Manager) -> None:
    refused(i18n, "tk", "translate", {"lang": "en"}, "translate", "'key'")
    refused(i18n, "tk", "translate", {"key": "hi", "lang": 5}, "translate", "'lang'")
    refused(i18n, "tk", "translate", {"key": "hi", "args": ["x"]}, "translate", "'args'")


def test_translate_values_are_not_substituted_again(i18n: Manager) -> None:
    assert ok(i18n, "tk", "translate", {"key": "{a}{b}", "args": {"a": "{b}", "b": "{a}"}}
              ) == "{b}{a}"


def test_translate_text_with_a_lone_brace_falls_back_to_the_key(i18n: Manager) -> None:
    assert ok(i18n, "tk", "translate", {"key": "50% {off"}) == "50% {off"


# -- plugin_call (wasm) -----------------------------------------------------------------


def call_args(plugin: str, function: str, args: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"plugin": plugin, "function": function}
    if args is not None:
        out["args"] = args
    return out


def test_plugin_call_wasm_to_wasm(plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "a", ["plugin.call"])
    wasm(plugins, "b", [])
    m = hosts()
    load(m, plugins, engine, 2)
    assert ok(m, "a", "plugin_call", call_args("b", "echo", {"x": [1, "two"]})) == {
        "x": [1, "two"]}
    assert m.call("b", "count") == 1
    assert ok(m, "a", "plugin_call", call_args("b", "count")) == 2  # b's own instance
    assert m.call("b", "count") == 3
    assert ok(m, "a", "plugin_call", call_args("b", "nothing")) is None


@pytest.mark.parametrize("instances", [1, 4])
def test_plugin_call_to_itself_is_a_refused_cycle(plugins: Path, engine: WasmEngine,
                                                  hosts: MakeHost, instances: int) -> None:
    """One rule for every size of pool: a plugin is entered once per call path (with one
    instance the inner call would wait on itself; with four it would not, and is still
    refused, so the rule does not depend on the runtime)."""
    wasm(plugins, "a", ["plugin.call"],
         resources={"call_timeout_ms": 5000, "max_instances": instances})
    m = hosts()
    load(m, plugins, engine, 1)
    kinds: list[str] = []
    m.add_listener(lambda event: kinds.append(event.kind))
    refused(m, "a", "plugin_call", call_args("a", "count"), "plugin_call a.count failed",
            "CallCycle", "cycle refused (a -> a)")
    assert m.call("a", "count") == 1  # it never ran
    # refused before the target was touched: not a failed call of `a`
    assert "call_error" not in kinds


def test_a_host_function_calling_back_into_its_plugin_is_refused(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    """The rule lives in the call chain, not in plugin_call: an application's own host
    function that calls the manager is held to it too."""
    wasm(plugins, "a", [], resources={"max_instances": 4})
    m = hosts()
    seen: list[str] = []

    def callback(ctx: HostContext, args: Any) -> Any:
        try:
            return m.call(args["plugin"], "count")
        except CallCycle as exc:
            seen.append(exc.message)
            raise

    m.host.register("callback", callback, permission=None)
    load(m, plugins, engine, 1)
    assert raw_call(m, "a", "callback", {"plugin": "a"}) is None
    assert seen == ["cycle refused (a -> a): a plugin is entered at most once on one call "
                    "path"]
    assert m.call("a", "count") == 1


def test_a_load_is_on_the_call_path_so_init_cannot_call_back_into_it(
        plugins: Path, hosts: MakeHost) -> None:
    """x's Init calls y, which loads lazily and whose Init calls x, still loading: refused
    at once with the whole path (x's load lock is held by another thread, so without the
    rule y's Init would wait until x's start timeout). A plugin whose Init calls itself is
    the one-plugin case."""
    back = call_args("x", "relay")
    relay(plugins, "x", ["plugin.call"], resources={"start_timeout_ms": 20000},
          config={"init_call": call_args("y", "relay")})
    relay(plugins, "y", ["plugin.call"], config={"init_call": back})
    relay(plugins, "selfish", ["plugin.call"],
          config={"init_call": call_args("selfish", "relay")})
    m = hosts()
    loader = Loader(plugins, m, lazy=True)
    loader.discover_all()
    with pytest.raises(PluginLoadError) as caught:  # the first call gets the load's error
        m.call("x", "relay", {"call": call_args("y", "relay")})
    assert "cycle refused (x -> y -> x)" in caught.value.message
    assert "cycle refused (x -> y -> x)" in str(loader.load_failure("y"))
    with pytest.raises(PluginLoadError, match=r"cycle refused \(selfish -> selfish\)"):
        m.call("selfish", "relay", {})
    assert m.names() == []  # nothing half-loaded stays registered


def test_plugin_call_to_a_disabled_unknown_or_failing_target_is_refused(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "a", ["plugin.call"])
    wasm(plugins, "b", [])
    m = hosts()
    load(m, plugins, engine, 2)
    m.disable("b")
    refused(m, "a", "plugin_call", call_args("b", "count"), "plugin_call", "PluginDisabled",
            "disabled")
    m.enable("b")
    refused(m, "a", "plugin_call", call_args("ghost", "count"), "plugin_call",
            "PluginNotFound", "ghost")
    refused(m, "a", "plugin_call", call_args("b", "fail"), "plugin_call", "asked to fail")
    refused(m, "a", "plugin_call", {"plugin": "b"}, "plugin_call", "'function'")
    refused(m, "a", "plugin_call", {"function": "count"}, "plugin_call", "'plugin'")
    assert ok(m, "a", "plugin_call", call_args("b", "count")) == 1


def test_plugin_call_depth_limit_in_process(plugins: Path, engine: WasmEngine,
                                            hosts: MakeHost) -> None:
    wasm(plugins, "a", ["plugin.call"])
    wasm(plugins, "b", [])
    m = hosts(max_call_depth=1)
    load(m, plugins, engine, 2)
    refused(m, "a", "plugin_call", call_args("b", "count"), "plugin_call", "depth",
            "limit of 1")
    assert m.call("b", "count") == 1


# -- plugin_call across processes (wasm <-> grpc) ---------------------------------------


def test_plugin_call_chain_wasm_grpc_wasm_and_cycle_through_grpc(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "a", ["plugin.call"], resources={"call_timeout_ms": 15000})
    wasm(plugins, "b", [])
    relay(plugins, "relay", ["plugin.call"])
    m = hosts()
    load(m, plugins, engine, 3)
    inner = call_args("b", "echo", {"deep": True})
    assert ok(m, "a", "plugin_call", call_args("relay", "relay", {"call": inner})) == {
        "deep": True}
    # relay calling back the plugin that called it: the host finds the chain a -> relay
    # for relay's HostCall (the call id crossed the process boundary) and refuses.
    back = call_args("a", "count")
    refused(m, "a", "plugin_call", call_args("relay", "relay", {"call": back}),
            "plugin_call relay.relay failed", "cycle")
    assert any("cycle refused" in r and "a -> relay -> a" in r for r in refusals(m, "relay"))
    assert m.call("a", "count") == 1  # a was never re-entered
    # grpc first: relay -> b works, relay -> relay is a cycle
    assert m.call("relay", "relay", {"call": inner}) == {"deep": True}
    with pytest.raises(PluginCallError, match="cycle"):
        m.call("relay", "relay", {"call": call_args("relay", "relay", {"call": inner})})


def test_plugin_call_depth_limit_across_processes_uses_the_call_id(
        plugins: Path, engine: WasmEngine, hosts: MakeHost, tmp_path: Path) -> None:
    wasm(plugins, "x", ["plugin.call"], resources={"call_timeout_ms": 25000})
    wasm(plugins, "y", [])
    relay(plugins, "relay", ["plugin.call"])
    m = hosts(max_call_depth=2)
    load(m, plugins, engine, 3)
    to_y = call_args("y", "echo", {"v": 1})
    # x -> relay -> y is three plugins deep: refused in relay's (out-of-process) host call.
    refused(m, "x", "plugin_call", call_args("relay", "relay", {"call": to_y}),
            "plugin_call relay.relay failed", "depth")
    assert any("limit of 2" in r and "x -> relay" in r for r in refusals(m, "relay"))
    # relay -> y is two deep: allowed.
    assert m.call("relay", "relay", {"call": to_y}) == {"v": 1}
    # While x -> relay is in flight (a longer chain into relay), a direct relay -> y call is
    # still judged by its own chain: the host tells the two apart by the forwarded call id.
    marker, go = tmp_path / "waiting", tmp_path / "go"
    results: list[Any] = []
    t = threading.Thread(target=lambda: results.append(ok(
        m, "x", "plugin_call", call_args("relay", "wait", {"marker": str(marker),
                                                           "go": str(go)}))))
    t.start()
    try:
        wait_until(marker.exists, timeout=10)
        assert m.call("relay", "relay", {"call": to_y}) == {"v": 1}
    finally:
        go.write_text("go")
        t.join(30)
    assert results == ["done"]


# -- the Host gRPC service enforces the same permissions ----------------------------------


def test_grpc_host_service_enforces_permissions(plugins: Path, engine: WasmEngine,
                                                hosts: MakeHost) -> None:
    # Both registrations ask for [plugin.call, config]; the manifest is the grant.
    relay(plugins, "nocfg", ["plugin.call"], config={"k": "secret"})
    relay(plugins, "withcfg", ["config"], config={"k": "v", "n": {"a": 1}})
    m = hosts()
    load(m, plugins, engine, 2)
    denied = m.call("nocfg", "config", {"key": "k"})
    assert set(denied) == {"error"}
    assert "permission" in denied["error"] and "'config'" in denied["error"]
    assert "secret" not in denied["error"]
    assert any("permission" in r and "config_get" in r for r in refusals(m, "nocfg"))
    assert m.call("withcfg", "config", {"key": "k"}) == {"value": "v"}
    assert m.call("withcfg", "config", {"key": "n"}) == {"value": {"a": 1}}
    assert m.call("withcfg", "config", {"key": "absent"}) == {"value": None}
    # Argument validation and other permissions: the same table as wasm.
    bad = m.call("withcfg", "host", {"function": "config_get", "args": {"key": 5}})
    assert "'key' must be a non-empty string" in bad["error"]
    http = m.call("withcfg", "host", {"function": "http_request",
                                      "args": {"url": "http://127.0.0.1:9/"}})
    assert "permission" in http["error"] and "'http'" in http["error"]
    assert m.call("withcfg", "host", {"function": "translate", "args": {"key": "k"}}) == {
        "result": "k"}


# -- HostAPI: an application's own backends ----------------------------------------------


class RecordingBackend:
    """An application backend: an in-memory "database" and cache that record every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.rows: list[dict[str, Any]] = [{"id": 7, "title": "from the app"}]
        self.cache: dict[tuple[str, str], Any] = {}

    def last(self) -> tuple[Any, ...]:
        return self.calls[-1]

    def db_query(self, plugin: str, query: str, args: list[Any]) -> list[dict[str, Any]]:
        self.calls.append(("db_query", plugin, query, args))
        return [r for r in self.rows if not args or r["id"] == args[0]]

    def db_exec(self, plugin: str, query: str, args: list[Any]) -> dict[str, Any]:
        self.calls.append(("db_exec", plugin, query, args))
        self.rows.append({"id": args[0], "title": args[1]})
        return {"rows_affected": 1, "last_insert_id": args[0]}

    def cache_get(self, plugin: str, key: str) -> Any:
        self.calls.append(("cache_get", plugin, key, None))
        return self.cache.get((plugin, key))

    def cache_set(self, plugin: str, key: str, value: Any, ttl: float | None) -> None:
        self.calls.append(("cache_set", plugin, key, ttl))
        self.cache[(plugin, key)] = value

    def cache_delete(self, plugin: str, key: str) -> bool:
        self.calls.append(("cache_delete", plugin, key, None))
        return self.cache.pop((plugin, key), None) is not None

    def http_request(self, plugin: str, allowed_hosts: tuple[str, ...], method: str, url: str,
                     headers: dict[str, str], body: str | None, timeout: float | None
                     ) -> dict[str, Any]:
        self.calls.append(("http_request", plugin, url, allowed_hosts))
        return {"status": 204, "headers": {}, "body": ""}

    def send_email(self, plugin: str, to: list[str], subject: str, body: str,
                   html: str | None) -> None:
        self.calls.append(("send_email", plugin, to, subject))


def test_hostapi_backend_is_what_the_host_functions_reach(
        plugins: Path, engine: WasmEngine, hosts: MakeHost, tmp_path: Path) -> None:
    backend = RecordingBackend()
    wasm(plugins, "tk", ["db.read", "db.write", "cache", "email"])
    wasm(plugins, "nodb", ["cache"])
    m = hosts(host=backend)
    load(m, plugins, engine, 2)
    assert ok(m, "tk", "db_query", {"query": "SELECT * FROM notes WHERE id = ?",
                                    "args": [7]}) == [{"id": 7, "title": "from the app"}]
    assert backend.calls == [("db_query", "tk", "SELECT * FROM notes WHERE id = ?", [7])]
    assert ok(m, "tk", "db_exec", {"query": "INSERT INTO notes VALUES (?, ?)",
                                   "args": [8, "new"]}) == {"rows_affected": 1,
                                                            "last_insert_id": 8}
    assert backend.last() == ("db_exec", "tk", "INSERT INTO notes VALUES (?, ?)",
                                 [8, "new"])
    ok(m, "tk", "cache_set", {"key": "k", "value": {"v": 1}, "ttl": 5})
    assert backend.last() == ("cache_set", "tk", "k", 5)
    assert ok(m, "nodb", "cache_get", {"key": "k"}) is None  # the backend got nodb's name
    assert backend.last() == ("cache_get", "nodb", "k", None)
    assert ok(m, "tk", "cache_get", {"key": "k"}) == {"v": 1}
    ok(m, "tk", "send_email", {"to": "a@example.com", "subject": "s", "body": "b"})
    assert backend.last() == ("send_email", "tk", ["a@example.com"], "s")
    # Permissions are checked before a backend is reached.
    n = len(backend.calls)
    refused(m, "nodb", "db_query", {"query": "SELECT 1"}, "permission", "'db.read'")
    assert len(backend.calls) == n
    assert not (tmp_path / "data" / "db").exists()  # the default SQLite backend was not used


def test_hostapi_backend_only_gets_validated_db_args(plugins: Path, engine: WasmEngine,
                                                     hosts: MakeHost) -> None:
    backend = RecordingBackend()
    wasm(plugins, "tk", ["db.read"])
    m = hosts(host=backend)
    load(m, plugins, engine, 1)
    raw_call(m, "tk", "db_query", {"query": "SELECT 1", "args": "not a list"})
    raw_call(m, "tk", "db_query", {"query": "SELECT 1", "args": [{"nested": [1]}]})
    assert backend.calls == []


def test_plugin_call_inherits_the_callers_deadline(plugins: Path, engine: WasmEngine,
                                                   tmp_path: Path) -> None:
    """A 300 ms call that calls a plugin allowed 30 s must not wait 30 s: the nested call
    gets what is left of the caller's deadline (no wall-clock assertion: the callee's
    timeout error states the budget it was given)."""
    write_plugin_dir(plugins, "a", {"permissions": ["plugin.call"],
                                    "resources": {"call_timeout_ms": 300}})
    write_plugin_dir(plugins, "b", {"resources": {"call_timeout_ms": 30_000}})
    m = Manager(settings=HostSettings(data_dir=tmp_path / "data"))
    try:
        Loader(plugins, m, engine=engine).load_all()
        with pytest.raises(PluginTimeout):
            m.call_raw("a", "host", b'plugin_call|{"plugin": "b", "function": "loop"}')
        refusal = next(r.message for r in m.log_for("a").records()
                       if "plugin_call b.loop failed" in r.message)
        budget = int(re.search(r"deadline of (\d+) ms", refusal)[1])  # type: ignore[index]
        assert budget <= 300
    finally:
        m.close()


# -- time_now (GoatFlow's) -----------------------------------------------------------------


@pytest.mark.parametrize(("ns", "offset", "text"), [
    (0, 0, "1970-01-01T00:00:00Z"),
    (1_500_000_000, 0, "1970-01-01T00:00:01.5Z"),
    (123, 3600, "1970-01-01T01:00:00.000000123+01:00"),
    (1_764_806_400_000_000_010, -(5 * 3600 + 30 * 60), "2025-12-03T18:30:00.00000001-05:30"),
])
def test_go_rfc3339_nano_is_formatted_as_go_formats_it(ns: int, offset: int, text: str
                                                       ) -> None:
    assert go_rfc3339_nano(ns, offset) == text


def _go_time_ns(text: str) -> int:
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)",
                     text)
    assert m is not None, text
    zone = "+00:00" if m[3] == "Z" else m[3]
    whole = datetime.datetime.fromisoformat(m[1] + zone)
    return int(whole.timestamp()) * 1_000_000_000 + int((m[2] or "0").ljust(9, "0"))


def test_time_now_in_both_runtimes_needs_no_permission(plugins: Path, engine: WasmEngine,
                                                       hosts: MakeHost) -> None:
    wasm(plugins, "a", [])
    relay(plugins, "relay", [])
    m = hosts()
    load(m, plugins, engine, 2)
    before = time.time_ns()
    from_wasm = ok(m, "a", "time_now", "")
    from_grpc = m.call("relay", "host", {"function": "time_now"})
    after = time.time_ns()
    assert set(from_wasm) == {"now"} and set(from_grpc) == {"result"}
    for text in (from_wasm["now"], from_grpc["result"]["now"]):
        assert before <= _go_time_ns(text) <= after
