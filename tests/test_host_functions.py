"""Host functions end to end: real wasm plugins (testkit's `host` function forwards
`b"<fn>|<json>"` to gk.host_call and returns the host's answer unchanged), real grpc SDK
plugins (tests/fixtures/host/relay.py), a real SQLite file, a local HTTP server, a local
SMTP server (aiosmtpd).

What a plugin may do is GoatFlow's `{type, access, scope}` entries (host/grants.py): the
manifest's `resources.permissions` plus plughost's flat shorthands, else the registration's,
else GoatFlow's default (db read, cache and file readwrite); the operator's policy
(host/policy.py) replaces, widens, narrows or blocks that. Results are the bytes Go's
encoding/json writes, so they are compared as bytes wherever they are deterministic.

A refused host call gives a wasm guest 0 (so `raw_call` returns b"") and writes exactly one
ERROR line from the host to the plugin's log, `host_call <fn> failed: plugin "<p>": <cause>`;
a grpc plugin gets `plugin "<p>": <cause>` as its error. `refused` checks both halves.

Every Manager here has `HostSettings(data_dir=tmp_path / "data")`: nothing touches the real
user directories.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import wasmtime
import yaml

from plughost import CallCycle, Loader, Manager, PluginCallError, PluginLoadError, PluginTimeout
from plughost.errors import ManifestError
from plughost.host import HostContext, HostSettings
from plughost.host.functions import go_rfc3339_nano
from plughost.host.mail import SMTPSettings
from plughost.lifecycle import Event
from plughost.logs import LogRecord
from plughost.runtimes.wasm import WasmEngine

from .conftest import (
    WAT,
    SmtpCollector,
    variant_dir,
    variant_module,
    wait_until,
    write_plugin_dir,
)

HOST_FIXTURES = Path(__file__).parent / "fixtures" / "host"

#: the host config `config_get` answers besides a plugin's own (fixed, so answers are exact)
APP_CONFIG = {"app.name": "Acme Desk", "app.timezone": "Europe/Berlin", "app.env": "test"}

MakeHost = Callable[..., Manager]


# -- helpers -----------------------------------------------------------------------------


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[MakeHost]:
    """`hosts(host=None, policies=None, **settings)`: a Manager whose data dir is inside
    tmp_path (conftest's, plus the operator's `policies` and a fixed `app_config`)."""
    made: list[Manager] = []

    def make(host: Any = None, policies: dict[str, Any] | None = None,
             **settings: Any) -> Manager:
        settings.setdefault("app_config", APP_CONFIG)
        m = Manager(host=host, settings=HostSettings(data_dir=tmp_path / "data", **settings),
                    drain_timeout=10.0, policies=policies)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def load(manager: Manager, plugins: Path, engine: WasmEngine, expected: int,
         **loader: Any) -> Loader:
    found = Loader(plugins, manager, engine=engine, **loader)
    assert found.load_all() == (expected, [])
    return found


def wasm(plugins: Path, name: str, permissions: list[str] | None = None,
         entries: list[dict[str, Any]] | None = None, **manifest: Any) -> Path:
    """testkit as plugin dir `name`; its manifest grants the flat `permissions` plus the
    GoatFlow `entries` (as `resources.permissions`)."""
    data: dict[str, Any] = {"permissions": permissions or [], **manifest}
    if entries is not None:
        data["resources"] = {**data.get("resources", {}), "permissions": entries}
    return write_plugin_dir(plugins, name, data)


def relay(plugins: Path, name: str, permissions: list[str] | None = None,
          entries: list[dict[str, Any]] | None = None, **manifest: Any) -> Path:
    """tests/fixtures/host/relay.py as grpc plugin dir `name` (grants as for `wasm`)."""
    pdir = plugins / name
    pdir.mkdir(parents=True)
    (pdir / "relay.py").write_text((HOST_FIXTURES / "relay.py").read_text()
                                   .replace("__NAME__", name))
    data: dict[str, Any] = {"name": name, "version": "1.0.0", "runtime": "grpc",
                            "binary": "relay.py", "permissions": permissions or []}
    data.update(manifest)
    if entries is not None:
        data["resources"] = {**data.get("resources", {}), "permissions": entries}
    (pdir / "plugin.yaml").write_text(yaml.safe_dump(data))
    return pdir


#: testkit's registration asks for the flat ["config", "log"] (= one `config` read entry)
def host_failures(manager: Manager, name: str) -> list[LogRecord]:
    return [r for r in manager.log_for(name).records()
            if r.source == "host" and r.message.startswith("host_call ")]


def refusals(manager: Manager, name: str) -> list[str]:
    return [r.message for r in host_failures(manager, name)]


def raw_call(manager: Manager, name: str, fn: str, args: Any) -> bytes:
    """The exact bytes the host answered testkit's gk.host_call with (b"" when it gave 0)."""
    text = args if isinstance(args, str) else json.dumps(args)
    return manager.call_raw(name, "host", f"{fn}|{text}".encode())


def ok(manager: Manager, name: str, fn: str, args: Any) -> bytes:
    """A host call that must be served: no new failure in the log; its exact bytes."""
    before = len(refusals(manager, name))
    result = raw_call(manager, name, fn, args)
    assert refusals(manager, name)[before:] == [], f"{fn} was refused"
    return result


def okj(manager: Manager, name: str, fn: str, args: Any) -> Any:
    return json.loads(ok(manager, name, fn, args))


def refused(manager: Manager, name: str, fn: str, args: Any, cause: str | None = None, *,
            starts: str | None = None, contains: tuple[str, ...] = ()) -> str:
    """A host call that must be refused: the guest gets 0, and the plugin's log one ERROR
    line from the host, `host_call <fn> failed: plugin "<name>": <cause>`. Returns the
    cause."""
    before = len(host_failures(manager, name))
    assert raw_call(manager, name, fn, args) == b""
    new = host_failures(manager, name)[before:]
    assert len(new) == 1, f"expected one failure line for {fn}, got {new}"
    assert new[0].level == "error"
    prefix = f'host_call {fn} failed: plugin "{name}": '
    assert new[0].message.startswith(prefix), new[0].message
    got = new[0].message[len(prefix):]
    if cause is not None:
        assert got == cause
    if starts is not None:
        assert got.startswith(starts), got
    for fragment in contains:
        assert fragment in got, f"{fragment!r} not in {got!r}"
    return got


def grpc_refused(manager: Manager, name: str, fn: str, args: Any, cause: str,
                 **call: Any) -> None:
    """The same refusal seen by a grpc plugin: GoatFlow's text as its error, and the same
    log line."""
    before = len(host_failures(manager, name))
    out = manager.call(name, "host", {"function": fn, "args": args, **call})
    assert out == {"error": f'plugin "{name}": {cause}'}
    assert [r.message for r in host_failures(manager, name)[before:]] == [
        f'host_call {fn} failed: plugin "{name}": {cause}']


def plugin_records(manager: Manager, name: str) -> list[tuple[str, str]]:
    return [(r.level, r.message) for r in manager.log_for(name).records()
            if r.source == "plugin"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def call_args(plugin: str, function: str, args: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"plugin": plugin, "function": function}
    if args is not None:
        out["args"] = args
    return out


# -- local servers -------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpServer:
    port: int
    host: str = "127.0.0.1"
    seen: list[Seen] = field(default_factory=list)

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"


def serve_http(bind: str) -> Iterator[HttpServer]:
    """A local server on `bind`: GET /hello, /big (4096 bytes), /empty (204), /redirect
    (302 to /hello), /away (302 to the same server by the name `localhost`), /loop (302 to
    itself); POST /echo (201, `got:<body>`), /see-other (303 to /hello), /temp (307 to
    /echo)."""
    state = HttpServer(port=0, host=f"[{bind}]" if ":" in bind else bind)

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
                self._send(200, b"hello world", {"Content-Type": "text/plain"})
            elif self.path == "/big":
                self._send(200, b"x" * 4096)
            elif self.path == "/empty":
                self._send(204, b"")
            elif self.path == "/redirect":
                self._send(302, b"moved", {"Location": "/hello"})
            elif self.path == "/away":
                self._send(302, b"moved", {"Location": state.url("/hello", "localhost")})
            elif self.path == "/loop":
                self._send(302, b"again", {"Location": "/loop"})
            else:
                self._send(404, b"not found")

        def do_POST(self) -> None:
            body = self._record()
            if self.path == "/see-other":
                self._send(303, b"", {"Location": "/hello"})
            elif self.path == "/temp":
                self._send(307, b"", {"Location": "/echo"})
            else:
                self._send(201, b"got:" + body, {"Content-Type": "text/plain"})

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        daemon_threads = True

    server = Server((bind, 0), Handler)
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
def http_server(no_proxy: None) -> Iterator[HttpServer]:
    yield from serve_http("127.0.0.1")


def smtp_settings(smtp_server: tuple[int, SmtpCollector]) -> SMTPSettings:
    return SMTPSettings(host="127.0.0.1", port=smtp_server[0], sender="host@example.com",
                        timeout=5.0)


# -- the shape of a refusal ------------------------------------------------------------------


def test_unknown_function_is_refused_in_both_runtimes(plugins: Path, engine: WasmEngine,
                                                      hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["db.read"])
    relay(plugins, "r", ["db.read"])
    m = hosts()
    load(m, plugins, engine, 2)
    refused(m, "tk", "nope", {}, "unknown host API method: nope")
    grpc_refused(m, "r", "nope", {}, "unknown host API method: nope")
    assert m.call("tk", "count") == 1  # a refusal does not break the instance


def test_a_refusal_is_one_error_line_and_the_same_text_over_grpc(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["cache"])
    relay(plugins, "r", ["cache"])
    m = hosts()
    load(m, plugins, engine, 2)
    refused(m, "tk", "db_query", {"query": "SELECT 1"}, "database read access not granted")
    grpc_refused(m, "r", "db_query", {"query": "SELECT 1"},
                 "database read access not granted")
    # the line is the host's (level error, source host), nothing else was written for it
    last = m.log_for("tk").records()[-1]
    assert (last.level, last.source, last.message) == (
        "error", "host", 'host_call db_query failed: plugin "tk": database read access not '
        "granted")


def test_arguments_must_be_a_json_object_and_keys_match_case_insensitively(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["db.read", "cache"])
    m = hosts()
    load(m, plugins, engine, 1)
    refused(m, "tk", "db_query", "{not json", starts="db_query: arguments are not valid JSON")
    refused(m, "tk", "db_query", [1, 2], "db_query: the arguments must be a JSON object")
    refused(m, "tk", "cache_get", {}, "cache_get: 'key' is required")
    refused(m, "tk", "db_query", {"query": 5}, "db_query: 'query' must be a string")
    # Go's decoder: a key matches case-insensitively, unknown keys are ignored
    assert ok(m, "tk", "db_query", {"QUERY": "SELECT 1 AS one", "extra": True}) == \
        b'[{"one":1}]'
    assert ok(m, "tk", "cache_get", {"Key": "k"}) == b'{"found":false,"value":null}'


# -- each gated function needs its grant -----------------------------------------------------


#: every type a built-in function needs, unscoped (http to the local server only)
ALL = [
    {"type": "db", "access": "readwrite"},
    {"type": "cache", "access": "readwrite"},
    {"type": "http", "scope": ["127.0.0.1"]},
    {"type": "email"},
    {"type": "config", "access": "read"},
    {"type": "plugin_call"},
    {"type": "file", "access": "readwrite"},
]

#: (function, the type it needs, args, GoatFlow's cause when that type is not granted);
#: URL stands for the local server's /hello
GATED = [
    ("db_query", "db", {"query": "SELECT 1 AS one"}, "database read access not granted"),
    ("db_exec", "db", {"query": "CREATE TABLE t (x)"}, "database write access not granted"),
    ("cache_get", "cache", {"key": "k"}, "cache read access not granted"),
    ("cache_set", "cache", {"key": "k", "value": "dg=="}, "cache write access not granted"),
    ("cache_delete", "cache", {"key": "k"}, "cache write access not granted"),
    ("http_request", "http", {"url": "URL"}, 'HTTP access to "URL" not permitted (allowed: [])'),
    ("send_email", "email", {"to": "a@example.com", "subject": "s", "body": "b"},
     'email recipient "a@example.com" not allowed'),
    ("config_get", "config", {"key": "k"}, 'config key "k" access denied'),
    ("plugin_call", "plugin_call", {"plugin": "other", "function": "count"},
     'not permitted to call plugin "other" (allowed: [])'),
    ("store_file", "file", {"key": "a.txt", "data": "aGk="}, "file write access not granted"),
    ("get_file", "file", {"key": "a.txt"}, "file read access not granted"),
    ("delete_file", "file", {"key": "a.txt"}, "file write access not granted"),
    ("list_files", "file", {"prefix": ""}, "file read access not granted"),
]


def _with_url(value: Any, url: str) -> Any:
    return json.loads(json.dumps(value).replace("URL", url))


def _nothing_happened(m: Manager, tmp_path: Path, server: HttpServer,
                      inbox: SmtpCollector, type_: str) -> None:
    assert server.seen == []
    assert inbox.received == []
    assert m.call("other", "count") == 1  # plugin_call never reached it
    if type_ == "db":
        assert not (tmp_path / "data" / "db" / "tk.sqlite3").exists()  # never opened
    if type_ == "file":
        assert not (tmp_path / "data" / "files").exists()
    assert m.call("tk", "count") == 1  # a refusal does not break the instance


@pytest.mark.parametrize(("fn", "type_", "args", "cause"), GATED, ids=[g[0] for g in GATED])
def test_each_gated_function_is_refused_without_its_type(
        plugins: Path, engine: WasmEngine, hosts: MakeHost, tmp_path: Path,
        http_server: HttpServer, smtp_server: tuple[int, SmtpCollector],
        fn: str, type_: str, args: dict[str, Any], cause: str) -> None:
    # Everything else is granted: the refusal is about exactly this type.
    wasm(plugins, "tk", entries=[e for e in ALL if e["type"] != type_], config={"k": "v"})
    wasm(plugins, "other")
    m = hosts(smtp=smtp_settings(smtp_server))
    load(m, plugins, engine, 2)
    url = http_server.url("/hello")
    refused(m, "tk", fn, _with_url(args, url), _with_url(cause, url))
    _nothing_happened(m, tmp_path, http_server, smtp_server[1], type_)


@pytest.mark.parametrize(("fn", "type_", "args", "cause"), GATED, ids=[g[0] for g in GATED])
def test_a_blocked_plugin_is_refused_every_gated_function(
        plugins: Path, engine: WasmEngine, hosts: MakeHost, tmp_path: Path,
        http_server: HttpServer, smtp_server: tuple[int, SmtpCollector],
        fn: str, type_: str, args: dict[str, Any], cause: str) -> None:
    wasm(plugins, "tk", entries=ALL, config={"k": "v"})
    wasm(plugins, "other")
    m = hosts(smtp=smtp_settings(smtp_server), policies={"tk": {"status": "blocked"}})
    load(m, plugins, engine, 2)
    url = http_server.url("/hello")
    refused(m, "tk", fn, _with_url(args, url),
            _with_url(cause, url) + " (the operator's policy blocks this plugin)")
    _nothing_happened(m, tmp_path, http_server, smtp_server[1], type_)


def test_a_blocked_plugin_still_has_the_open_functions(plugins: Path, engine: WasmEngine,
                                                       hosts: MakeHost) -> None:
    wasm(plugins, "tk", entries=ALL)
    m = hosts(policies={"tk": {"status": "blocked"}})
    load(m, plugins, engine, 1)
    assert ok(m, "tk", "log", {"level": "info", "message": "still here"}) == b'{"ok":true}'
    assert ok(m, "tk", "translate", {"key": "hi"}) == b'{"value":"hello"}'
    assert ok(m, "tk", "org_id", "") == b"0"
    assert set(okj(m, "tk", "time_now", "")) == {"now"}
    assert ok(m, "tk", "secure_config_set", {"key": "s", "value": "v"}) == b'{"status":"ok"}'
    assert ok(m, "tk", "secure_config_get", {"key": "s"}) == b'{"value":"v"}'
    assert ok(m, "tk", "publish_event", {"channel": "c", "event_type": "t", "data": "d"}) == \
        b'{"status":"ok"}'
    assert m.grants("tk") is not None and m.grants("tk").blocked


@pytest.mark.parametrize("status", ["pending_review", "approved", "restricted"])
def test_only_the_blocked_status_has_an_effect(plugins: Path, engine: WasmEngine,
                                               hosts: MakeHost, status: str) -> None:
    wasm(plugins, "tk", ["db.read"])
    m = hosts(policies={"tk": {"status": status}})
    load(m, plugins, engine, 1)
    assert ok(m, "tk", "db_query", {"query": "SELECT 1 AS one"}) == b'[{"one":1}]'


# -- the access rule -------------------------------------------------------------------------


@pytest.mark.parametrize(("access", "reads", "writes"), [
    ("", False, False),  # an entry without access grants no read or write (GoatFlow's)
    ("read", True, False),
    ("write", False, True),  # write does not imply read
    ("readwrite", True, True),
    ("hard_delete", False, False),
])
def test_db_access_levels(plugins: Path, engine: WasmEngine, hosts: MakeHost,
                          tmp_path: Path, access: str, reads: bool, writes: bool) -> None:
    entry: dict[str, Any] = {"type": "db"}
    if access:
        entry["access"] = access
    wasm(plugins, "tk", entries=[entry])
    m = hosts()
    load(m, plugins, engine, 1)
    (tmp_path / "data" / "db").mkdir(parents=True)
    with sqlite3.connect(tmp_path / "data" / "db" / "tk.sqlite3") as conn:
        conn.execute("CREATE TABLE t (v INTEGER)")
    query = {"query": "SELECT count(*) AS n FROM t"}
    insert = {"query": "INSERT INTO t VALUES (1)"}
    if reads:
        assert ok(m, "tk", "db_query", query) == b'[{"n":0}]'
    else:
        refused(m, "tk", "db_query", query, "database read access not granted")
    if writes:
        assert ok(m, "tk", "db_exec", insert) == b'{"affected":1}'
    else:
        refused(m, "tk", "db_exec", insert, "database write access not granted")


@pytest.mark.parametrize(("access", "reads", "writes"), [
    ("", False, False), ("read", True, False), ("write", False, True),
    ("readwrite", True, True)])
def test_cache_and_file_access_levels(plugins: Path, engine: WasmEngine, hosts: MakeHost,
                                      access: str, reads: bool, writes: bool) -> None:
    entries: list[dict[str, Any]] = [{"type": t, **({"access": access} if access else {})}
                                     for t in ("cache", "file")]
    wasm(plugins, "tk", entries=entries)
    m = hosts()
    load(m, plugins, engine, 1)
    for fn, args, want, result in [
            ("cache_set", {"key": "k", "value": "dg=="}, "write", b'{"ok":true}'),
            ("cache_delete", {"key": "k"}, "write", b'{"ok":true}'),
            ("cache_get", {"key": "k"}, "read", b'{"found":false,"value":null}'),
            ("store_file", {"key": "a", "data": "dg=="}, "write", b'{"status":"ok"}'),
            ("list_files", {"prefix": "nothing-here"}, "read", b"null")]:
        if (reads if want == "read" else writes):
            assert ok(m, "tk", fn, args) == result
        else:
            kind = fn.split("_")[0] if fn.startswith("cache") else "file"
            refused(m, "tk", fn, args, f"{kind} {want} access not granted")


def test_http_email_and_plugin_call_are_granted_by_any_entry_of_their_type(
        plugins: Path, engine: WasmEngine, hosts: MakeHost, http_server: HttpServer,
        smtp_server: tuple[int, SmtpCollector]) -> None:
    """They are checked with an empty wanted access, so an entry's access does not
    matter (GoatFlow's rule)."""
    wasm(plugins, "tk", entries=[{"type": "http", "access": "read", "scope": ["127.0.0.1"]},
                                 {"type": "email", "access": "write"},
                                 {"type": "plugin_call", "access": "hard_delete"}])
    wasm(plugins, "other")
    m = hosts(smtp=smtp_settings(smtp_server))
    load(m, plugins, engine, 2)
    assert okj(m, "tk", "http_request", {"url": http_server.url("/hello")})["status"] == 200
    assert ok(m, "tk", "send_email", {"to": "a@example.com", "subject": "s", "body": "b"}) \
        == b'{"ok":true}'
    assert ok(m, "tk", "plugin_call", call_args("other", "count")) == b"1"
    assert len(smtp_server[1].received) == 1


def test_scopes_of_several_entries_are_united_and_an_unscoped_one_opens_all(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "two", entries=[{"type": "plugin_call", "scope": ["b"]},
                                  {"type": "plugin_call", "scope": ["c"]}])
    wasm(plugins, "open", entries=[{"type": "plugin_call", "scope": ["b"]},
                                   {"type": "plugin_call"}])
    for name in ("b", "c", "d"):
        wasm(plugins, name)
    m = hosts()
    load(m, plugins, engine, 5)
    assert ok(m, "two", "plugin_call", call_args("b", "count")) == b"1"
    assert ok(m, "two", "plugin_call", call_args("c", "count")) == b"1"
    refused(m, "two", "plugin_call", call_args("d", "count"),
            starts='not permitted to call plugin "d" (allowed: ')
    assert ok(m, "open", "plugin_call", call_args("d", "count")) == b"1"
    assert m.call("d", "count") == 2  # only the allowed call reached d


# -- where the grants come from --------------------------------------------------------------


DEFAULT_LIST = [{"type": "db", "access": "read"}, {"type": "cache", "access": "readwrite"},
                {"type": "file", "access": "readwrite"}]


def _default_grants_hold(m: Manager, name: str) -> None:
    assert m.grants(name) is not None
    assert m.grants(name).as_list() == DEFAULT_LIST
    assert ok(m, name, "db_query", {"query": "SELECT 1 AS one"}) == b'[{"one":1}]'
    refused(m, name, "db_exec", {"query": "SELECT 1"}, "database write access not granted")
    assert ok(m, name, "cache_set", {"key": "k", "value": "dg=="}) == b'{"ok":true}'
    assert ok(m, name, "cache_get", {"key": "k"}) == b'{"found":true,"value":"dg=="}'
    assert ok(m, name, "store_file", {"key": "f", "data": "dg=="}) == b'{"status":"ok"}'
    refused(m, name, "config_get", {"key": "app.name"}, 'config key "app.name" access denied')
    refused(m, name, "plugin_call", call_args(name, "count"),
            f'not permitted to call plugin "{name}" (allowed: [])')
    refused(m, name, "send_email", {"to": "a@example.com"},
            'email recipient "a@example.com" not allowed')
    refused(m, name, "http_request", {"url": "http://127.0.0.1:9/"},
            'HTTP access to "http://127.0.0.1:9/" not permitted (allowed: [])')


def test_a_plugin_that_declares_nothing_gets_goatflows_default(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    variant_dir(plugins, "quiet")  # neither plugin.yaml nor registration declares anything
    m = hosts()
    load(m, plugins, engine, 1)
    _default_grants_hold(m, "quiet")


def test_a_bare_module_that_declares_nothing_gets_goatflows_default(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    (plugins / "bare.wasm").write_bytes(variant_module("bare"))
    m = hosts()
    load(m, plugins, engine, 1)
    _default_grants_hold(m, "bare")


def test_the_registration_declares_when_the_manifest_does_not(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    # GoatFlow's resources.permissions in the registration
    variant_dir(plugins, "reg", {"resources": {"permissions": [
        {"type": "cache", "access": "read"}, {"type": "config", "access": "read",
                                              "scope": ["app.name"]}]}})
    # testkit's flat ["config", "log"]: one config read entry (log is open to all)
    wasm(plugins, "flat")
    m = hosts()
    load(m, plugins, engine, 2)
    assert m.grants("reg").as_list() == [{"type": "cache", "access": "read"},
                                         {"type": "config", "access": "read",
                                          "scope": ["app.name"]}]
    assert ok(m, "reg", "cache_get", {"key": "k"}) == b'{"found":false,"value":null}'
    refused(m, "reg", "cache_set", {"key": "k", "value": ""}, "cache write access not granted")
    # declaring replaced the default: no db read, no file storage
    refused(m, "reg", "db_query", {"query": "SELECT 1"}, "database read access not granted")
    refused(m, "reg", "list_files", {}, "file read access not granted")
    assert ok(m, "reg", "config_get", {"key": "app.name"}) == b'{"value":"Acme Desk"}'
    assert m.grants("flat").as_list() == [{"type": "config", "access": "read"}]
    assert ok(m, "flat", "config_get", {"key": "app.env"}) == b'{"value":"test"}'
    refused(m, "flat", "db_query", {"query": "SELECT 1"}, "database read access not granted")
    assert ok(m, "flat", "log", {"message": "log needs no grant"}) == b'{"ok":true}'


def test_a_manifest_that_declares_replaces_the_default_and_the_registration(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    variant_dir(plugins, "tk", {"resources": {"permissions": [{"type": "db",
                                                               "access": "readwrite"}]}},
                manifest={"permissions": ["cache"],
                          "resources": {"permissions": [{"type": "email",
                                                         "scope": ["@example.com"]}]}})
    m = hosts()
    load(m, plugins, engine, 1)
    # the manifest's entries first, then its shorthands; the registration's are not used
    assert m.grants("tk").as_list() == [{"type": "email", "scope": ["@example.com"]},
                                        {"type": "cache", "access": "readwrite"}]
    refused(m, "tk", "db_query", {"query": "SELECT 1"}, "database read access not granted")
    refused(m, "tk", "store_file", {"key": "f", "data": ""}, "file write access not granted")
    assert ok(m, "tk", "cache_set", {"key": "k", "value": ""}) == b'{"ok":true}'


SHORTHANDS = [
    (["db.read"], [], [{"type": "db", "access": "read"}]),
    (["db.write"], [], [{"type": "db", "access": "write"}]),
    (["cache"], [], [{"type": "cache", "access": "readwrite"}]),
    (["email"], [], [{"type": "email"}]),
    (["config"], [], [{"type": "config", "access": "read"}]),
    (["plugin.call"], [], [{"type": "plugin_call"}]),
    (["file"], [], [{"type": "file", "access": "readwrite"}]),
    (["file.read"], [], [{"type": "file", "access": "read"}]),
    (["file.write"], [], [{"type": "file", "access": "write"}]),
    (["http"], ["api.example.com", "*.example.org"],
     [{"type": "http", "scope": ["api.example.com", "*.example.org"]}]),
    (["log", "db.read"], [], [{"type": "db", "access": "read"}]),  # log grants nothing
    (["http", "db.read"], [], [{"type": "db", "access": "read"}]),  # no hosts: no http
]


@pytest.mark.parametrize(("flat", "hosts_", "entries"), SHORTHANDS,
                         ids=["+".join(s[0]) + ("-hosts" if s[1] else "") for s in SHORTHANDS])
def test_each_shorthand_is_the_goatflow_entry_it_stands_for(
        plugins: Path, engine: WasmEngine, hosts: MakeHost, flat: list[str],
        hosts_: list[str], entries: list[dict[str, Any]]) -> None:
    wasm(plugins, "tk", flat, allowed_hosts=hosts_)
    m = hosts()
    load(m, plugins, engine, 1)
    assert m.grants("tk").as_list() == entries


def test_hard_delete_is_never_granted_by_a_declaration_only_by_the_operator(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    hard = {"type": "entity", "access": "hard_delete", "scope": ["ticket"]}
    wasm(plugins, "tk", entries=[hard, {"type": "db", "access": "read"}])
    wasm(plugins, "ops", entries=[{"type": "db", "access": "read"}])
    m = hosts(policies={"ops": {"grant": [hard]}})
    load(m, plugins, engine, 2)
    assert m.grants("tk").as_list() == [{"type": "db", "access": "read"}]
    assert not m.grants("tk").allows("entity", "hard_delete")
    assert m.grants("ops").allows("entity", "hard_delete")


# -- the operator's policy ----------------------------------------------------------------------


def test_policy_permissions_replace_the_declared_ones(plugins: Path, engine: WasmEngine,
                                                      hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["db.read", "db.write"])
    m = hosts(policies={"tk": {"permissions": [{"type": "cache", "access": "read"}]}})
    load(m, plugins, engine, 1)
    assert m.grants("tk").as_list() == [{"type": "cache", "access": "read"}]
    refused(m, "tk", "db_query", {"query": "SELECT 1"}, "database read access not granted")
    assert ok(m, "tk", "cache_get", {"key": "k"}) == b'{"found":false,"value":null}'
    refused(m, "tk", "cache_set", {"key": "k", "value": ""}, "cache write access not granted")


def test_policy_empty_permissions_leave_only_the_open_functions(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    """`permissions: []` is a replacement by nothing, not "unset" (the default)."""
    wasm(plugins, "tk", ["db.read"])
    m = hosts(policies={"tk": {"permissions": []}})
    load(m, plugins, engine, 1)
    assert m.grants("tk").as_list() == []
    refused(m, "tk", "db_query", {"query": "SELECT 1"}, "database read access not granted")
    refused(m, "tk", "cache_get", {"key": "k"}, "cache read access not granted")
    assert ok(m, "tk", "log", {"message": "m"}) == b'{"ok":true}'


def test_policy_grant_adds_and_revoke_narrows(plugins: Path, engine: WasmEngine,
                                              hosts: MakeHost) -> None:
    wasm(plugins, "more", ["db.read"])
    wasm(plugins, "less", ["cache"], entries=[{"type": "db", "access": "readwrite"}])
    m = hosts(policies={
        "more": {"grant": [{"type": "db", "access": "write", "scope": ["notes"]}]},
        # revoking write from readwrite leaves read; revoking a type drops it
        "less": {"revoke": [{"type": "db", "access": "write"}, {"type": "cache"}]}})
    load(m, plugins, engine, 2)
    assert m.grants("more").as_list() == [{"type": "db", "access": "read"},
                                          {"type": "db", "access": "write",
                                           "scope": ["notes"]}]
    assert ok(m, "more", "db_exec", {"query": "CREATE TABLE notes (v)"}) == b'{"affected":0}'
    refused(m, "more", "db_exec", {"query": "CREATE TABLE other (v)"},
            'write access to table "other" not permitted')
    assert m.grants("less").as_list() == [{"type": "db", "access": "read"}]
    assert ok(m, "less", "db_query", {"query": "SELECT 1 AS one"}) == b'[{"one":1}]'
    refused(m, "less", "db_exec", {"query": "SELECT 1"}, "database write access not granted")
    refused(m, "less", "cache_get", {"key": "k"}, "cache read access not granted")


def test_set_policy_applies_at_once_to_a_running_wasm_plugin(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "tk", entries=[{"type": "db", "access": "readwrite"}])
    m = hosts()
    load(m, plugins, engine, 1)
    assert m.call("tk", "count") == 1
    assert ok(m, "tk", "db_exec", {"query": "CREATE TABLE t (v)"}) == b'{"affected":0}'
    m.set_policy("tk", {"revoke": [{"type": "db", "access": "write"}]})
    refused(m, "tk", "db_exec", {"query": "INSERT INTO t VALUES (1)"},
            "database write access not granted")
    assert ok(m, "tk", "db_query", {"query": "SELECT count(*) AS n FROM t"}) == b'[{"n":0}]'
    assert m.grants("tk").as_list() == [{"type": "db", "access": "read"}]
    m.set_policy("tk", {"status": "blocked"})
    refused(m, "tk", "db_query", {"query": "SELECT 1"},
            "database read access not granted (the operator's policy blocks this plugin)")
    m.set_policy("tk", None)  # dropped: the declared grants again
    assert ok(m, "tk", "db_exec", {"query": "INSERT INTO t VALUES (1)"}) == b'{"affected":1}'
    assert m.call("tk", "count") == 2  # the same instance all along: nothing was reloaded


def test_set_policy_applies_at_once_to_a_running_grpc_plugin(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    relay(plugins, "r", ["db.read"])
    m = hosts()
    load(m, plugins, engine, 1)
    pid = m.call("r", "host", {"function": "db_query", "args": {"query": "SELECT 1 AS one"}})
    assert pid == {"result": [{"one": 1}]}
    m.set_policy("r", {"status": "blocked"})
    grpc_refused(m, "r", "db_query", {"query": "SELECT 1"},
                 "database read access not granted (the operator's policy blocks this "
                 "plugin)")
    m.set_policy("r", {"grant": [{"type": "cache", "access": "readwrite"}]})
    assert m.call("r", "host", {"function": "cache_get", "args": {"key": "k"}}) == {
        "result": {"found": False, "value": None}}


def test_a_policy_set_before_the_plugin_loads_applies_at_its_load(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["db.read"])
    m = hosts()
    assert m.grants("tk") is None  # not loaded
    m.set_policy("tk", {"status": "blocked"})
    load(m, plugins, engine, 1)
    refused(m, "tk", "db_query", {"query": "SELECT 1"},
            "database read access not granted (the operator's policy blocks this plugin)")


def test_loader_policies_are_the_managers(plugins: Path, engine: WasmEngine,
                                          hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["db.read"])
    m = hosts()
    load(m, plugins, engine, 1, policies={"tk": {"permissions": []}})
    assert m.policy_for("tk") is not None
    refused(m, "tk", "db_query", {"query": "SELECT 1"}, "database read access not granted")


def test_policies_yaml_in_the_data_dir_applies_at_each_load(
        plugins: Path, engine: WasmEngine, hosts: MakeHost, tmp_path: Path) -> None:
    wasm(plugins, "tk", ["db.read"])
    wasm(plugins, "given", ["db.read"])
    policy_file = tmp_path / "data" / "policies.yaml"
    policy_file.parent.mkdir(parents=True)
    policy_file.write_text(yaml.safe_dump({"tk": {"status": "blocked"},
                                           "given": {"status": "blocked"}}))
    # the argument wins over the file, as GoatFlow's in-memory policy over its stored one
    m = hosts(policies={"given": {"status": "approved"}})
    loader = load(m, plugins, engine, 2)
    refused(m, "tk", "db_query", {"query": "SELECT 1"},
            "database read access not granted (the operator's policy blocks this plugin)")
    assert ok(m, "given", "db_query", {"query": "SELECT 1 AS one"}) == b'[{"one":1}]'
    # an edit applies at the next load (here: a reload), not to the running version
    policy_file.write_text(yaml.safe_dump({"tk": {"grant": [{"type": "cache",
                                                             "access": "readwrite"}]}}))
    refused(m, "tk", "cache_get", {"key": "k"},
            "cache read access not granted (the operator's policy blocks this plugin)")
    loader.reload("tk")
    assert ok(m, "tk", "cache_get", {"key": "k"}) == b'{"found":false,"value":null}'
    assert ok(m, "tk", "db_query", {"query": "SELECT 1 AS one"}) == b'[{"one":1}]'


def test_a_broken_policy_file_fails_the_load_rather_than_grant(
        plugins: Path, engine: WasmEngine, hosts: MakeHost, tmp_path: Path) -> None:
    wasm(plugins, "tk", ["db.read"])
    policy_file = tmp_path / "data" / "policies.yaml"
    policy_file.parent.mkdir(parents=True)
    policy_file.write_text("tk: [unclosed\n")
    m = hosts()
    loaded, errors = Loader(plugins, m, engine=engine).load_all()
    assert loaded == 0 and len(errors) == 1
    assert isinstance(errors[0], ManifestError)
    assert "policy file cannot be read" in errors[0].message
    assert m.names() == []
    policy_file.write_text(yaml.safe_dump({"tk": {"status": "bogus"}}))
    loaded, errors = Loader(plugins, m, engine=engine).load_all()
    assert loaded == 0 and "policy for 'tk'" in errors[0].message


def test_an_invalid_policy_is_refused_where_it_is_given(tmp_path: Path) -> None:
    settings = HostSettings(data_dir=tmp_path / "data")
    with pytest.raises(ManifestError, match="policy for 'tk' in the policies argument"):
        Manager(settings=settings, policies={"tk": {"max_email_per_min": 100}})
    with Manager(settings=settings, policies={"tk": {"status": "blocked"}}) as m:
        with pytest.raises(ManifestError, match="max_db_queries_per_min"):
            m.set_policy("tk", {"max_db_queries_per_min": -1})
        assert m.policy_for("tk") is not None and m.policy_for("tk").status == "blocked"


# -- rate limits -----------------------------------------------------------------------------


def test_db_rate_limit_is_shared_by_query_and_exec_and_per_load(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["db.read", "db.write"])
    wasm(plugins, "other", ["db.read"])
    m = hosts(policies={"tk": {"max_db_queries_per_min": 3}})
    loader = load(m, plugins, engine, 2)
    assert ok(m, "tk", "db_exec", {"query": "CREATE TABLE t (v)"}) == b'{"affected":0}'
    assert ok(m, "tk", "db_query", {"query": "SELECT 1 AS one"}) == b'[{"one":1}]'
    assert ok(m, "tk", "db_exec", {"query": "INSERT INTO t VALUES (1)"}) == b'{"affected":1}'
    refused(m, "tk", "db_query", {"query": "SELECT 1"}, "DB query rate limit exceeded")
    refused(m, "tk", "db_exec", {"query": "INSERT INTO t VALUES (2)"},
            "DB query rate limit exceeded")
    assert ok(m, "other", "db_query", {"query": "SELECT 1 AS one"}) == b'[{"one":1}]'
    # raising the limit applies at once; the window of this load is kept
    m.set_policy("tk", {"max_db_queries_per_min": 4})
    assert ok(m, "tk", "db_query", {"query": "SELECT count(*) AS n FROM t"}) == b'[{"n":1}]'
    refused(m, "tk", "db_query", {"query": "SELECT 1"}, "DB query rate limit exceeded")
    # a reload starts a fresh window, as in GoatFlow
    loader.reload("tk")
    for _ in range(4):
        assert ok(m, "tk", "db_query", {"query": "SELECT 1 AS one"}) == b'[{"one":1}]'
    refused(m, "tk", "db_query", {"query": "SELECT 1"}, "DB query rate limit exceeded")


def test_db_rate_limit_zero_is_unlimited_and_the_defaults_are_goatflows(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["db.read"])
    wasm(plugins, "dflt", ["db.read"])
    m = hosts(policies={"tk": {"max_db_queries_per_min": 0, "max_http_req_per_min": 7}})
    load(m, plugins, engine, 2)
    for _ in range(20):
        ok(m, "tk", "db_query", {"query": "SELECT 1"})
    tk, dflt = m.get("tk"), m.get("dflt")
    assert tk is not None and dflt is not None
    assert (tk.host_context.limits.max_db_queries_per_min,
            tk.host_context.limits.max_http_req_per_min) == (0, 7)
    assert (dflt.host_context.limits.max_db_queries_per_min,
            dflt.host_context.limits.max_http_req_per_min) == (600, 60)


def test_http_rate_limit_from_the_policy(plugins: Path, engine: WasmEngine, hosts: MakeHost,
                                         http_server: HttpServer) -> None:
    wasm(plugins, "tk", ["http"], allowed_hosts=["127.0.0.1"])
    m = hosts(policies={"tk": {"max_http_req_per_min": 3}})
    load(m, plugins, engine, 1)
    # a request refused by the scope is refused before it is counted
    refused(m, "tk", "http_request", {"url": http_server.url("/hello", "localhost")},
            starts="HTTP access to")
    for _ in range(3):
        assert okj(m, "tk", "http_request", {"url": http_server.url("/hello")})["status"] \
            == 200
    refused(m, "tk", "http_request", {"url": http_server.url("/hello")},
            "HTTP request rate limit exceeded")
    assert len(http_server.seen) == 3


def test_email_rate_limit_is_a_fixed_ten_per_minute(
        plugins: Path, engine: WasmEngine, hosts: MakeHost,
        smtp_server: tuple[int, SmtpCollector]) -> None:
    wasm(plugins, "mailer", ["email"])
    # no policy key changes it (Policy has none: an unknown key is refused above)
    m = hosts(smtp=smtp_settings(smtp_server),
              policies={"mailer": {"max_db_queries_per_min": 0, "max_http_req_per_min": 0}})
    load(m, plugins, engine, 1)
    mail = {"to": "a@example.com", "subject": "s", "body": "b"}
    for _ in range(7):
        assert ok(m, "mailer", "send_email", mail) == b'{"ok":true}'
    # a message to several counts once per recipient, all or nothing
    four = {**mail, "to": [f"u{i}@example.com" for i in range(4)]}
    refused(m, "mailer", "send_email", four, "email rate limit exceeded")
    three = {**mail, "to": [f"u{i}@example.com" for i in range(3)]}
    assert ok(m, "mailer", "send_email", three) == b'{"ok":true}'
    refused(m, "mailer", "send_email", mail, "email rate limit exceeded")
    assert len(smtp_server[1].received) == 8


# -- db_exec / db_query ------------------------------------------------------------------------


@pytest.fixture
def db(plugins: Path, engine: WasmEngine, hosts: MakeHost) -> Manager:
    """Plugin "tk" with db readwrite (unscoped), on the default SQLite backend."""
    wasm(plugins, "tk", ["db.read", "db.write"])
    m = hosts()
    load(m, plugins, engine, 1)
    return m


def test_db_results_are_goatflows_shapes_as_go_writes_them(db: Manager,
                                                           tmp_path: Path) -> None:
    assert ok(db, "tk", "db_exec", {
        "query": "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, score REAL)"}) \
        == b'{"affected":0}'
    assert ok(db, "tk", "db_exec", {"query": "INSERT INTO people (name, score) VALUES (?, ?)",
                                    "args": ["alice", 1.5]}) == b'{"affected":1}'
    assert ok(db, "tk", "db_exec", {"query": "INSERT INTO people (name, score) VALUES (?, ?)",
                                    "args": ["<bob> & co", None]}) == b'{"affected":1}'
    # keys sorted (Go's maps), <>& escaped, NULL as null, integral REAL without fraction
    assert ok(db, "tk", "db_query", {"query": "SELECT score, name, id FROM people ORDER BY id"}
              ) == (b'[{"id":1,"name":"alice","score":1.5},'
                    b'{"id":2,"name":"\\u003cbob\\u003e \\u0026 co","score":null}]')
    assert ok(db, "tk", "db_exec", {"query": "UPDATE people SET score = ?", "args": [2]}) == \
        b'{"affected":2}'
    assert ok(db, "tk", "db_query", {"query": "SELECT score FROM people WHERE id = ?",
                                     "args": [1]}) == b'[{"score":2}]'
    # no rows: Go's nil slice, `null`
    assert ok(db, "tk", "db_query", {"query": "SELECT name FROM people WHERE id = ?",
                                     "args": [99]}) == b"null"
    assert ok(db, "tk", "db_exec", {"query": "DELETE FROM people WHERE id = 99"}) == \
        b'{"affected":0}'
    # BLOBs arrive as text (invalid UTF-8 replaced), numbers as Go writes float64
    assert ok(db, "tk", "db_query", {"query": "SELECT X'68690A' AS b, X'00FF' AS bad, "
                                              "1e21 AS big, 0.000001 AS small"}) == \
        '[{"b":"hi\\n","bad":"\\u0000\ufffd","big":1e+21,"small":0.000001}]'.encode()
    # The default backend is one SQLite file per plugin in the host's data dir.
    path = tmp_path / "data" / "db" / "tk.sqlite3"
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name, score FROM people ORDER BY id").fetchall() == [
            ("alice", 2.0), ("<bob> & co", 2.0)]


def test_db_named_database_prefix(db: Manager) -> None:
    assert ok(db, "tk", "db_query", {"query": "@default:SELECT 1 AS one"}) == b'[{"one":1}]'
    refused(db, "tk", "db_query", {"query": "@reports:SELECT 1"},
            'database "reports" not found')
    refused(db, "tk", "db_query", {"query": "@:SELECT 1"},
            "db_query: a query starting with '@' must name a database as '@<name>:'")


INJECTIONS = ["x'); DROP TABLE t;--", "1 OR 1=1", "' OR '1'='1", 'a"); DELETE FROM t; --',
              "Robert'); DROP TABLE t; --\x00tail"]


def test_db_sql_injection_attempts_stay_data(db: Manager) -> None:
    ok(db, "tk", "db_exec", {"query": "CREATE TABLE t (v TEXT)"})
    for value in INJECTIONS:
        assert ok(db, "tk", "db_exec", {"query": "INSERT INTO t (v) VALUES (?)",
                                        "args": [value]}) == b'{"affected":1}'
    for value in INJECTIONS:  # each comes back verbatim, and matches only itself
        assert okj(db, "tk", "db_query", {"query": "SELECT v FROM t WHERE v = ?",
                                          "args": [value]}) == [{"v": value}]
    assert ok(db, "tk", "db_query", {"query": "SELECT count(*) AS n FROM t"}) == b'[{"n":5}]'
    assert ok(db, "tk", "db_query", {"query": "SELECT v FROM t WHERE rowid = ?",
                                     "args": ["1 OR 1=1"]}) == b"null"


def test_db_query_cannot_write(db: Manager) -> None:
    ok(db, "tk", "db_exec", {"query": "CREATE TABLE t (v TEXT)"})
    ok(db, "tk", "db_exec", {"query": "INSERT INTO t VALUES (?)", "args": ["keep"]})
    for sql in ["UPDATE t SET v = 'gone'", "DELETE FROM t", "INSERT INTO t VALUES ('new')",
                "DROP TABLE t", "CREATE TABLE u (x)", "WITH x AS (SELECT 1) DELETE FROM t"]:
        refused(db, "tk", "db_query", {"query": sql}, contains=("db_query", "readonly"))
    assert ok(db, "tk", "db_query", {"query": "SELECT v FROM t"}) == b'[{"v":"keep"}]'


def test_db_two_statements_in_one_call_are_refused(db: Manager) -> None:
    ok(db, "tk", "db_exec", {"query": "CREATE TABLE t (v TEXT)"})
    refused(db, "tk", "db_exec", {"query": "INSERT INTO t VALUES ('a'); DROP TABLE t"},
            "db_exec: You can only execute one statement at a time.")
    refused(db, "tk", "db_query", {"query": "SELECT 1; DELETE FROM t"},
            "db_query: You can only execute one statement at a time.")
    assert ok(db, "tk", "db_query", {"query": "SELECT count(*) AS n FROM t"}) == b'[{"n":0}]'


@pytest.mark.parametrize("bad", [[[1]], [{"a": 1}], "not a list", 5, {"a": 1}],
                         ids=["nested-list", "object-arg", "string", "number", "object"])
def test_db_args_must_be_a_list_of_scalars(db: Manager, bad: Any) -> None:
    ok(db, "tk", "db_exec", {"query": "CREATE TABLE t (v)"})
    why = "'args' must be a list of strings, numbers, booleans or nulls"
    refused(db, "tk", "db_exec", {"query": "INSERT INTO t VALUES (?)", "args": bad},
            f"db_exec: {why}")
    refused(db, "tk", "db_query", {"query": "SELECT * FROM t WHERE v = ?", "args": bad},
            f"db_query: {why}")
    assert ok(db, "tk", "db_query", {"query": "SELECT count(*) AS n FROM t"}) == b'[{"n":0}]'


def test_db_sql_errors_are_refused_with_sqlites_reason(db: Manager) -> None:
    refused(db, "tk", "db_query", {"args": []}, "db_query: 'query' is required")
    refused(db, "tk", "db_query", {"query": "SELEKT 1"},
            'db_query: near "SELEKT": syntax error')
    refused(db, "tk", "db_query", {"query": "SELECT * FROM missing"},
            "db_query: no such table: missing")
    refused(db, "tk", "db_exec", {"query": "CREATE TABLE t (v)", "args": [1]},
            contains=("db_exec", "bindings"))
    assert db.call("tk", "count") == 1


def test_db_query_results_are_strict_json(db: Manager) -> None:
    # Infinity has no JSON spelling (Go refuses it too): refused rather than sent as non-JSON.
    refused(db, "tk", "db_query", {"query": "SELECT 1e999 AS x"},
            starts="db_query: result cannot be sent as JSON")


def test_each_plugin_has_its_own_database(plugins: Path, engine: WasmEngine,
                                          hosts: MakeHost, tmp_path: Path) -> None:
    wasm(plugins, "a", ["db.read", "db.write"])
    wasm(plugins, "b", ["db.read", "db.write"])
    m = hosts()
    load(m, plugins, engine, 2)
    ok(m, "a", "db_exec", {"query": "CREATE TABLE secret (v TEXT)"})
    ok(m, "a", "db_exec", {"query": "INSERT INTO secret VALUES (?)", "args": ["a-only"]})
    refused(m, "b", "db_query", {"query": "SELECT v FROM secret"},
            "db_query: no such table: secret")
    ok(m, "b", "db_exec", {"query": "CREATE TABLE secret (v TEXT)"})  # no clash
    ok(m, "b", "db_exec", {"query": "INSERT INTO secret VALUES (?)", "args": ["b-only"]})
    assert ok(m, "a", "db_query", {"query": "SELECT v FROM secret"}) == b'[{"v":"a-only"}]'
    assert ok(m, "b", "db_query", {"query": "SELECT v FROM secret"}) == b'[{"v":"b-only"}]'
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
    assert ok(m, "tk", "db_query", {"query": "SELECT n FROM t ORDER BY n LIMIT 3"}) == \
        b'[{"n":0},{"n":1},{"n":2}]'
    refused(m, "tk", "db_query", {"query": "SELECT n FROM t"},
            "db_query: more than 3 rows; add a LIMIT")


def test_db_exec_cannot_write_files_outside_the_data_dir(db: Manager, tmp_path: Path) -> None:
    target = tmp_path / "escaped.sqlite3"
    ok(db, "tk", "db_exec", {"query": "CREATE TABLE t (v)"})
    refused(db, "tk", "db_exec", {"query": f"VACUUM INTO '{target}'"},
            "db_exec: authorization denied")
    refused(db, "tk", "db_query", {"query": f"ATTACH DATABASE '{target}' AS x"},
            "db_query: not authorized")
    refused(db, "tk", "db_exec", {"query": f"ATTACH DATABASE '{target}' AS y"},
            "db_exec: not authorized")
    assert not target.exists()


def test_db_blob_result_over_grpc_is_text(plugins: Path, engine: WasmEngine,
                                          hosts: MakeHost) -> None:
    relay(plugins, "r", ["db.read"])
    m = hosts()
    load(m, plugins, engine, 1)
    assert m.call("r", "host", {"function": "db_query",
                                "args": {"query": "SELECT X'6869' AS b"}}) == {
        "result": [{"b": "hi"}]}


# -- db scopes: tables, checked by SQLite itself ------------------------------------------------


@pytest.fixture
def scoped_db(plugins: Path, engine: WasmEngine, hosts: MakeHost, tmp_path: Path) -> Manager:
    """"tk" may read and write tables matching `notes*` only; the database also holds
    `secret` (with a row), a view over it and a trigger that writes it, made behind the
    plugin's back."""
    wasm(plugins, "tk", entries=[{"type": "db", "access": "read", "scope": ["notes*"]},
                                 {"type": "db", "access": "write", "scope": ["NOTES*"]}])
    m = hosts()
    load(m, plugins, engine, 1)
    assert ok(m, "tk", "db_exec", {"query": "CREATE TABLE notes (v TEXT)"}) == \
        b'{"affected":0}'
    with sqlite3.connect(tmp_path / "data" / "db" / "tk.sqlite3") as conn:
        conn.execute("CREATE TABLE secret (v TEXT)")
        conn.execute("INSERT INTO secret VALUES ('s')")
        conn.execute("CREATE TABLE notes_log (v TEXT)")
        conn.execute("CREATE VIEW notes_v AS SELECT v FROM secret")
    return m


def test_db_scope_allows_matching_tables(scoped_db: Manager) -> None:
    m = scoped_db
    assert ok(m, "tk", "db_exec", {"query": "INSERT INTO notes VALUES ('n')"}) == \
        b'{"affected":1}'
    assert ok(m, "tk", "db_query", {"query": "SELECT v FROM Notes"}) == b'[{"v":"n"}]'
    assert ok(m, "tk", "db_exec", {"query": "INSERT INTO notes_log SELECT v FROM notes"}) \
        == b'{"affected":1}'
    assert ok(m, "tk", "db_query", {"query": "SELECT a.v FROM notes a JOIN notes_log b "
                                             "ON a.v = b.v"}) == b'[{"v":"n"}]'
    # SQLite's own tables are exempt; a statement touching no table passes
    assert okj(m, "tk", "db_query", {"query": "SELECT name FROM sqlite_master WHERE "
                                              "type = 'table' ORDER BY name"}) == [
        {"name": "notes"}, {"name": "notes_log"}, {"name": "secret"}]
    assert ok(m, "tk", "db_query", {"query": "SELECT 1 AS one"}) == b'[{"one":1}]'
    # a CTE that shadows a refused table's name is not that table
    assert ok(m, "tk", "db_query", {"query": "WITH secret AS (SELECT 1 AS x) "
                                             "SELECT x FROM secret"}) == b'[{"x":1}]'


@pytest.mark.parametrize("query", [
    "SELECT v FROM secret",
    "SELECT count(*) AS n FROM secret",  # no column read: still a read of the table
    "SELECT n.v FROM notes n JOIN secret s ON 1",
    "SELECT v FROM notes WHERE v IN (SELECT v FROM secret)",
    "SELECT EXISTS (SELECT 1 FROM secret) AS e",
    "SELECT v FROM notes_v",  # the view's name matches; what it reads does not
])
def test_db_scope_refuses_reading_other_tables(scoped_db: Manager, query: str) -> None:
    refused(scoped_db, "tk", "db_query", {"query": query},
            'access to table "secret" not permitted')


@pytest.mark.parametrize("query", [
    "INSERT INTO secret VALUES ('x')", "UPDATE secret SET v = 'x'", "DELETE FROM secret",
    "DROP TABLE secret", "CREATE TABLE other (v)", "ALTER TABLE secret ADD COLUMN w",
])
def test_db_scope_refuses_writing_other_tables(scoped_db: Manager, tmp_path: Path,
                                               query: str) -> None:
    table = "other" if "other" in query else "secret"
    refused(scoped_db, "tk", "db_exec", {"query": query},
            f'write access to table "{table}" not permitted')
    with sqlite3.connect(tmp_path / "data" / "db" / "tk.sqlite3") as conn:
        assert conn.execute("SELECT v FROM secret").fetchall() == [("s",)]
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'other'"
                            ).fetchall() == []


def test_db_scope_reaches_into_triggers(scoped_db: Manager, tmp_path: Path) -> None:
    m = scoped_db
    # the trigger is on an allowed table, so creating it is allowed ...
    assert ok(m, "tk", "db_exec", {"query": "CREATE TRIGGER notes_t AFTER INSERT ON notes "
                                            "BEGIN INSERT INTO secret VALUES (new.v); END"}) \
        == b'{"affected":0}'
    # ... but what it would write is checked when a statement fires it
    refused(m, "tk", "db_exec", {"query": "INSERT INTO notes VALUES ('n')"},
            'write access to table "secret" not permitted')
    with sqlite3.connect(tmp_path / "data" / "db" / "tk.sqlite3") as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM secret").fetchone() == (1,)


def test_db_writing_a_table_needs_a_write_entry_whose_scope_matches(
        plugins: Path, engine: WasmEngine, hosts: MakeHost, tmp_path: Path) -> None:
    """A table written through db_query too: an unscoped read entry does not cover a
    write to a table outside the write entry's scope."""
    wasm(plugins, "tk", entries=[{"type": "db", "access": "read"},
                                 {"type": "db", "access": "write", "scope": ["gk_*"]}])
    m = hosts()
    load(m, plugins, engine, 1)
    assert ok(m, "tk", "db_exec", {"query": "CREATE TABLE gk_items (v)"}) == b'{"affected":0}'
    refused(m, "tk", "db_exec", {"query": "CREATE TABLE items (v)"},
            'write access to table "items" not permitted')
    with sqlite3.connect(tmp_path / "data" / "db" / "tk.sqlite3") as conn:
        conn.execute("CREATE TABLE items (v)")
    assert ok(m, "tk", "db_query", {"query": "SELECT count(*) AS n FROM items"}) == \
        b'[{"n":0}]'
    refused(m, "tk", "db_query", {"query": "INSERT INTO items VALUES (1)"},
            'write access to table "items" not permitted')
    refused(m, "tk", "db_exec", {"query": "INSERT INTO items VALUES (1)"},
            'write access to table "items" not permitted')
    assert ok(m, "tk", "db_query", {"query": "SELECT count(*) AS n FROM gk_items"}) == \
        b'[{"n":0}]'


def test_db_ddl_words_are_refused_without_any_write_grant(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "ro", ["db.read"])
    wasm(plugins, "rw", ["db.read"], entries=[{"type": "db", "access": "write",
                                               "scope": ["none"]}])
    m = hosts()
    load(m, plugins, engine, 2)
    for word in ("DROP", "alter", "Truncate", "CREATE", "GRANT", "REVOKE"):
        # GoatFlow's plain word search: even inside a string literal
        refused(m, "ro", "db_query", {"query": f"SELECT '{word} x' AS s"},
                "DDL statements not permitted")
    # with any write grant, DDL words are left to the table rules
    assert ok(m, "rw", "db_query", {"query": "SELECT 'DROP x' AS s"}) == b'[{"s":"DROP x"}]'
    assert ok(m, "ro", "db_query", {"query": "SELECT 'DROPx' AS s"}) == b'[{"s":"DROPx"}]'


# -- cache ------------------------------------------------------------------------------------


def test_cache_shapes_and_round_trip_of_bytes(plugins: Path, engine: WasmEngine,
                                              hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["cache"])
    m = hosts()
    load(m, plugins, engine, 1)
    assert ok(m, "tk", "cache_get", {"key": "k"}) == b'{"found":false,"value":null}'
    data = bytes(range(256))
    assert ok(m, "tk", "cache_set", {"key": "k", "value": b64(data), "ttl": 60}) == \
        b'{"ok":true}'
    assert ok(m, "tk", "cache_get", {"key": "k"}) == \
        b'{"found":true,"value":"' + b64(data).encode() + b'"}'
    # present but empty is a hit with "" (Go's empty []byte), not a miss
    assert ok(m, "tk", "cache_set", {"key": "empty", "value": ""}) == b'{"ok":true}'
    assert ok(m, "tk", "cache_get", {"key": "empty"}) == b'{"found":true,"value":""}'
    assert ok(m, "tk", "cache_set", {"key": "k", "value": "dHdv"}) == b'{"ok":true}'
    assert ok(m, "tk", "cache_get", {"key": "k"}) == b'{"found":true,"value":"dHdv"}'
    assert ok(m, "tk", "cache_delete", {"key": "k"}) == b'{"ok":true}'
    assert ok(m, "tk", "cache_delete", {"key": "k"}) == b'{"ok":true}'  # also when absent
    assert ok(m, "tk", "cache_get", {"key": "k"}) == b'{"found":false,"value":null}'


def test_cache_is_namespaced_per_plugin(plugins: Path, engine: WasmEngine,
                                        hosts: MakeHost) -> None:
    wasm(plugins, "a", ["cache"])
    wasm(plugins, "b", ["cache"])
    m = hosts()
    load(m, plugins, engine, 2)
    ok(m, "a", "cache_set", {"key": "k", "value": b64(b"a's")})
    assert ok(m, "b", "cache_get", {"key": "k"}) == b'{"found":false,"value":null}'
    ok(m, "b", "cache_delete", {"key": "k"})
    assert okj(m, "a", "cache_get", {"key": "k"})["value"] == b64(b"a's")
    ok(m, "b", "cache_set", {"key": "k", "value": b64(b"b's")})
    assert okj(m, "a", "cache_get", {"key": "k"})["value"] == b64(b"a's")
    assert okj(m, "b", "cache_get", {"key": "k"})["value"] == b64(b"b's")


def test_cache_ttl_is_seconds_and_expires(plugins: Path, engine: WasmEngine,
                                          hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["cache"])
    m = hosts()
    load(m, plugins, engine, 1)
    ok(m, "tk", "cache_set", {"key": "short", "value": "MQ==", "ttl": 0.2})
    ok(m, "tk", "cache_set", {"key": "long", "value": "Mg==", "ttl": 3600})
    ok(m, "tk", "cache_set", {"key": "no-ttl", "value": "Mw==", "ttl": 0})
    assert okj(m, "tk", "cache_get", {"key": "short"})["found"] is True
    # expiry has no event to wait on: poll for it
    wait_until(lambda: not okj(m, "tk", "cache_get", {"key": "short"})["found"], timeout=5)
    assert ok(m, "tk", "cache_get", {"key": "long"}) == b'{"found":true,"value":"Mg=="}'
    assert ok(m, "tk", "cache_get", {"key": "no-ttl"}) == b'{"found":true,"value":"Mw=="}'


@pytest.mark.parametrize(("args", "cause"), [
    ({"key": "k", "value": "not base64!"},
     "cache_set: 'value' must be standard base64 (a Go []byte)"),
    ({"key": "k", "value": "aGk"}, "cache_set: 'value' must be standard base64 (a Go []byte)"),
    ({"key": "k", "value": 1}, "cache_set: 'value' must be a string"),
    ({"key": "k", "value": "aGk=", "ttl": -1}, "cache_set: 'ttl' must be a number of seconds"),
    ({"key": "k", "value": "aGk=", "ttl": "soon"}, "cache_set: 'ttl' must be a number"),
    ({"key": "k", "value": "aGk=", "ttl": True}, "cache_set: 'ttl' must be a number"),
    ({"value": "aGk="}, "cache_set: 'key' is required"),
    ({"key": "", "value": "aGk="}, "cache_set: 'key' must be a non-empty string"),
])
def test_cache_set_argument_errors(plugins: Path, engine: WasmEngine, hosts: MakeHost,
                                   args: dict[str, Any], cause: str) -> None:
    wasm(plugins, "tk", ["cache"])
    m = hosts()
    load(m, plugins, engine, 1)
    refused(m, "tk", "cache_set", args, cause)
    assert ok(m, "tk", "cache_get", {"key": "k"}) == b'{"found":false,"value":null}'


def test_cache_cap_evicts_the_plugins_own_least_recently_used(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["cache"])
    m = hosts(cache_max_entries=8, cache_plugin_max_entries=2)
    load(m, plugins, engine, 1)

    def found(key: str) -> bool:
        return bool(okj(m, "tk", "cache_get", {"key": key})["found"])

    ok(m, "tk", "cache_set", {"key": "a", "value": "MQ=="})
    ok(m, "tk", "cache_set", {"key": "b", "value": "Mg=="})
    assert found("a")  # a is now the most recently used
    ok(m, "tk", "cache_set", {"key": "c", "value": "Mw=="})  # evicts b, not a
    assert (found("b"), found("a"), found("c")) == (False, True, True)
    ok(m, "tk", "cache_set", {"key": "d", "value": "NA=="})  # a was read before c: a goes
    assert (found("a"), found("c"), found("d")) == (False, True, True)


def test_cache_value_larger_than_the_quota_is_refused(plugins: Path, engine: WasmEngine,
                                                      hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["cache"])
    m = hosts(cache_max_bytes=400, cache_plugin_max_bytes=100)
    load(m, plugins, engine, 1)
    ok(m, "tk", "cache_set", {"key": "small", "value": b64(b"x" * 50)})
    refused(m, "tk", "cache_set", {"key": "big", "value": b64(b"x" * 200)},
            "cache_set: value of 203 bytes is larger than a plugin's cache quota (100 bytes)")
    assert okj(m, "tk", "cache_get", {"key": "big"})["found"] is False
    assert okj(m, "tk", "cache_get", {"key": "small"})["found"] is True  # not evicted by it


# -- http_request -------------------------------------------------------------------------------


@pytest.fixture
def web(plugins: Path, engine: WasmEngine, hosts: MakeHost, no_proxy: None) -> Manager:
    """"tk" with the `http` shorthand, allowed_hosts [127.0.0.1]."""
    wasm(plugins, "tk", ["http"], allowed_hosts=["127.0.0.1"])
    m = hosts(http_max_bytes=1000)
    load(m, plugins, engine, 1)
    return m


def test_http_shapes(web: Manager, http_server: HttpServer) -> None:
    assert ok(web, "tk", "http_request", {"method": "GET", "url": http_server.url("/hello"),
                                          "headers": {"X-Req": "from-plugin"}}) == \
        b'{"body":"aGVsbG8gd29ybGQ=","status":200}'
    assert [(s.method, s.path) for s in http_server.seen] == [("GET", "/hello")]
    assert http_server.seen[0].headers["x-req"] == "from-plugin"
    # non-2xx is a normal result; an empty body is "" (Go's empty []byte); GET by default
    assert ok(web, "tk", "http_request", {"url": http_server.url("/nope")}) == \
        b'{"body":"bm90IGZvdW5k","status":404}'
    assert ok(web, "tk", "http_request", {"url": http_server.url("/empty")}) == \
        b'{"body":"","status":204}'


def test_http_post_body_is_base64_both_ways(web: Manager, http_server: HttpServer) -> None:
    payload = "payload-123 é".encode()
    assert ok(web, "tk", "http_request", {
        "method": "post", "url": http_server.url("/echo"),
        "headers": {"Content-Type": "text/plain"}, "body": b64(payload)}) == \
        b'{"body":"' + b64(b"got:" + payload).encode() + b'","status":201}'
    assert (http_server.seen[-1].method, http_server.seen[-1].body) == ("POST", payload)
    assert http_server.seen[-1].headers["content-type"] == "text/plain"
    refused(web, "tk", "http_request", {"method": "POST", "url": http_server.url("/echo"),
                                        "body": "not base64!"},
            "http_request: 'body' must be standard base64 (a Go []byte)")
    assert len(http_server.seen) == 1


def test_http_redirects_are_followed(web: Manager, http_server: HttpServer) -> None:
    assert ok(web, "tk", "http_request", {"url": http_server.url("/redirect")}) == \
        b'{"body":"aGVsbG8gd29ybGQ=","status":200}'
    assert [s.path for s in http_server.seen] == ["/redirect", "/hello"]
    # 303 turns a POST into a GET; 307 keeps the method and the body (Go's client)
    assert okj(web, "tk", "http_request", {"method": "POST", "body": b64(b"x"),
                                           "url": http_server.url("/see-other")}) == {
        "body": b64(b"hello world"), "status": 200}
    assert okj(web, "tk", "http_request", {"method": "POST", "body": b64(b"kept"),
                                           "url": http_server.url("/temp")}) == {
        "body": b64(b"got:kept"), "status": 201}
    assert [(s.method, s.path, s.body) for s in http_server.seen[2:]] == [
        ("POST", "/see-other", b"x"), ("GET", "/hello", b""), ("POST", "/temp", b"kept"),
        ("POST", "/echo", b"kept")]


def test_http_a_redirect_hop_out_of_scope_is_refused(web: Manager,
                                                     http_server: HttpServer) -> None:
    """GoatFlow does not re-check redirect targets; plughost checks every hop."""
    target = http_server.url("/hello", "localhost")
    refused(web, "tk", "http_request", {"url": http_server.url("/away")},
            starts=f'HTTP access to "{target}" not permitted (allowed: ')
    assert [s.path for s in http_server.seen] == ["/away"]  # /hello was never requested


def test_http_at_most_ten_redirects(web: Manager, http_server: HttpServer) -> None:
    refused(web, "tk", "http_request", {"url": http_server.url("/loop")},
            "http_request: stopped after 10 redirects")
    assert [s.path for s in http_server.seen] == ["/loop"] * 11


def test_http_response_bigger_than_the_cap_is_refused(web: Manager,
                                                      http_server: HttpServer) -> None:
    refused(web, "tk", "http_request", {"url": http_server.url("/big")},
            "http_request: response larger than 1000 bytes")
    assert okj(web, "tk", "http_request", {"url": http_server.url("/hello")})["status"] == 200


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x",
                                 "gopher://127.0.0.1/", "http:///no-host", "127.0.0.1/x",
                                 "http://127.0.0.1:99999/"])
def test_http_non_http_urls_are_refused(web: Manager, http_server: HttpServer,
                                        url: str) -> None:
    refused(web, "tk", "http_request", {"url": url},
            f"http_request: {url!r} is not an http(s) URL")
    assert http_server.seen == []


def test_http_argument_errors_are_refused(web: Manager, http_server: HttpServer) -> None:
    refused(web, "tk", "http_request", {"method": "GET"}, "http_request: 'url' is required")
    for headers in ({"X-N": 1}, ["X: y"]):
        refused(web, "tk", "http_request", {"url": http_server.url("/hello"),
                                            "headers": headers}, starts="http_request: "
                                                                        "'headers' must")
    refused(web, "tk", "http_request", '"http://127.0.0.1/"',
            "http_request: the arguments must be a JSON object")
    assert http_server.seen == []


@pytest.mark.parametrize(("scope", "host", "allowed"), [
    (["127.0.0.1"], "127.0.0.1", True),
    (["*"], "127.0.0.1", True),
    (["*"], "localhost", True),
    (["*.localhost"], "localhost", True),  # *.example.com covers example.com itself
    (["LocalHost"], "localhost", True),  # case-insensitive
    (["127.0.0.1:PORT"], "127.0.0.1", True),  # plughost's host:port
    (["127.0.0.1:1"], "127.0.0.1", False),
    (["localhost"], "127.0.0.1", False),  # the name, not what it resolves to
    (["127.0.0.1"], "localhost", False),
    (["api.example.com"], "localhost", False),
])
def test_http_host_scopes(plugins: Path, engine: WasmEngine, hosts: MakeHost,
                          http_server: HttpServer, scope: list[str], host: str,
                          allowed: bool) -> None:
    scope = [s.replace("PORT", str(http_server.port)) for s in scope]
    wasm(plugins, "tk", entries=[{"type": "http", "scope": scope}])
    m = hosts()
    load(m, plugins, engine, 1)
    url = http_server.url("/hello", host)
    if allowed:
        assert ok(m, "tk", "http_request", {"url": url}) == \
            b'{"body":"aGVsbG8gd29ybGQ=","status":200}'
        assert len(http_server.seen) == 1
    else:
        refused(m, "tk", "http_request", {"url": url},
                starts=f'HTTP access to "{url}" not permitted (allowed: ')
        assert http_server.seen == []


@pytest.mark.parametrize("userinfo", ["user:pw@", "127.0.0.1@", "@"])
def test_http_user_info_in_a_url_is_refused(web: Manager, http_server: HttpServer,
                                            userinfo: str) -> None:
    """`http://127.0.0.1@evil/` would go to evil while GoatFlow's text cut reads
    127.0.0.1; plughost refuses user info outright, even towards an allowed host."""
    url = f"http://{userinfo}127.0.0.1:{http_server.port}/hello"
    refused(web, "tk", "http_request", {"url": url},
            f'HTTP access to "{url}" not permitted (user info in a URL is refused)')
    assert http_server.seen == []


def test_http_shorthand_without_allowed_hosts_grants_no_host(
        plugins: Path, engine: WasmEngine, hosts: MakeHost, http_server: HttpServer) -> None:
    wasm(plugins, "tk", ["http", "cache"])
    m = hosts()
    load(m, plugins, engine, 1)
    for url in (http_server.url("/hello"), http_server.url("/hello", "localhost")):
        refused(m, "tk", "http_request", {"url": url},
                f'HTTP access to "{url}" not permitted (allowed: [])')
    assert http_server.seen == []


# -- send_email ----------------------------------------------------------------------------------


@pytest.fixture
def mailer(plugins: Path, engine: WasmEngine, hosts: MakeHost,
           smtp_server: tuple[int, SmtpCollector]) -> Manager:
    wasm(plugins, "mailer", ["email"])
    m = hosts(smtp=smtp_settings(smtp_server))
    load(m, plugins, engine, 1)
    return m


def test_send_email_arrives_with_the_plugin_header(
        mailer: Manager, smtp_server: tuple[int, SmtpCollector]) -> None:
    _, inbox = smtp_server
    assert ok(mailer, "mailer", "send_email", {"to": "alice@example.com", "subject": "Report",
                                               "body": "All good.\nLine two."}) == \
        b'{"ok":true}'
    assert len(inbox.received) == 1
    env = inbox.received[0]
    assert (env.mail_from, env.rcpt_tos) == ("host@example.com", ["alice@example.com"])
    msg = env.message
    assert (msg["Subject"], msg["To"], msg["From"], msg["X-Plughost-Plugin"]) == (
        "Report", "alice@example.com", "host@example.com", "mailer")
    body = msg.get_body(("plain",))
    assert body is not None
    assert body.get_content().replace("\r\n", "\n") == "All good.\nLine two.\n"
    assert msg.get_body(("html",)) is None


def test_send_email_html_flag_and_plughosts_extensions(
        mailer: Manager, smtp_server: tuple[int, SmtpCollector]) -> None:
    _, inbox = smtp_server
    # GoatFlow's bool: the body is the HTML
    assert ok(mailer, "mailer", "send_email", {"to": "a@example.com", "subject": "H",
                                               "body": "<b>bold</b>", "html": True}) == \
        b'{"ok":true}'
    html = inbox.received[0].message.get_body(("html",))
    assert html is not None and "<b>bold</b>" in html.get_content()
    # plughost's: a list of recipients, and html as the HTML text beside a text body
    assert ok(mailer, "mailer", "send_email", {"to": ["b@example.com", "c@example.com"],
                                               "subject": "Two", "body": "x",
                                               "html": "<i>x</i>"}) == b'{"ok":true}'
    env = inbox.received[1]
    assert sorted(env.rcpt_tos) == ["b@example.com", "c@example.com"]
    html2, text2 = env.message.get_body(("html",)), env.message.get_body(("plain",))
    assert html2 is not None and "<i>x</i>" in html2.get_content()
    assert text2 is not None and text2.get_content().strip() == "x"


def test_send_email_recipient_scopes(plugins: Path, engine: WasmEngine, hosts: MakeHost,
                                     smtp_server: tuple[int, SmtpCollector]) -> None:
    wasm(plugins, "mailer", entries=[{"type": "email",
                                      "scope": ["@example.com", "Boss@Corp.test"]}])
    m = hosts(smtp=smtp_settings(smtp_server))
    load(m, plugins, engine, 1)
    for to in ("a@example.com", "B@EXAMPLE.COM", "boss@corp.test"):
        assert ok(m, "mailer", "send_email", {"to": to, "subject": "s", "body": "b"}) == \
            b'{"ok":true}'
    for to in ("a@example.org", "a@notexample.com", "other@corp.test", "boss@corp.test.evil"):
        refused(m, "mailer", "send_email", {"to": to, "subject": "s", "body": "b"},
                f'email recipient "{to}" not allowed')
    # one recipient out of scope refuses the whole message
    refused(m, "mailer", "send_email", {"to": ["a@example.com", "x@evil.test"],
                                        "subject": "s", "body": "b"},
            'email recipient "x@evil.test" not allowed')
    assert [e.rcpt_tos for e in smtp_server[1].received] == [
        ["a@example.com"], ["B@EXAMPLE.COM"], ["boss@corp.test"]]


def test_send_email_without_smtp_configured_is_refused(plugins: Path, engine: WasmEngine,
                                                       hosts: MakeHost) -> None:
    wasm(plugins, "mailer", ["email"])
    m = hosts()
    load(m, plugins, engine, 1)
    refused(m, "mailer", "send_email", {"to": "a@example.com", "subject": "s", "body": "b"},
            "send_email: no SMTP server is configured on this host")


@pytest.mark.parametrize("to", ["nobody", [], ["a@example.com", 5], None, {"a": "b@c.d"},
                                "a@b@example.com"],
                         ids=["no-at", "empty", "non-string", "missing", "object", "two-at"])
def test_send_email_invalid_to_is_refused(mailer: Manager,
                                          smtp_server: tuple[int, SmtpCollector],
                                          to: Any) -> None:
    args: dict[str, Any] = {"subject": "s", "body": "b"}
    if to is not None:
        args["to"] = to
    refused(mailer, "mailer", "send_email", args,
            "send_email: 'to' must be an address or a list of them")
    assert smtp_server[1].received == []


def test_send_email_header_injection_is_refused(
        mailer: Manager, smtp_server: tuple[int, SmtpCollector]) -> None:
    for args in [{"to": "a@example.com", "subject": "Hi\r\nBcc: evil@example.com", "body": "b"},
                 {"to": "a@example.com\r\nBcc: evil@example.com", "subject": "s", "body": "b"},
                 {"to": "a@example.com", "subject": "Hi\nX-Plughost-Plugin: other",
                  "body": "b"}]:
        refused(mailer, "mailer", "send_email", args, starts="send_email: ")
    assert smtp_server[1].received == []


# -- log ----------------------------------------------------------------------------------------


def test_log_needs_no_grant_and_writes_the_plugin_log(plugins: Path, engine: WasmEngine,
                                                      hosts: MakeHost) -> None:
    wasm(plugins, "tk", entries=[])
    m = hosts(policies={"tk": {"permissions": []}})  # nothing granted at all
    load(m, plugins, engine, 1)
    for level, message in [("debug", "d1"), ("info", "i1"), ("warn", "w1"),
                           ("warning", "w2"), ("error", "e1"), ("ERROR", "e2"),
                           ("loud", "unknown level is info"), (0, "d2"), (3, "e3")]:
        assert ok(m, "tk", "log", {"level": level, "message": message}) == b'{"ok":true}'
    ok(m, "tk", "log", {"message": "default-level"})
    ok(m, "tk", "log", {"level": "info", "message": "with", "fields": {"b": 2, "a": "x"}})
    assert plugin_records(m, "tk") == [
        ("debug", "d1"), ("info", "i1"), ("warning", "w1"), ("warning", "w2"),
        ("error", "e1"), ("error", "e2"), ("info", "unknown level is info"), ("debug", "d2"),
        ("error", "e3"), ("info", "default-level"), ("info", "with a=x b=2")]
    assert m.log_for("tk").records()[-1].fields == {"a": "x", "b": "2"}
    refused(m, "tk", "log", {"level": "info", "message": 5}, "log: 'message' must be a string")
    refused(m, "tk", "log", {"message": "m", "fields": [1]}, "log: 'fields' must be an object")
    assert len(plugin_records(m, "tk")) == 11


# -- config_get ----------------------------------------------------------------------------------


CONFIG = {"k": "v", "n": 3, "deep": {"a": [1, None]}, "api_token": "s3cret", "color": "blue",
          "smtp.host": "mx", "auth_mode": "x", "monkey": "banana", "app.env": "mine"}


def test_config_get_shapes_own_config_then_the_hosts(plugins: Path, engine: WasmEngine,
                                                     hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["config"], config=CONFIG)
    wasm(plugins, "other", ["config"], config={"k": "other's"})
    m = hosts()
    load(m, plugins, engine, 2)
    assert ok(m, "tk", "config_get", {"key": "k"}) == b'{"value":"v"}'
    assert ok(m, "tk", "config_get", {"key": "n"}) == b'{"value":3}'
    assert ok(m, "tk", "config_get", {"key": "deep"}) == b'{"value":{"a":[1,null]}}'
    assert ok(m, "other", "config_get", {"key": "k"}) == b'{"value":"other\'s"}'
    assert ok(m, "tk", "config_get", {"key": "app.name"}) == b'{"value":"Acme Desk"}'
    assert ok(m, "tk", "config_get", {"key": "app.timezone"}) == b'{"value":"Europe/Berlin"}'
    assert ok(m, "tk", "config_get", {"key": "app.env"}) == b'{"value":"mine"}'  # own first
    assert ok(m, "other", "config_get", {"key": "app.env"}) == b'{"value":"test"}'
    refused(m, "tk", "config_get", {"key": "absent"}, "unknown config key: absent")
    refused(m, "tk", "config_get", {"key": ""}, "config_get: 'key' must be a non-empty string")
    refused(m, "tk", "config_get", {}, "config_get: 'key' is required")


@pytest.mark.parametrize("key", ["api_token", "smtp.host", "auth_mode", "monkey",
                                 "database.password"])
def test_config_unscoped_entry_refuses_sensitive_keys(plugins: Path, engine: WasmEngine,
                                                      hosts: MakeHost, key: str) -> None:
    wasm(plugins, "tk", ["config"], config=CONFIG)
    m = hosts()
    load(m, plugins, engine, 1)
    msg = refused(m, "tk", "config_get", {"key": key}, f'config key "{key}" access denied')
    assert "s3cret" not in msg and "banana" not in msg
    assert ok(m, "tk", "config_get", {"key": "color"}) == b'{"value":"blue"}'


def test_config_key_scopes(plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "named", entries=[{"type": "config", "access": "read",
                                     "scope": ["app.*", "API_TOKEN"]}], config=CONFIG)
    wasm(plugins, "star", entries=[{"type": "config", "access": "read", "scope": ["*"]}],
         config=CONFIG)
    wasm(plugins, "both", entries=[{"type": "config", "access": "read"},
                                   {"type": "config", "access": "read", "scope": ["smtp.*"]}],
         config=CONFIG)
    wasm(plugins, "noaccess", entries=[{"type": "config"}], config=CONFIG)
    m = hosts()
    load(m, plugins, engine, 4)
    # a key a pattern names is readable, sensitive or not (case-insensitive match)
    assert ok(m, "named", "config_get", {"key": "api_token"}) == b'{"value":"s3cret"}'
    assert ok(m, "named", "config_get", {"key": "app.name"}) == b'{"value":"Acme Desk"}'
    refused(m, "named", "config_get", {"key": "color"}, 'config key "color" access denied')
    assert ok(m, "star", "config_get", {"key": "api_token"}) == b'{"value":"s3cret"}'
    assert ok(m, "both", "config_get", {"key": "smtp.host"}) == b'{"value":"mx"}'
    assert ok(m, "both", "config_get", {"key": "color"}) == b'{"value":"blue"}'
    refused(m, "both", "config_get", {"key": "api_token"}, 'config key "api_token" access denied')
    # an entry without access grants no read
    refused(m, "noaccess", "config_get", {"key": "color"}, 'config key "color" access denied')


# -- time_now (GoatFlow's) ---------------------------------------------------------------------


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
    wasm(plugins, "a")
    relay(plugins, "relay")
    m = hosts(policies={"a": {"permissions": []}, "relay": {"permissions": []}})
    load(m, plugins, engine, 2)
    before = time.time_ns()
    raw = ok(m, "a", "time_now", "")
    from_grpc = m.call("relay", "host", {"function": "time_now"})
    after = time.time_ns()
    assert re.fullmatch(rb'\{"now":"[^"]+"\}', raw), raw
    assert set(from_grpc) == {"result"} and set(from_grpc["result"]) == {"now"}
    for text in (json.loads(raw)["now"], from_grpc["result"]["now"]):
        assert before <= _go_time_ns(text) <= after


# -- translate ----------------------------------------------------------------------------------


#: GoatFlow's i18n shape: texts filed as `w.<key>`
I18N = {"namespace": "w", "languages": ["en", "de"], "translations": {
    "en": {"hi": "hello", "greet": "Hello %s, you have %v new messages", "count": "%d items",
           "pct": "%.1f%%", "only_en": "english only", "markup": "<b>&</b>"},
    "de": {"hi": "hallo", "greet": "Hallo %s"}}}


def write_i18n_plugin(plugins: Path, name: str) -> None:
    """testkit whose registration carries I18N (the testkit has only en.hi)."""
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
        {"name": name, "version": "1.0.0", "runtime": "wasm", "permissions": []}))


@pytest.fixture
def i18n(plugins: Path, engine: WasmEngine, hosts: MakeHost) -> Manager:
    write_i18n_plugin(plugins, "words")
    wasm(plugins, "tk")
    m = hosts(policies={"words": {"permissions": []}, "tk": {"permissions": []}})
    load(m, plugins, engine, 2)
    return m


def translated(m: Manager, name: str, args: dict[str, Any]) -> str:
    raw = ok(m, name, "translate", args)
    assert raw.startswith(b'{"value":') and raw.endswith(b"}"), raw
    return str(json.loads(raw)["value"])


def test_translate_shape_and_lookup(i18n: Manager) -> None:
    assert ok(i18n, "tk", "translate", {"key": "hi"}) == b'{"value":"hello"}'  # its own table
    assert ok(i18n, "tk", "translate", {"key": "missing.key"}) == b'{"value":"missing.key"}'
    assert ok(i18n, "words", "translate", {"key": "hi"}) == b'{"value":"hello"}'  # own, bare
    assert ok(i18n, "words", "translate", {"key": "w.hi"}) == b'{"value":"hello"}'
    assert ok(i18n, "tk", "translate", {"key": "w.hi"}) == b'{"value":"hello"}'  # the registry
    assert ok(i18n, "tk", "translate", {"key": "w.markup"}) == \
        b'{"value":"\\u003cb\\u003e\\u0026\\u003c/b\\u003e"}'


def test_translate_language_fallback(i18n: Manager) -> None:
    assert translated(i18n, "tk", {"key": "w.hi", "lang": "de"}) == "hallo"
    assert translated(i18n, "tk", {"key": "w.hi", "lang": "de-AT"}) == "hallo"
    assert translated(i18n, "tk", {"key": "w.hi", "lang": "fr"}) == "hello"
    assert translated(i18n, "words", {"key": "only_en", "lang": "de"}) == "english only"
    assert translated(i18n, "words", {"key": "nope", "lang": "de"}) == "nope"


@pytest.mark.parametrize(("key", "args", "text"), [
    ("greet", ["Ann", 3], "Hello Ann, you have 3 new messages"),
    ("count", [5], "%!d(float64=5) items"),  # JSON numbers are Go float64
    ("greet", ["Ann"], "Hello Ann, you have %!v(MISSING) new messages"),
    ("hi", ["x"], "hello%!(EXTRA string=x)"),
    ("pct", [12.345], "12.3%"),
    ("greet", [7, True], "Hello %!s(float64=7), you have true new messages"),
    ("nope %s", ["x"], "nope %s"),  # not found: the key, not formatted
    ("hi", [], "hello"),
])
def test_translate_applies_go_sprintf(i18n: Manager, key: str, args: list[Any],
                                      text: str) -> None:
    assert translated(i18n, "words", {"key": key, "args": args}) == text
    assert translated(i18n, "tk", {"key": key if key.startswith("nope") else f"w.{key}",
                                   "args": args}) == text


def test_translate_older_named_placeholders_and_argument_errors(i18n: Manager) -> None:
    assert translated(i18n, "tk", {"key": "Hi {name}!", "args": {"name": "Bob"}}) == "Hi Bob!"
    assert translated(i18n, "tk", {"key": "{a}{b}", "args": {"a": "{b}", "b": "{a}"}}) == \
        "{b}{a}"
    refused(i18n, "tk", "translate", {"lang": "en"}, "translate: 'key' is required")
    refused(i18n, "tk", "translate", {"key": "hi", "args": "x"},
            "translate: 'args' must be an array")


def test_translate_follows_the_registry(i18n: Manager) -> None:
    assert translated(i18n, "tk", {"key": "w.hi"}) == "hello"
    i18n.unregister("words")
    assert translated(i18n, "tk", {"key": "w.hi"}) == "w.hi"


def test_translate_uses_the_calls_language_over_grpc(plugins: Path, engine: WasmEngine,
                                                     hosts: MakeHost) -> None:
    write_i18n_plugin(plugins, "words")
    relay(plugins, "r")
    m = hosts()
    load(m, plugins, engine, 2)
    assert m.call("r", "host", {"function": "translate", "args": {"key": "w.hi"},
                                "_lang": "de"}) == {"result": {"value": "hallo"}}
    assert m.call("r", "host", {"function": "translate", "args": {"key": "w.hi"}}) == {
        "result": {"value": "hello"}}


# -- publish_event, secure config, org_id ---------------------------------------------------------


def test_publish_event_needs_no_grant_and_reaches_the_listeners(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "tk")
    relay(plugins, "r")
    m = hosts(policies={"tk": {"permissions": []}, "r": {"permissions": []}})
    load(m, plugins, engine, 2)
    events: list[Event] = []
    m.add_listener(lambda e: events.append(e) if e.kind == "plugin_event" else None)
    assert ok(m, "tk", "publish_event", {"channel": "board", "event_type": "moved",
                                         "data": '{"id":7}'}) == b'{"status":"ok"}'
    assert m.call("r", "host", {"function": "publish_event", "args": {
        "channel": "c2", "event_type": "t2", "data": "x"}}) == {"result": {"status": "ok"}}
    assert [(e.plugin, e.channel, e.event_type, e.detail) for e in events] == [
        ("tk", "board", "moved", '{"id":7}'), ("r", "c2", "t2", "x")]
    refused(m, "tk", "publish_event", {"channel": "c", "event_type": "t",
                                       "data": "x" * (64 * 1024 + 1)},
            "publish_event: 'data' is larger than 64 KiB")
    assert len(events) == 2


def test_secure_config_is_per_plugin_per_org_and_encrypted(
        plugins: Path, engine: WasmEngine, hosts: MakeHost, tmp_path: Path) -> None:
    wasm(plugins, "a")
    wasm(plugins, "b")
    relay(plugins, "r")
    m = hosts(policies={name: {"permissions": []} for name in ("a", "b", "r")})
    load(m, plugins, engine, 3)
    assert ok(m, "a", "secure_config_set", {"key": "api", "value": "s3cret-value"}) == \
        b'{"status":"ok"}'
    assert ok(m, "a", "secure_config_get", {"key": "api"}) == b'{"value":"s3cret-value"}'
    refused(m, "b", "secure_config_get", {"key": "api"}, 'secure config key "api" not found')
    refused(m, "a", "secure_config_get", {"key": "nope"}, 'secure config key "nope" not found')
    # the organisation of the call (its `_org_id`) keys the value too
    assert m.call("r", "host", {"function": "secure_config_set",
                                "args": {"key": "k", "value": "org7"}, "_org_id": 7}) == {
        "result": {"status": "ok"}}
    assert m.call("r", "host", {"function": "secure_config_get", "args": {"key": "k"},
                                "_org_id": 7}) == {"result": {"value": "org7"}}
    grpc_refused(m, "r", "secure_config_get", {"key": "k"}, 'secure config key "k" not found')
    stored = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*.sqlite3*"))
    assert b"secure_config" in stored  # the table is there ...
    assert b"s3cret-value" not in stored and b"org7" not in stored  # ... the values sealed


def test_org_id_is_a_bare_number_from_the_call(plugins: Path, engine: WasmEngine,
                                               hosts: MakeHost) -> None:
    wasm(plugins, "tk")
    relay(plugins, "r")
    m = hosts(policies={"tk": {"permissions": []}, "r": {"permissions": []}})
    load(m, plugins, engine, 2)
    assert ok(m, "tk", "org_id", "") == b"0"
    assert ok(m, "tk", "org_id", {"_org_id": 9}) == b"0"  # never from the host call's args
    assert m.call("r", "host", {"function": "org_id", "_org_id": 42}) == {"result": 42}
    assert m.call("r", "host", {"function": "org_id"}) == {"result": 0}


# -- file storage --------------------------------------------------------------------------------


def _utc(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_file_storage_shapes_and_layout(plugins: Path, engine: WasmEngine, hosts: MakeHost,
                                        tmp_path: Path) -> None:
    wasm(plugins, "tk", ["file"])
    m = hosts()
    load(m, plugins, engine, 1)
    assert ok(m, "tk", "list_files", {"prefix": ""}) == b"null"
    assert ok(m, "tk", "store_file", {"key": "docs/a.txt", "data": b64(b"hi"),
                                      "metadata": {"content-type": "text/plain"}}) == \
        b'{"status":"ok"}'
    assert ok(m, "tk", "store_file", {"key": "b.bin", "data": b64(b"\x00\x01\x02")}) == \
        b'{"status":"ok"}'
    path = tmp_path / "data" / "files" / "tk" / "docs" / "a.txt"
    assert path.read_bytes() == b"hi"
    ma = _utc(path.stat().st_mtime)
    mb = _utc((tmp_path / "data" / "files" / "tk" / "b.bin").stat().st_mtime)
    assert ok(m, "tk", "get_file", {"key": "docs/a.txt"}) == (
        '{"data":"aGk=","metadata":{"_modified":"MA","_size":"2","content-type":"text/plain"}}'
        .replace("MA", ma).encode())
    assert ok(m, "tk", "list_files", {"prefix": ""}) == (
        '[{"key":"tk/b.bin","metadata":{"_modified":"MB","_size":"3"},"modified_at":"MB",'
        '"size":3},{"content_type":"text/plain","key":"tk/docs/a.txt","metadata":'
        '{"_modified":"MA","_size":"2","content-type":"text/plain"},"modified_at":"MA",'
        '"size":2}]'.replace("MA", ma).replace("MB", mb).encode())
    assert [f["key"] for f in okj(m, "tk", "list_files", {"prefix": "docs/"})] == [
        "tk/docs/a.txt"]
    assert ok(m, "tk", "delete_file", {"key": "docs/a.txt"}) == b'{"status":"ok"}'
    assert not path.exists() and not path.with_name("a.txt.meta.json").exists()
    refused(m, "tk", "get_file", {"key": "docs/a.txt"}, "file not found: docs/a.txt")
    assert ok(m, "tk", "delete_file", {"key": "docs/a.txt"}) == b'{"status":"ok"}'


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "a/../../x", "x.meta.json", "."])
def test_file_keys_cannot_leave_the_plugins_directory(plugins: Path, engine: WasmEngine,
                                                      hosts: MakeHost, tmp_path: Path,
                                                      key: str) -> None:
    wasm(plugins, "tk", ["file"])
    m = hosts()
    load(m, plugins, engine, 1)
    refused(m, "tk", "store_file", {"key": key, "data": "aGk="}, f"invalid file key: {key}")
    refused(m, "tk", "get_file", {"key": key}, f"invalid file key: {key}")
    assert not (tmp_path / "data" / "escape").exists()
    assert not (tmp_path / "data" / "files" / "x").exists()


def test_file_quota_from_the_policy(plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["file"], resources={"max_file_storage_bytes": 1000})
    m = hosts(policies={"tk": {"max_file_storage_bytes": 10}})
    load(m, plugins, engine, 1)
    assert ok(m, "tk", "store_file", {"key": "a", "data": b64(b"x" * 8)}) == b'{"status":"ok"}'
    refused(m, "tk", "store_file", {"key": "b", "data": b64(b"x" * 5)},
            "storage limit exceeded (8 bytes used, 5 more would pass the quota of 10)")
    # replacing a file: its old size does not count
    assert ok(m, "tk", "store_file", {"key": "a", "data": b64(b"x" * 10)}) == \
        b'{"status":"ok"}'


def test_file_storage_is_per_organisation(plugins: Path, engine: WasmEngine, hosts: MakeHost,
                                          tmp_path: Path) -> None:
    relay(plugins, "r", ["file"])
    m = hosts()
    load(m, plugins, engine, 1)
    assert m.call("r", "host", {"function": "store_file", "_org_id": 3,
                                "args": {"key": "a.txt", "data": b64(b"org")}}) == {
        "result": {"status": "ok"}}
    assert (tmp_path / "data" / "files" / "r" / "org-3" / "a.txt").read_bytes() == b"org"
    listed = m.call("r", "host", {"function": "list_files", "args": {}, "_org_id": 3})
    assert [f["key"] for f in listed["result"]] == ["r/org-3/a.txt"]
    assert m.call("r", "host", {"function": "get_file", "args": {"key": "a.txt"},
                                "_org_id": 3})["result"]["data"] == b64(b"org")
    # another organisation sees none of it
    assert m.call("r", "host", {"function": "list_files", "args": {}, "_org_id": 4}) == {
        "result": None}
    grpc_refused(m, "r", "get_file", {"key": "a.txt"}, "file not found: a.txt", _org_id=4)
    grpc_refused(m, "r", "get_file", {"key": "a.txt"}, "file not found: a.txt")


# -- plugin_call -----------------------------------------------------------------------------------


def test_plugin_call_returns_the_targets_raw_bytes(plugins: Path, engine: WasmEngine,
                                                   hosts: MakeHost) -> None:
    wasm(plugins, "a", ["plugin.call"])
    wasm(plugins, "b")
    m = hosts()
    load(m, plugins, engine, 2)
    assert okj(m, "a", "plugin_call", call_args("b", "echo", {"x": [1, "two"]})) == {
        "x": [1, "two"]}
    assert m.call("b", "count") == 1
    assert ok(m, "a", "plugin_call", call_args("b", "count")) == b"2"  # b's own instance
    assert ok(m, "a", "plugin_call", call_args("b", "version")) == b'"1.0.0"'
    assert m.call("b", "count") == 3
    # an empty answer is the target's: no refusal logged (the guest cannot tell it from 0)
    assert ok(m, "a", "plugin_call", call_args("b", "nothing")) == b""


def test_plugin_call_target_scope(plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "a", entries=[{"type": "plugin_call", "scope": ["b"]}])
    wasm(plugins, "star", entries=[{"type": "plugin_call", "scope": ["*"]}])
    wasm(plugins, "b")
    wasm(plugins, "c")
    m = hosts()
    load(m, plugins, engine, 4)
    assert ok(m, "a", "plugin_call", call_args("b", "count")) == b"1"
    refused(m, "a", "plugin_call", call_args("c", "count"),
            starts='not permitted to call plugin "c" (allowed: ')
    refused(m, "a", "plugin_call", call_args("B", "count"),  # exact names
            starts='not permitted to call plugin "B" (allowed: ')
    assert ok(m, "star", "plugin_call", call_args("c", "count")) == b"1"
    assert m.call("c", "count") == 2


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
    refused(m, "a", "plugin_call", call_args("a", "count"),
            "plugin_call a.count failed: CallCycle: plugin 'a': cycle refused (a -> a): a "
            "plugin is entered at most once on one call path")
    assert m.call("a", "count") == 1  # it never ran
    # refused before the target was touched: not a failed call of `a`
    assert "call_error" not in kinds


def test_a_host_function_calling_back_into_its_plugin_is_refused(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    """The rule lives in the call chain, not in plugin_call: an application's own host
    function that calls the manager is held to it too."""
    wasm(plugins, "a", resources={"max_instances": 4})
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
    refused(m, "a", "callback", {"plugin": "a"}, contains=("cycle refused (a -> a)",))
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
    wasm(plugins, "b")
    m = hosts()
    load(m, plugins, engine, 2)
    m.disable("b")
    # GoatFlow's words for the two a caller can act on
    refused(m, "a", "plugin_call", call_args("b", "count"),
            'plugin "b" is disabled (required by "a")')
    m.enable("b")
    refused(m, "a", "plugin_call", call_args("ghost", "count"),
            'plugin "ghost" not found (required by "a" to call "count")')
    refused(m, "a", "plugin_call", call_args("b", "fail"),
            "plugin_call b.fail failed: PluginCallError: plugin 'b': fail: asked to fail")
    refused(m, "a", "plugin_call", {"plugin": "b"}, "plugin_call: 'function' is required")
    refused(m, "a", "plugin_call", {"function": "count"}, "plugin_call: 'plugin' is required")
    assert ok(m, "a", "plugin_call", call_args("b", "count")) == b"1"


def test_plugin_call_depth_limit_in_process(plugins: Path, engine: WasmEngine,
                                            hosts: MakeHost) -> None:
    wasm(plugins, "a", ["plugin.call"])
    wasm(plugins, "b")
    m = hosts(max_call_depth=1)
    load(m, plugins, engine, 2)
    refused(m, "a", "plugin_call", call_args("b", "count"),
            "plugin call depth exceeded (max 1): a -> b")
    assert m.call("b", "count") == 1


def test_plugin_call_chain_wasm_grpc_wasm_and_cycle_through_grpc(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "a", ["plugin.call"], resources={"call_timeout_ms": 15000})
    wasm(plugins, "b")
    relay(plugins, "relay", ["plugin.call"])
    m = hosts()
    load(m, plugins, engine, 3)
    inner = call_args("b", "echo", {"deep": True})
    assert okj(m, "a", "plugin_call", call_args("relay", "relay", {"call": inner})) == {
        "deep": True}
    # relay calling back the plugin that called it: the host finds the chain a -> relay
    # for relay's HostCall (the call id crossed the process boundary) and refuses.
    back = call_args("a", "count")
    refused(m, "a", "plugin_call", call_args("relay", "relay", {"call": back}),
            starts="plugin_call relay.relay failed", contains=("cycle",))
    assert any("cycle refused" in r and "a -> relay -> a" in r for r in refusals(m, "relay"))
    assert m.call("a", "count") == 1  # a was never re-entered
    # grpc first: relay -> b works, relay -> relay is a cycle
    assert m.call("relay", "relay", {"call": inner}) == {"deep": True}
    with pytest.raises(PluginCallError, match="cycle"):
        m.call("relay", "relay", {"call": call_args("relay", "relay", {"call": inner})})


def test_plugin_call_depth_limit_across_processes_uses_the_call_id(
        plugins: Path, engine: WasmEngine, hosts: MakeHost, tmp_path: Path) -> None:
    wasm(plugins, "x", ["plugin.call"], resources={"call_timeout_ms": 25000})
    wasm(plugins, "y")
    relay(plugins, "relay", ["plugin.call"])
    m = hosts(max_call_depth=2)
    load(m, plugins, engine, 3)
    to_y = call_args("y", "echo", {"v": 1})
    # x -> relay -> y is three plugins deep: refused in relay's (out-of-process) host call.
    refused(m, "x", "plugin_call", call_args("relay", "relay", {"call": to_y}),
            starts="plugin_call relay.relay failed", contains=("depth",))
    assert 'host_call plugin_call failed: plugin "relay": plugin call depth exceeded ' \
           "(max 2): x -> relay -> y" in refusals(m, "relay")
    # relay -> y is two deep: allowed.
    assert m.call("relay", "relay", {"call": to_y}) == {"v": 1}
    # While x -> relay is in flight (a longer chain into relay), a direct relay -> y call is
    # still judged by its own chain: the host tells the two apart by the forwarded call id.
    marker, go = tmp_path / "waiting", tmp_path / "go"
    results: list[Any] = []
    t = threading.Thread(target=lambda: results.append(okj(
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
        refusal = next(r for r in refusals(m, "a") if "plugin_call b.loop failed" in r)
        budget = int(re.search(r"deadline of (\d+) ms", refusal)[1])  # type: ignore[index]
        assert budget <= 300
    finally:
        m.close()


# -- the Host gRPC service: the same table, the same words ---------------------------------------


def test_grpc_host_service_enforces_the_same_grants(plugins: Path, engine: WasmEngine,
                                                    hosts: MakeHost) -> None:
    # Both registrations ask for [plugin.call, config]; a manifest that declares wins.
    relay(plugins, "nocfg", ["plugin.call"], config={"k": "secret"})
    relay(plugins, "withcfg", ["config"], config={"k": "v", "n": {"a": 1}})
    relay(plugins, "undeclared", config={"k": "v"})  # the registration's grants
    m = hosts()
    load(m, plugins, engine, 3)
    denied = m.call("nocfg", "config", {"key": "k"})
    assert denied == {"error": 'plugin "nocfg": config key "k" access denied'}
    assert refusals(m, "nocfg") == [
        'host_call config_get failed: plugin "nocfg": config key "k" access denied']
    assert m.call("withcfg", "config", {"key": "k"}) == {"value": "v"}
    assert m.call("withcfg", "config", {"key": "n"}) == {"value": {"a": 1}}
    assert m.call("withcfg", "config", {"key": "absent"}) == {
        "error": 'plugin "withcfg": unknown config key: absent'}
    assert m.call("undeclared", "config", {"key": "k"}) == {"value": "v"}
    assert m.grants("undeclared").as_list() == [{"type": "plugin_call"},
                                                {"type": "config", "access": "read"}]
    # Argument validation and other grants: the same table as wasm.
    grpc_refused(m, "withcfg", "config_get", {"key": 5}, "config_get: 'key' must be a string")
    grpc_refused(m, "withcfg", "http_request", {"url": "http://127.0.0.1:9/"},
                 'HTTP access to "http://127.0.0.1:9/" not permitted (allowed: [])')
    assert m.call("withcfg", "host", {"function": "translate", "args": {"key": "k"}}) == {
        "result": {"value": "k"}}


# -- HostAPI: an application's own backends -------------------------------------------------------


class RecordingBackend:
    """An application backend: an in-memory "database", cache and web that record every
    call, and call the table and URL checks the host hands them, as a backend must."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.rows: list[dict[str, Any]] = [{"id": 7, "title": "from the app"}]
        self.cache: dict[tuple[str, str], bytes] = {}

    def last(self) -> tuple[Any, ...]:
        return self.calls[-1]

    def db_query(self, plugin: str, query: str, args: list[Any], *,
                 check: Callable[..., None]) -> list[dict[str, Any]]:
        self.calls.append(("db_query", plugin, query, args))
        check(["notes"] if "notes" in query else ["secret"], [])
        return [r for r in self.rows if not args or r["id"] == args[0]]

    def db_exec(self, plugin: str, query: str, args: list[Any], *,
                check: Callable[..., None]) -> int:
        self.calls.append(("db_exec", plugin, query, args))
        check([], ["notes"])
        self.rows.append({"id": args[0], "title": args[1]})
        return 1

    def cache_get(self, plugin: str, key: str) -> bytes | None:
        self.calls.append(("cache_get", plugin, key, None))
        return self.cache.get((plugin, key))

    def cache_set(self, plugin: str, key: str, value: bytes, ttl: float | None) -> None:
        self.calls.append(("cache_set", plugin, key, ttl))
        self.cache[(plugin, key)] = value

    def cache_delete(self, plugin: str, key: str) -> bool:
        self.calls.append(("cache_delete", plugin, key, None))
        return self.cache.pop((plugin, key), None) is not None

    def http_request(self, plugin: str, method: str, url: str, headers: dict[str, str],
                     body: bytes | None, timeout: float | None, *,
                     check: Callable[[str], None]) -> tuple[int, bytes]:
        self.calls.append(("http_request", plugin, method, url))
        check("http://elsewhere.test/")  # e.g. a redirect the app's client would follow
        return 204, b""

    def send_email(self, plugin: str, to: list[str], subject: str, body: str,
                   html: str | None) -> None:
        self.calls.append(("send_email", plugin, to, subject))


def test_hostapi_backend_is_what_the_host_functions_reach(
        plugins: Path, engine: WasmEngine, hosts: MakeHost, tmp_path: Path) -> None:
    backend = RecordingBackend()
    wasm(plugins, "tk", ["cache", "email"], entries=[
        {"type": "db", "access": "readwrite", "scope": ["notes"]},
        {"type": "http", "scope": ["api.test"]}])
    wasm(plugins, "nodb", ["cache"])
    m = hosts(host=backend)
    load(m, plugins, engine, 2)
    assert ok(m, "tk", "db_query", {"query": "SELECT * FROM notes WHERE id = ?",
                                    "args": [7]}) == b'[{"id":7,"title":"from the app"}]'
    assert backend.calls == [("db_query", "tk", "SELECT * FROM notes WHERE id = ?", [7])]
    # the backend's table check is the plugin's scope
    refused(m, "tk", "db_query", {"query": "SELECT * FROM secret"},
            'access to table "secret" not permitted')
    assert ok(m, "tk", "db_exec", {"query": "INSERT INTO notes VALUES (?, ?)",
                                   "args": [8, "new"]}) == b'{"affected":1}'
    assert backend.last() == ("db_exec", "tk", "INSERT INTO notes VALUES (?, ?)", [8, "new"])
    ok(m, "tk", "cache_set", {"key": "k", "value": b64(b"v"), "ttl": 5})
    assert backend.last() == ("cache_set", "tk", "k", 5)
    assert backend.cache[("tk", "k")] == b"v"  # bytes, decoded from base64
    assert ok(m, "nodb", "cache_get", {"key": "k"}) == b'{"found":false,"value":null}'
    assert backend.last() == ("cache_get", "nodb", "k", None)  # the backend got nodb's name
    assert ok(m, "tk", "cache_get", {"key": "k"}) == b'{"found":true,"value":"dg=="}'
    ok(m, "tk", "send_email", {"to": "a@example.com", "subject": "s", "body": "b"})
    assert backend.last() == ("send_email", "tk", ["a@example.com"], "s")
    # the backend's URL check is the plugin's http scope
    refused(m, "tk", "http_request", {"url": "http://api.test/x"},
            starts='HTTP access to "http://elsewhere.test/" not permitted (allowed: ')
    assert backend.last() == ("http_request", "tk", "GET", "http://api.test/x")
    # Grants and scopes are checked before a backend is reached.
    n = len(backend.calls)
    refused(m, "nodb", "db_query", {"query": "SELECT 1"}, "database read access not granted")
    refused(m, "tk", "http_request", {"url": "http://other.test/"},
            starts='HTTP access to "http://other.test/" not permitted (allowed: ')
    refused(m, "tk", "db_query", {"query": "SELECT 1", "args": "not a list"},
            "db_query: 'args' must be a list of strings, numbers, booleans or nulls")
    assert len(backend.calls) == n
    assert not (tmp_path / "data" / "db").exists()  # the default SQLite backend was not used


# -- GoatFlow details found by review: declarations, texts, IPv6, raw args -----------------


@pytest.mark.parametrize("flat", [["log"], ["http"]])
def test_a_manifest_declaring_only_log_or_hostless_http_gets_no_default(
        plugins: Path, engine: WasmEngine, hosts: MakeHost, flat: list[str]) -> None:
    """The manifest declared (declared_permissions() itself does not fall back to the
    registration for it), and declaring anything replaces the default entirely."""
    wasm(plugins, "tk", flat)
    m = hosts()
    load(m, plugins, engine, 1)
    assert m.grants("tk").as_list() == []
    refused(m, "tk", "db_query", {"query": "SELECT 1"}, "database read access not granted")


def test_refusal_texts_show_the_allowed_scope_as_go_does(plugins: Path, engine: WasmEngine,
                                                         hosts: MakeHost) -> None:
    wasm(plugins, "tk", entries=[{"type": "http", "scope": ["a.test", "*.b.test"]},
                                 {"type": "plugin_call", "scope": ["x", "y"]}])
    m = hosts()
    load(m, plugins, engine, 1)
    refused(m, "tk", "http_request", {"url": "http://c.test/"},
            'HTTP access to "http://c.test/" not permitted (allowed: [a.test *.b.test])')
    refused(m, "tk", "plugin_call", call_args("z", "count"),
            'not permitted to call plugin "z" (allowed: [x y])')


@pytest.fixture
def http6_server(no_proxy: None) -> Iterator[HttpServer]:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    yield from serve_http("::1")


@pytest.mark.parametrize("pattern", ["[::1]", "[::1]:PORT", "::1"])
def test_http_scope_can_name_an_ipv6_literal(plugins: Path, engine: WasmEngine,
                                             hosts: MakeHost, http6_server: HttpServer,
                                             pattern: str) -> None:
    wasm(plugins, "tk", entries=[{"type": "http", "scope": [
        pattern.replace("PORT", str(http6_server.port))]}])
    m = hosts()
    load(m, plugins, engine, 1)
    assert ok(m, "tk", "http_request", {"url": http6_server.url("/hello")}) == \
        b'{"body":"aGVsbG8gd29ybGQ=","status":200}'


def test_plugin_call_passes_the_args_through_unchanged(plugins: Path, engine: WasmEngine,
                                                       hosts: MakeHost) -> None:
    wasm(plugins, "a", ["plugin.call"])
    wasm(plugins, "b")
    m = hosts()
    load(m, plugins, engine, 2)
    echoed = ok(m, "a", "plugin_call", '{"plugin": "b", "function": "echo", '
                                       '"args": {"big": 1e400, "s": "\\u00e9"}}')
    json.loads(echoed, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert echoed == b'{"big": 1e400, "s": "\\u00e9"}'
