"""Every resource is capped per plugin, and the call deadline bounds everything.

Real plugins (testkit wasm, an SDK grpc plugin), a real SQLite file, a local HTTP server
that drips, a local SMTP server. Sizes are counted, never timed: where a deadline is the
point, the proof is the reason the host gives (a query with no end returns "interrupted at
the call's deadline"; without the cap the test would hang until pytest-timeout fails it).
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plughost import Loader, Manager
from plughost.errors import HostCallError, PluginTimeout
from plughost.host.cache import MemoryCache
from plughost.host.mail import SMTPSettings
from plughost.logs import DEFAULT_MAX_CHARS, MAX_MESSAGE_CHARS, PluginLog
from plughost.runtimes.wasm import WasmEngine

from .conftest import MakeHost, SmtpCollector, status_mib
from .test_grpc_runtime import fixture_plugin
from .test_host_functions import b64, load, ok, okj, raw_call, refusals, refused, wasm


def peak_rss_mib() -> float:
    """The peak RSS since the last `reset_peak_rss`."""
    return status_mib("VmHWM")


def reset_peak_rss() -> float:
    """Reset VmHWM to the current RSS (Linux: "5" to clear_refs); returns it."""
    Path("/proc/self/clear_refs").write_text("5")
    return peak_rss_mib()

# -- logs ---------------------------------------------------------------------------------


def test_a_log_buffer_is_capped_in_characters_and_messages_are_cut() -> None:
    log = PluginLog("p", capacity=1000, max_chars=100_000)
    for _ in range(50):
        log.info("z" * 30_000, source="plugin")
    records = log.records()
    assert log.chars <= 100_000 and 1 <= len(records) < 50
    assert all(len(r.message) < MAX_MESSAGE_CHARS + 64 for r in records)
    assert records[-1].message.endswith(f"[{30_000 - MAX_MESSAGE_CHARS} more characters cut]")
    assert log.chars == sum(len(r.message) for r in records)  # the count stays exact
    for i in range(2000):  # the line cap still holds, and the count with it
        log.info(f"line {i}")
    assert len(log.records()) == 1000 and log.chars == sum(len(r.message)
                                                           for r in log.records())


def test_the_log_host_function_is_capped(plugins: Path, engine: WasmEngine,
                                         hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["log"])
    m = hosts()
    load(m, plugins, engine, 1)
    for _ in range(100):
        ok(m, "tk", "log", {"level": "info", "message": "q" * 200_000})
    records = [r for r in m.log_for("tk").records() if r.source == "plugin"]
    assert records and all(len(r.message) < MAX_MESSAGE_CHARS + 64 for r in records)
    assert m.log_for("tk").chars <= DEFAULT_MAX_CHARS


def test_grpc_log_rpc_and_stdout_are_bounded(plugins: Path, engine: WasmEngine) -> None:
    fixture_plugin(plugins, "flood", "flood_plugin.py",
                   {"permissions": ["log"], "resources": {"call_timeout_ms": 120_000}})
    manager = Manager()
    loader = Loader(plugins, manager, engine=engine)
    try:
        assert loader.load_all() == (1, [])
        before = reset_peak_rss()
        assert manager.call("flood", "spew", {"bytes": 400 * 1024 * 1024}) == 400 * 1024 * 1024
        assert manager.call("flood", "biglog", {"count": 40, "chars": 1_000_000}) == 40
        # the 400 MiB line without a newline was read in pieces, never whole
        grown = peak_rss_mib() - before
        assert grown < 200, f"the host grew {grown:.0f} MiB"
        log = manager.log_for("flood")
        assert log.chars <= DEFAULT_MAX_CHARS
        assert all(len(r.message) < MAX_MESSAGE_CHARS + 64 for r in log.records())
        assert any(r.source == "plugin" for r in log.records())
    finally:
        loader.close()
        manager.close()


# -- cache ----------------------------------------------------------------------------------


def test_one_plugin_cannot_evict_anothers_cache_keys() -> None:
    cache = MemoryCache(max_entries=100, max_bytes=10_000, plugin_max_entries=40,
                        plugin_max_bytes=4_000)
    for i in range(10):
        cache.set("quiet", f"k{i}", bytes([i]), None)
    for i in range(10_000):  # a flood: more keys and bytes than the whole cache
        cache.set("noisy", f"k{i}", b"v" * 50, None)
    assert [cache.get("quiet", f"k{i}") for i in range(10)] == [bytes([i]) for i in range(10)]
    entries, size = cache.usage("noisy")
    assert entries <= 40 and size <= 4_000
    assert cache.get("noisy", "k9999") == b"v" * 50  # its newest keys are the ones kept
    assert cache.get("quiet", "k9999") is None  # and namespaces do not mix


def test_a_full_cache_refuses_rather_than_evicting_others() -> None:
    cache = MemoryCache(max_entries=10, max_bytes=100_000, plugin_max_entries=5)
    for p in ("a", "b"):
        for i in range(5):
            cache.set(p, f"k{i}", b"%d" % i, None)
    with pytest.raises(ValueError, match="full"):
        cache.set("c", "k", b"1", None)
    assert cache.usage("a") == cache.usage("b") and cache.usage("a")[0] == 5


def test_every_cache_entry_expires() -> None:
    cache = MemoryCache(max_ttl=0.0001)
    cache.set("p", "forever", b"1", None)  # no TTL: the maximum
    cache.set("p", "long", b"1", 10**9)  # longer than the maximum: clamped
    done = threading.Event()
    done.wait(0.01)  # past 0.1 ms on any clock
    assert cache.get("p", "forever") is None and cache.get("p", "long") is None
    assert cache.usage("p") == (0, 0)


def test_cache_quota_through_the_host_function(plugins: Path, engine: WasmEngine,
                                               hosts: MakeHost) -> None:
    wasm(plugins, "a", ["cache"])
    wasm(plugins, "b", ["cache"])
    m = hosts(cache_max_entries=100, cache_plugin_max_entries=10)
    load(m, plugins, engine, 2)
    ok(m, "a", "cache_set", {"key": "mine", "value": b64(b"kept")})
    for i in range(50):
        ok(m, "b", "cache_set", {"key": f"k{i}", "value": b64(b"%d" % i)})
    assert ok(m, "a", "cache_get", {"key": "mine"}) == b'{"found":true,"value":"a2VwdA=="}'
    assert ok(m, "b", "cache_get", {"key": "k0"}) == b'{"found":false,"value":null}'  # its own
    assert okj(m, "b", "cache_get", {"key": "k49"}) == {"found": True, "value": b64(b"49")}


# -- database -------------------------------------------------------------------------------

ENDLESS = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
           "SELECT count(*) FROM c")


def test_a_query_without_end_stops_at_the_deadline_as_a_timeout(
        plugins: Path, engine: WasmEngine, hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["db.read"], resources={"call_timeout_ms": 300})
    m = hosts()
    load(m, plugins, engine, 1)
    with pytest.raises(PluginTimeout, match="deadline of 300 ms"):
        raw_call(m, "tk", "db_query", {"query": ENDLESS})
    assert any("interrupted at the call's deadline" in r for r in refusals(m, "tk"))
    # the next call gets a fresh instance and a fresh deadline
    assert ok(m, "tk", "db_query", {"query": "SELECT 1 AS one"}) == b'[{"one":1}]'


def test_db_results_and_files_are_capped(plugins: Path, engine: WasmEngine,
                                         hosts: MakeHost) -> None:
    wasm(plugins, "tk", ["db.read", "db.write"])
    m = hosts(db_max_result_bytes=64 * 1024, db_max_file_bytes=256 * 1024)
    load(m, plugins, engine, 1)
    ok(m, "tk", "db_exec", {"query": "CREATE TABLE t (v TEXT)"})
    for _ in range(3):
        ok(m, "tk", "db_exec", {"query": "INSERT INTO t VALUES (?)", "args": ["w" * 30_000]})
    refused(m, "tk", "db_query", {"query": "SELECT v FROM t"},
            "db_query: result larger than 65536 bytes")
    refused(m, "tk", "db_query", {"query": "SELECT zeroblob(100000000) AS b"},
            starts="db_query: ")
    # grow the file past its cap: refused, and what was there is still readable
    refused(m, "tk", "db_exec", {"query": "INSERT INTO t SELECT t.v FROM t, t AS u, "
                                          "t AS w"}, starts="db_exec: ",
            contains=("database is full",))
    assert ok(m, "tk", "db_query", {"query": "SELECT count(*) AS n FROM t"}) == b'[{"n":3}]'


# -- http -----------------------------------------------------------------------------------


@pytest.fixture
def dripping_server() -> Iterator[int]:
    """GET /drip sends a byte every 50 ms for ever (until the client goes)."""
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "100000000")
            self.end_headers()
            try:
                while not stop.wait(0.05):
                    self.wfile.write(b"d")
                    self.wfile.flush()
            except OSError:
                return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    stop.set()
    server.shutdown()
    server.server_close()


def test_a_dripping_server_cannot_hold_a_call_past_its_deadline(
        plugins: Path, engine: WasmEngine, hosts: MakeHost, dripping_server: int) -> None:
    wasm(plugins, "tk", ["http"], allowed_hosts=["127.0.0.1"],
         resources={"call_timeout_ms": 400})
    m = hosts(http_timeout=30.0)
    load(m, plugins, engine, 1)
    with pytest.raises(PluginTimeout, match="deadline of 400 ms"):
        raw_call(m, "tk", "http_request",
                 {"url": f"http://127.0.0.1:{dripping_server}/drip"})
    [reason] = [r for r in refusals(m, "tk") if "http_request" in r]
    assert "no complete response within" in reason or "Timeout" in reason


# -- mail -----------------------------------------------------------------------------------


def test_send_email_caps(plugins: Path, engine: WasmEngine, hosts: MakeHost,
                         smtp_server: tuple[int, SmtpCollector]) -> None:
    port, collected = smtp_server
    wasm(plugins, "tk", ["email"])
    m = hosts(smtp=SMTPSettings(host="127.0.0.1", port=port), mail_max_recipients=3,
              mail_max_body_bytes=1000)
    load(m, plugins, engine, 1)
    refused(m, "tk", "send_email", {"to": [f"u{i}@example.com" for i in range(4)],
                                    "subject": "s", "body": "b"},
            "send_email: 4 recipients, more than the cap of 3")
    refused(m, "tk", "send_email", {"to": "u@example.com", "subject": "s",
                                    "body": "b" * 600, "html": "h" * 600},
            contains=("1200 bytes",))
    refused(m, "tk", "send_email", {"to": "u@example.com", "subject": "a\r\nBcc: x@y.z",
                                    "body": "b"}, contains=("one line",))
    refused(m, "tk", "send_email", {"to": "u@example.com", "subject": "s" * 999,
                                    "body": "b"}, contains=("998",))
    assert ok(m, "tk", "send_email", {"to": ["a@example.com", "b@example.com"],
                                      "subject": "hi", "body": "fine"}) == b'{"ok":true}'
    assert len(collected.received) == 1


def test_nothing_starts_once_the_deadline_has_passed(plugins: Path, engine: WasmEngine,
                                                     hosts: MakeHost) -> None:
    """A host function asked for after the deadline is refused before it runs."""
    from plughost.host import chain
    from plughost.host.dispatch import HostContext
    from plughost.host.grants import DEFAULT_PERMISSIONS, Grants
    from plughost.logs import PluginLog as Log

    m = hosts()
    ctx = HostContext("p", Log("p"), grants=Grants("p", DEFAULT_PERMISSIONS))
    with chain.entered("p", 0.0), pytest.raises(HostCallError, match="deadline has passed"):
        m.host.dispatch(ctx, "db_query", json.dumps({"query": "SELECT 1"}).encode())
    assert m.host.dispatch(ctx, "db_query", b'{"query": "SELECT 1 AS x"}') == b'[{"x":1}]'


