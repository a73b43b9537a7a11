"""Errors that users see are right: `plughost list`, CLI text, failed calls, failed loads.

Real processes for the CLI, a real server for the HTTP side, real modules throughout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from plughost import Loader, Manager
from plughost.errors import (
    PluginCallError,
    PluginLoadError,
    PluginNotFound,
    PluginTimeout,
    PluginTrap,
    PluginUnavailable,
)
from plughost.lifecycle import Event
from plughost.runtimes.wasm import WasmEngine
from plughost.server import create_app

from .conftest import write_plugin_dir, write_wasm
from .serving import serve_in_thread


def plughost(*args: str, cache: Path, columns: int = 200) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PLUGHOST_CACHE_DIR=str(cache), COLUMNS=str(columns))
    return subprocess.run([sys.executable, "-m", "plughost", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def _broken_examples(examples: Path) -> None:
    """Three kinds of broken next to the good examples: a manifest that discovery refuses,
    a file whose bytes are not wasm (found fine, fails to load), and a file name holding
    Rich markup (which must come out literally)."""
    (examples / "badyaml").mkdir()
    (examples / "badyaml" / "plugin.yaml").write_text("name: badyaml\nruntime: [unclosed\n")
    (examples / "badbytes.wasm").write_bytes(b"\0asm\x01\0\0\0 this is not a module")
    # a bare module's file stem names it only until it is asked: broken, it stays so
    (examples / "x[bold]y.wasm").write_bytes(b"\0asm garbage")


def test_list_shows_load_failures_and_exits_nonzero(examples: Path, tmp_path: Path) -> None:
    _broken_examples(examples)
    r = plughost("list", str(examples), "--json", cache=tmp_path / "c")
    assert r.returncode == 1, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["hello"]["state"] == "running"  # the good ones still load
    assert rows["badbytes"]["state"] == "error" and rows["badbytes"]["error"]
    assert rows["badyaml"]["state"] == "error" and "plugin.yaml" in rows["badyaml"]["error"]
    assert rows["x[bold]y"]["state"] == "error"

    table = plughost("list", str(examples), cache=tmp_path / "c", columns=400)
    assert table.returncode == 1
    lines = {line.split("│")[1].strip(): line for line in table.stdout.splitlines()
             if line.count("│") > 2}
    assert "error" in lines["badbytes"] and "running" in lines["hello"]
    # markup in a file name is printed as written, not taken as a style
    assert "x[bold]y" in lines and "error" in lines["x[bold]y"]
    assert "3 of" in table.stderr and "plugins failed" in table.stderr


def test_cli_error_text_is_not_markup_and_not_wrapped(tmp_path: Path) -> None:
    missing = tmp_path / "[red]no[/red]" / ("d" * 150)
    r = plughost("list", str(missing), cache=tmp_path / "c", columns=60)
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr  # one line, even far past 60 columns
    assert str(missing) in lines[0] and lines[0].startswith("error: ")


def _loaded(manager: Manager, plugins: Path, engine: WasmEngine, *, lazy: bool = False
            ) -> Loader:
    loader = Loader(plugins, manager, lazy=lazy, engine=engine)
    loader.load_all()
    return loader


@pytest.mark.parametrize("function, error, reason", [
    ("trap", PluginTrap, "PluginTrap"),
    ("fail", PluginCallError, "asked to fail"),  # gk.error: the plugin's own reason
    ("loop", PluginTimeout, "PluginTimeout"),
])
def test_a_failed_call_is_in_the_plugin_log_and_an_event(
        manager: Manager, plugins: Path, engine: WasmEngine, function: str,
        error: type[Exception], reason: str) -> None:
    write_plugin_dir(plugins, "tk", {"resources": {"call_timeout_ms": 100}})
    events: list[Event] = []
    manager.add_listener(events.append)
    loader = _loaded(manager, plugins, engine)
    try:
        with pytest.raises(error):
            manager.call("tk", function, {})
        lines = [r for r in manager.log_for("tk").records()
                 if r.source == "host" and r.level == "error"]
        assert len(lines) == 1 and lines[0].message.startswith("call failed: ")
        assert reason in lines[0].message and function in lines[0].message
        failed = [e for e in events if e.kind == "call_error"]
        assert len(failed) == 1 and failed[0].plugin == "tk" and reason in failed[0].detail
        assert manager.call("tk", "echo", {"ok": 1}) == {"ok": 1}  # and it still serves
        assert len([e for e in events if e.kind == "call_error"]) == 1
    finally:
        loader.close()


def test_a_plugin_that_failed_to_load_says_so(manager: Manager, plugins: Path,
                                              engine: WasmEngine) -> None:
    (plugins / "bad.wasm").write_bytes(b"not wasm at all")
    write_wasm(plugins, "good")
    loader = _loaded(manager, plugins, engine)
    try:
        with pytest.raises(PluginUnavailable, match="discovered but failed to load") as info:
            manager.call("bad", "x", {})
        assert info.value.plugin == "bad"
        with pytest.raises(PluginNotFound, match="no such plugin"):
            manager.call("ghost", "x", {})
        [row] = [d for d in loader.discovered_plugins() if d.name == "bad"]
        assert isinstance(row.error, PluginLoadError) and not row.loaded
        assert loader.load_failure("good") is None
        # fixed on disk and loaded again: the failure is forgotten
        write_wasm(plugins, "bad")
        loader.ensure_loaded("bad")
        assert manager.call("bad", "echo", {"v": 2}) == {"v": 2}
        assert loader.load_failure("bad") is None
        assert all(d.error is None for d in loader.discovered_plugins())
    finally:
        loader.close()


def test_a_lazy_plugin_that_failed_to_load_is_not_rebuilt_on_every_call(
        manager: Manager, plugins: Path, engine: WasmEngine) -> None:
    (plugins / "bad.wasm").write_bytes(b"not wasm at all")
    loader = _loaded(manager, plugins, engine, lazy=True)
    try:
        with pytest.raises(PluginLoadError):
            manager.call("bad", "x", {})
        for _ in range(20):
            with pytest.raises(PluginUnavailable, match="discovered but failed to load"):
                manager.call("bad", "x", {})
        loads = [r for r in manager.log_for("bad").records() if "load failed" in r.message]
        assert len(loads) == 1  # one build, not 21
        write_wasm(plugins, "bad")
        loader.ensure_loaded("bad")  # an explicit load always retries at once
        assert manager.call("bad", "echo", {}) == {}
    finally:
        loader.close()


def test_http_says_failed_to_load_and_admin_shows_call_errors(
        examples: Path, engine: WasmEngine) -> None:
    (examples / "bad.wasm").write_bytes(b"not wasm at all")
    manager = Manager(drain_timeout=5.0)
    loader = Loader(examples, manager, engine=engine)
    app = create_app(manager, loader, watch=False)
    try:
        with serve_in_thread(app) as s:
            r = httpx.post(f"{s.url}/api/v1/plugins/bad/call/x", timeout=30)
            assert r.status_code == 503, r.text
            body = r.json()
            assert body["type"] == "PluginUnavailable" and body["plugin"] == "bad"
            assert "failed to load" in body["error"]
            r = httpx.post(f"{s.url}/plugins/bad/anything", timeout=30)  # GoatFlow's shape
            # a route's caller may be anyone: the why (and the paths) is the API's
            assert (r.status_code, r.json()) == (503, {"error": "plugin 'bad' is unavailable"})
            r = httpx.post(f"{s.url}/plugins/ghost/x", timeout=30)
            assert r.status_code == 404 and "no such plugin" in r.json()["error"]

            seen = threading.Event()
            manager.add_listener(lambda e: seen.set() if e.kind == "call_error" else None)
            r = httpx.post(f"{s.url}/api/v1/plugins/counter/call/fail", timeout=30)
            assert r.status_code == 502
            assert seen.wait(10)
            listed = httpx.get(f"{s.url}/api/v1/plugins").json()["plugins"]
            row = {x["name"]: x for x in listed}["counter"]
            assert row["state"] == "running"  # still serving
            assert "call_error" in row["error"] and "counter was asked to fail" in row["error"]
            logs = httpx.get(f"{s.url}/api/v1/plugins/counter/logs").json()
            assert any(x["message"].startswith("call failed:") and x["level"] == "error"
                       for x in logs)
    finally:
        manager.close()
