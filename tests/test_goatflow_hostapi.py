"""GoatFlow's host API, byte for byte, through both runtimes.

The wasm side is the corpus's test-hostapi plugin (Go for wasip1, tests/fixtures/goatflow):
its `host` function makes one host call and returns the host's answer unchanged. The gRPC
side is raw_plugin.py (only the protocol, no SDK), whose `hostcall` does the same. Both
declare GoatFlow's permission objects (test-hostapi in its registration, the gRPC plugin
in plugin.yaml), so each answer and each refusal below is checked against the same bytes.
The stats plugin then runs its real queries on a real SQLite database and mails its report
over a real SMTP server.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from plughost import Loader, Manager
from plughost.errors import PluginCallError
from plughost.host import HostSettings
from plughost.host.mail import SMTPSettings
from plughost.lifecycle import Event
from plughost.runtimes.wasm import WasmEngine

from .conftest import SmtpCollector, write_wasm

CORPUS = Path(__file__).parent / "fixtures" / "goatflow" / "plugins"
GRPC = Path(__file__).parent / "fixtures" / "grpc"

#: test-hostapi's own declaration, given to the gRPC plugin in its plugin.yaml
PERMISSIONS = [
    {"type": "db", "access": "readwrite", "scope": ["test"]},
    {"type": "cache", "access": "readwrite"},
    {"type": "http", "scope": ["example.com"]},
    {"type": "email", "scope": ["@example.com"]},
    {"type": "config", "access": "read", "scope": ["app.name"]},
    {"type": "plugin_call", "scope": ["other"]},
]
WASM, GRPC_NAME = "test-hostapi", "rawgf"


class Web:
    """A local HTTP server: GET /hello says hello, POST /echo sends the body back."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._send(b"hello" if self.path == "/hello" else b"?")

            def do_POST(self) -> None:
                self._send(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def web() -> Iterator[Web]:
    w = Web()
    yield w
    w.close()


class Both:
    """One manager with test-hostapi (wasm), rawgf (grpc) and a plain `other` plugin."""

    def __init__(self, manager: Manager, events: list[Event], data: Path) -> None:
        self.manager = manager
        self.events = events
        self.data = data

    def wasm(self, fn: str, args: Any = None, **envelope: Any) -> bytes | None:
        req: dict[str, Any] = {"fn": fn, **envelope}
        if args is not None:
            req["args"] = args
        raw = self.manager.call_raw(WASM, "host", json.dumps(req).encode())
        return None if raw == b'{"host_error":true}' else raw

    def grpc(self, fn: str, args: Any = None, **envelope: Any) -> bytes | None:
        req = {"function": fn, "args": {} if args is None else args, **envelope}
        try:
            return self.manager.call_raw(GRPC_NAME, "hostcall", json.dumps(req).encode())
        except PluginCallError as exc:
            assert "host refused: " in str(exc), exc
            return None

    def both(self, fn: str, args: Any = None, **envelope: Any) -> bytes | None:
        """The answer, which must be the same bytes from both runtimes."""
        w, g = self.wasm(fn, args, **envelope), self.grpc(fn, args, **envelope)
        assert w == g, (fn, w, g)
        return w

    def refusal(self, fn: str, args: Any, cause: str, **envelope: Any) -> None:
        """Refused in both: 0 to the guest / the error to the gRPC plugin, and the log line
        GoatFlow writes."""
        assert self.both(fn, args, **envelope) is None
        for name in (WASM, GRPC_NAME):
            line = f'host_call {fn} failed: plugin "{name}": {cause}'
            assert line in [r.message for r in self.manager.log_for(name).records()
                            if r.level == "error"], (name, line)


@pytest.fixture
def both(plugins: Path, tmp_path: Path, engine: WasmEngine, web: Web,
         smtp_server: tuple[int, SmtpCollector]) -> Iterator[Both]:
    shutil.copytree(CORPUS / "test-hostapi-wasm", plugins / "test-hostapi-wasm")
    shutil.copytree(CORPUS / "hello-wasm", plugins / "hello-wasm")  # for its translations
    pdir = plugins / GRPC_NAME
    pdir.mkdir()
    shutil.copy(GRPC / "raw_plugin.py", pdir / "raw_plugin.py")
    (pdir / "plugin.yaml").write_text(yaml.safe_dump({
        "name": GRPC_NAME, "runtime": "grpc", "binary": "raw_plugin.py",
        "resources": {"permissions": PERMISSIONS, "call_timeout": "10s"}}))
    # raw_plugin registers as "raw": rename it in its copy
    text = (pdir / "raw_plugin.py").read_text()
    (pdir / "raw_plugin.py").write_text(text.replace('"name": "raw"', f'"name": "{GRPC_NAME}"'))
    write_wasm(plugins, "other")
    # The operator lets both reach the local test server and use file storage.
    widen = {"grant": [{"type": "http", "scope": ["127.0.0.1"]},
                       {"type": "file", "access": "readwrite"}]}
    settings = HostSettings(data_dir=tmp_path / "data", smtp=SMTPSettings(
        host="127.0.0.1", port=smtp_server[0], sender="host@example.com"))
    manager = Manager(settings=settings, drain_timeout=10.0,
                      policies={WASM: widen, GRPC_NAME: widen})
    events: list[Event] = []
    manager.add_listener(events.append)
    loader = Loader(plugins, manager, engine=engine)
    try:
        assert loader.load_all() == (4, [])
        yield Both(manager, events, tmp_path / "data")
    finally:
        loader.close()
        manager.close()


def test_database_functions(both: Both) -> None:
    # each plugin has its own database file: the table is made in both
    assert both.both("db_exec", {"query": "CREATE TABLE test (x INTEGER, t TEXT, b BLOB)"}) \
        == b'{"affected":0}'
    assert both.both("db_exec", {"query": "INSERT INTO test VALUES (?, ?, ?)",
                                 "args": [1, "<a&b>", None]}) == b'{"affected":1}'
    # Rows with Go's key order and escapes; none is null (Go's nil slice), not []
    assert both.both("db_query", {"query": "SELECT x, t, b FROM test"}) == (
        b'[{"b":null,"t":"\\u003ca\\u0026b\\u003e","x":1}]')
    assert both.both("db_query", {"query": "SELECT x FROM test WHERE x > ?", "args": [5]}) \
        == b"null"
    assert both.both("db_query", {"query": "SELECT 1 AS one"}) == b'[{"one":1}]'
    assert both.both("db_query", {"query": "@default:SELECT count(*) AS n FROM test"}) == \
        b'[{"n":1}]'
    both.refusal("db_query", {"query": "@reports:SELECT 1"}, 'database "reports" not found')
    both.refusal("db_exec", {"query": "CREATE TABLE secrets (x)"},
                 'write access to table "secrets" not permitted')
    for name in (WASM, GRPC_NAME):  # a table the operator made, outside their scope
        with sqlite3.connect(both.data / "db" / f"{name}.sqlite3") as db:
            db.execute("CREATE TABLE secrets (x)")
    both.refusal("db_query", {"query": "SELECT count(*) FROM sqlite_master m JOIN secrets s"},
                 'access to table "secrets" not permitted')
    both.refusal("db_query", {"query": "WITH test AS (SELECT * FROM secrets) SELECT * FROM test"},
                 'access to table "secrets" not permitted')  # a CTE named like a granted
    # table does not hide what it reads


def test_cache_functions(both: Both) -> None:
    assert both.both("cache_get", {"key": "k"}) == b'{"found":false,"value":null}'
    assert both.both("cache_set", {"key": "k", "value": "aGVsbG8=", "ttl": 60}) == b'{"ok":true}'
    assert both.wasm("cache_get", {"key": "k"}) == b'{"found":true,"value":"aGVsbG8="}'
    # each plugin has its own keys: the gRPC plugin set k too, wasm's is untouched
    assert both.grpc("cache_set", {"key": "k", "value": "AAE="}) == b'{"ok":true}'
    assert both.wasm("cache_get", {"key": "k"}) == b'{"found":true,"value":"aGVsbG8="}'
    assert both.grpc("cache_get", {"key": "k"}) == b'{"found":true,"value":"AAE="}'
    assert both.both("cache_delete", {"key": "k"}) == b'{"ok":true}'
    assert both.both("cache_get", {"key": "k"}) == b'{"found":false,"value":null}'
    both.refusal("cache_set", {"key": "k", "value": "not base64!"},
                 "cache_set: 'value' must be standard base64 (a Go []byte)")


def test_http_request(both: Both, web: Web) -> None:
    assert both.both("http_request", {"method": "GET", "url": web.url("/hello")}) \
        == b'{"body":"aGVsbG8=","status":200}'
    assert both.both("http_request", {"method": "POST", "url": web.url("/echo"),
                                      "body": "cGluZw==",
                                      "headers": {"X-T": "1"}}) == \
        b'{"body":"cGluZw==","status":200}'
    both.refusal("http_request", {"url": "http://localhost:1/"},
                 "HTTP access to \"http://localhost:1/\" not permitted (allowed: "
                 "[example.com 127.0.0.1])")


def test_email_config_and_platform_functions(both: Both,
                                             smtp_server: tuple[int, SmtpCollector]) -> None:
    assert both.both("send_email", {"to": "a@example.com", "subject": "s", "body": "b",
                                    "html": False}) == b'{"ok":true}'
    assert [e.rcpt_tos for e in smtp_server[1].received] == [["a@example.com"]] * 2
    both.refusal("send_email", {"to": "a@evil.test", "subject": "s", "body": "b"},
                 'email recipient "a@evil.test" not allowed')
    assert both.both("config_get", {"key": "app.name"}) == b'{"value":"plughost"}'
    both.refusal("config_get", {"key": "app.env"}, 'config key "app.env" access denied')
    assert both.both("log", {"level": "warn", "message": "m"}) == b'{"ok":true}'
    assert both.both("translate", {"key": "no.such.key"}) == b'{"value":"no.such.key"}'
    for now in (both.wasm("time_now"), both.grpc("time_now")):  # two moments: not equal
        assert now is not None and re.fullmatch(
            rb'\{"now":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)"\}',
            now), now
    assert both.both("org_id") == b"0"
    assert both.both("org_id", _org_id=7) == b"7"  # the call's own organisation
    assert both.both("plugin_call", {"plugin": "other", "function": "echo",
                                     "args": {"a": [1, 2]}}) == b'{"a": [1, 2]}'  # as written
    # (the args reach the target as the caller wrote them, and its answer comes back as
    # its bytes: testkit's echo returns its args)
    both.refusal("plugin_call", {"plugin": WASM, "function": "x"},
                 f"not permitted to call plugin \"{WASM}\" (allowed: [other])")
    both.refusal("no_such_function", {}, "unknown host API method: no_such_function")


def test_translate_one_registry_in_the_calls_language(both: Both) -> None:
    """hello-wasm's texts, filed as hello_wasm.<key>, answer every plugin, in the language
    of the call (`_lang`), falling back to the base language, then English, then the key."""
    key = {"key": "hello_wasm.greeting"}
    assert both.both("translate", key) == b'{"value":"Hello from WASM!"}'
    assert both.both("translate", key, _lang="de") == b'{"value":"Hallo aus WASM!"}'
    assert both.both("translate", key, _lang="fr-CA") == b'{"value":"Bonjour depuis WASM !"}'
    assert both.both("translate", key, _lang="it") == b'{"value":"Hello from WASM!"}'
    # the application's own texts, with Go's positional formatting (numbers are float64)
    both.manager.host.translations.install("host", {"namespace": "app", "translations": {
        "en": {"tickets": "%v tickets for %s", "typed": "%d tickets"},
        "de": {"tickets": "%v Tickets für %s"}}})
    args = {"key": "app.tickets", "args": [3, "Ada"]}
    assert both.both("translate", args) == b'{"value":"3 tickets for Ada"}'
    assert both.both("translate", args, _lang="de") == b'{"value":"3 Tickets f\xc3\xbcr Ada"}'
    assert both.both("translate", {"key": "app.typed", "args": [3]}) == \
        b'{"value":"%!d(float64=3) tickets"}'
    assert both.both("translate", {"key": "app.missing", "args": [1]}) == \
        b'{"value":"app.missing"}'  # not found: the key, unformatted
    # testkit's older {lang: {key: text}} shape: filed under its name, and its own keys
    # work without it
    assert both.manager.call("other", "host", b'translate|{"key":"hi"}') == {
        "value": "hello"}
    assert both.wasm("translate", {"key": "other.hi"}) == b'{"value":"hello"}'
    both.manager.unregister("hello-wasm")  # its texts go with it
    assert both.both("translate", key) == b'{"value":"hello_wasm.greeting"}'


def test_events_and_secure_config(both: Both) -> None:
    assert both.both("publish_event", {"channel": "c", "event_type": "t", "data": "d"}) == \
        b'{"status":"ok"}'
    published = [(e.plugin, e.channel, e.event_type, e.detail) for e in both.events
                 if e.kind == "plugin_event"]
    assert published == [(WASM, "c", "t", "d"), (GRPC_NAME, "c", "t", "d")]
    both.refusal("secure_config_get", {"key": "api"}, 'secure config key "api" not found')
    assert both.both("secure_config_set", {"key": "api", "value": "s3cret"}) == \
        b'{"status":"ok"}'
    assert both.both("secure_config_get", {"key": "api"}) == b'{"value":"s3cret"}'
    # per organisation: another org does not see it
    both.refusal("secure_config_get", {"key": "api"}, 'secure config key "api" not found',
                 _org_id=3)


def test_file_storage(both: Both, tmp_path: Path) -> None:
    meta = {"content-type": "text/plain"}
    assert both.both("store_file", {"key": "a/b.txt", "data": "aGk=", "metadata": meta}) == \
        b'{"status":"ok"}'
    got = both.wasm("get_file", {"key": "a/b.txt"})
    assert got is not None and re.fullmatch(
        rb'\{"data":"aGk=","metadata":\{"_modified":"[0-9T:-]+Z","_size":"2",'
        rb'"content-type":"text/plain"\}\}', got)
    listed = both.wasm("list_files", {"prefix": "a/"})
    assert listed is not None and re.fullmatch(
        rb'\[\{"content_type":"text/plain","key":"test-hostapi/a/b.txt","metadata":\{[^}]*\},'
        rb'"modified_at":"[0-9T:-]+Z","size":2\}\]', listed)
    assert both.both("list_files", {"prefix": "zzz"}) == b"null"
    both.refusal("store_file", {"key": "../escape", "data": ""}, "invalid file key: ../escape")
    assert both.both("delete_file", {"key": "a/b.txt"}) == b'{"status":"ok"}'
    assert both.both("list_files", {"prefix": ""}) == b"null"
    files = tmp_path / "data" / "files"
    assert sorted(p.name for p in files.iterdir()) == [GRPC_NAME, WASM]
    # an organisation's files are its own: stored under org-<id>/, invisible and out of
    # reach for a call without an organisation (and for another organisation)
    assert both.both("store_file", {"key": "r.txt", "data": "aGk="}, _org_id=3) == \
        b'{"status":"ok"}'
    assert (files / WASM / "org-3" / "r.txt").read_bytes() == b"hi"
    listed = both.wasm("list_files", {"prefix": ""}, _org_id=3)
    assert listed is not None and b'"key":"test-hostapi/org-3/r.txt"' in listed
    assert both.both("list_files", {"prefix": ""}) == b"null"
    assert both.both("list_files", {"prefix": ""}, _org_id=4) == b"null"
    both.refusal("get_file", {"key": "org-3/r.txt"}, "invalid file key: org-3/r.txt")
    both.refusal("get_file", {"key": "r.txt"}, "file not found: r.txt")


# -- stats: real queries, a real report -------------------------------------------------


def _stats_db(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE ticket_state_type (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE ticket_state (id INTEGER PRIMARY KEY, name TEXT, type_id INTEGER);
        CREATE TABLE queue (id INTEGER PRIMARY KEY, name TEXT, group_id INTEGER);
        CREATE TABLE groups (id INTEGER PRIMARY KEY, name TEXT);
        CREATE TABLE group_user (user_id INTEGER, group_id INTEGER, permission_key TEXT);
        CREATE TABLE users (id INTEGER PRIMARY KEY, login TEXT);
        CREATE TABLE user_preferences (user_id INTEGER, preferences_key TEXT,
                                       preferences_value TEXT);
        CREATE TABLE ticket (id INTEGER PRIMARY KEY, tn TEXT, title TEXT, queue_id INTEGER,
            ticket_state_id INTEGER, ticket_priority_id INTEGER, type_id INTEGER,
            user_id INTEGER, create_time TEXT, change_time TEXT);
        INSERT INTO ticket_state_type VALUES (1, 'new'), (2, 'open'), (3, 'pending reminder'),
            (4, 'closed');
        INSERT INTO ticket_state VALUES (1, 'new', 1), (2, 'open', 2), (3, 'pending', 3),
            (4, 'closed successful', 4);
        INSERT INTO groups VALUES (1, 'admin'), (2, 'support');
        INSERT INTO queue VALUES (1, 'Raw', 2), (2, 'Junk', 1);
        INSERT INTO users VALUES (1, 'root'), (2, 'agent');
        INSERT INTO group_user VALUES (1, 1, 'rw'), (2, 2, 'rw');
        INSERT INTO user_preferences VALUES (1, 'UserEmail', 'root@example.com');
        INSERT INTO ticket VALUES
            (1, '1001', 'a', 1, 1, 3, 1, 1, '2020-01-01 10:00:00', '2020-01-01 10:00:00'),
            (2, '1002', 'b', 1, 2, 3, 1, 1, '2020-01-02 10:00:00', '2020-01-02 10:00:00'),
            (3, '1003', 'c', 2, 3, 3, 1, 1, '2020-01-03 10:00:00', '2020-01-03 10:00:00'),
            (4, '1004', 'd', 2, 4, 3, 1, 1, '2020-01-04 10:00:00', '2020-01-04 10:00:00');
    """)
    db.commit()
    db.close()


def test_stats_computes_from_real_rows_and_mails_its_report(
        plugins: Path, tmp_path: Path, engine: WasmEngine,
        smtp_server: tuple[int, SmtpCollector]) -> None:
    shutil.copytree(CORPUS / "stats", plugins / "stats")
    data = tmp_path / "data"
    _stats_db(data / "db" / "stats.sqlite3")
    settings = HostSettings(data_dir=data, smtp=SMTPSettings(
        host="127.0.0.1", port=smtp_server[0], sender="host@example.com"))
    with Manager(settings=settings, drain_timeout=10.0) as manager:
        loader = Loader(plugins, manager, engine=engine)
        try:
            assert loader.load_all() == (1, [])
            assert manager.call_raw("stats", "overview", b'{"_is_admin":true}') == (
                b'{"total":4,"open":2,"pending":1,"closed":1,"range":"all"}')
            # agent 2 holds rw on group "support", whose queue Raw has tickets 1 and 2
            assert manager.call_raw("stats", "overview", b'{"_user_id":2}') == (
                b'{"total":2,"open":2,"pending":0,"closed":0,"range":"all"}')
            assert manager.call_raw("stats", "overview", b"{}") == (
                b'{"total":0,"open":0,"pending":0,"closed":0,"range":"all"}')
            assert manager.call_raw("stats", "by_status", b'{"_is_admin":"true"}') == (
                b'{"statuses":[{"name":"closed successful","count":1},{"name":"new","count":1},'
                b'{"name":"open","count":1},{"name":"pending","count":1}],"range":"all"}')
            assert manager.call_raw("stats", "report_email", b"{}") == (
                b'{"status":"sent","recipients":1,"failed":0}')
            (sent,) = smtp_server[1].received
            msg = sent.message
            assert sent.rcpt_tos == ["root@example.com"]
            assert msg["Subject"] == "Weekly ticket report"
            html = msg.get_body(preferencelist=("html",))
            assert html is not None and html.get_content().startswith(
                "<h1>Weekly ticket report</h1>")
            grants = manager.grants("stats")
            assert grants is not None and [g["type"] for g in grants.as_list()] == [
                "db", "email"]
            assert grants.unsafe() == ["email to anyone"]
        finally:
            loader.close()


def test_stats_without_its_tables_fails_as_a_query_error_not_zeros(
        plugins: Path, tmp_path: Path, engine: WasmEngine) -> None:
    """An empty database: GoatFlow's "query_failed", and the host says why in the log."""
    shutil.copytree(CORPUS / "stats", plugins / "stats")
    settings = HostSettings(data_dir=tmp_path / "data")
    with Manager(settings=settings, drain_timeout=10.0) as manager:
        loader = Loader(plugins, manager, engine=engine)
        try:
            assert loader.load_all() == (1, [])
            assert manager.call_raw("stats", "overview", b'{"_is_admin":true}') == (
                b'{"error":"query_failed","status":500}')
            assert any(r.message.startswith('host_call db_query failed: plugin "stats": ')
                       and "no such table" in r.message
                       for r in manager.log_for("stats").records())
        finally:
            loader.close()

