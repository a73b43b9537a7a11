"""The server over real HTTP: uvicorn on a loopback port, httpx as the client,
a private copy of examples/plugins (hello: WAT, counter: C, greeter: Python grpc)."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from plughost import Event, Loader, Manager
from plughost.runtimes.grpc import GrpcPlugin
from plughost.runtimes.wasm import WasmEngine
from plughost.server import create_app
from plughost.server.events import EventHub

from .conftest import free_port, wait_until, write_plugin_dir, write_wasm
from .serving import Served, descendants, gone, serve_in_thread

ROUTES_PLUGIN = '''
from plughost import sdk

plugin = sdk.Plugin("web", version="2.0.0", routes=[
    {"method": "GET", "path": "/echo/{id}", "handler": "echo"},
    {"method": "POST", "path": "/items", "handler": "echo"},
    {"method": "GET", "path": "/teapot", "handler": "teapot"},
    {"method": "DELETE", "path": "/items/:id", "handler": "gone"},
])

@plugin.function
def echo(args):
    return {"got": args}  # not the args themselves: an "error" key would be an error

@plugin.function
def teapot(args):
    return {"error": "short and stout", "status": 418, "ignored": True}

@plugin.function
def gone(args):
    return {"html": "<p>gone</p>", "raw": True}

if __name__ == "__main__":
    plugin.serve()
'''


@pytest.fixture
def plugin_dir(examples: Path) -> Path:
    """The examples, plus `slow` (a wasm plugin whose `loop` spins past its 200 ms
    deadline) and `broken` (a plugin.yaml with an unknown runtime)."""
    write_plugin_dir(examples, "slow", {"resources": {"call_timeout_ms": 200}})
    (examples / "broken").mkdir()
    (examples / "broken" / "plugin.yaml").write_text("runtime: lua\n")
    return examples


Serve = Callable[..., Served]


@pytest.fixture
def serve(plugin_dir: Path, engine: WasmEngine) -> Iterator[Serve]:
    """serve(lazy=False, watch=False, **create_app options) -> a running server."""
    stack: list[tuple[Any, Manager]] = []

    def start(lazy: bool = False, watch: bool = False, directory: Path | None = None,
              **options: Any) -> Served:
        manager = Manager(drain_timeout=5.0)
        loader = Loader(directory or plugin_dir, manager, lazy=lazy, engine=engine)
        app = create_app(manager, loader, watch=watch, **options)
        ctx = serve_in_thread(app)
        served = ctx.__enter__()
        stack.append((ctx, manager))
        return served

    yield start
    for ctx, manager in reversed(stack):
        ctx.__exit__(None, None, None)
        manager.close()


def rows(url: str) -> dict[str, dict[str, Any]]:
    r = httpx.get(f"{url}/api/v1/plugins")
    assert r.status_code == 200
    return {row["name"]: row for row in r.json()["plugins"]}


def post(url: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=30, **kw)


def test_list_shows_loaded_discovered_and_broken(serve: Serve) -> None:
    s = serve()
    listed = rows(s.url)
    assert {"hello", "counter", "greeter", "slow", "broken"} <= set(listed)
    for name, kind in (("hello", "wasm"), ("counter", "wasm"), ("greeter", "grpc")):
        row = listed[name]
        assert row["state"] == "running" and row["type"] == kind, row
        assert row["version"] == "1.0.0" and row["enabled"] is True and row["error"] is None
        assert row["loaded_at"] > 0 and row["path"].endswith(name)
    assert listed["greeter"]["routes"] == [{
        "method": "GET", "path": "/hello", "handler": "hello", "middleware": [],
        "description": "", "url": "/hello", "plugin_url": "/plugins/greeter/hello",
        "mounted": True}]
    broken = listed["broken"]
    assert broken["state"] == "error" and "runtime" in broken["error"]
    assert broken["loaded_at"] is None and broken["enabled"] is False
    assert broken["loaded"] is False and listed["hello"]["loaded"] is True

    one = httpx.get(f"{s.url}/api/v1/plugins/counter").json()
    assert one["name"] == "counter" and one["state"] == "running"
    r = httpx.get(f"{s.url}/api/v1/plugins/ghost")
    assert r.status_code == 404 and r.json()["type"] == "PluginNotFound"
    r = httpx.get(f"{s.url}/api/nothing-here")
    assert r.status_code == 404 and r.json()["type"] == "NotFound"


def test_call_returns_json_and_errors_have_fitting_statuses(serve: Serve) -> None:
    s = serve()
    assert post(s.url, "/api/v1/plugins/counter/call/increment").json() == {"count": 1}
    assert post(s.url, "/api/v1/plugins/counter/call/increment", {}).json() == {"count": 2}
    assert post(s.url, "/api/v1/plugins/counter/call/increment", {"by": 5}).json() == {"count": 7}
    r = httpx.post(f"{s.url}/api/v1/plugins/hello/call/hello")  # no body at all: args {}
    assert r.json() == {"message": "Hello from a wasm plugin!"}
    assert post(s.url, "/api/v1/plugins/greeter/call/add", {"a": 2, "b": 3.5}).json() == 5.5

    def error(path: str, status: int, type_: str, **kw: Any) -> dict[str, Any]:
        r = httpx.post(f"{s.url}{path}", timeout=30, **kw)
        assert r.status_code == status, r.text
        body: dict[str, Any] = r.json()
        assert body["type"] == type_ and body["error"], body
        return body

    assert "ghost" in error("/api/v1/plugins/ghost/call/x", 404, "PluginNotFound")["error"]
    body = error("/api/v1/plugins/counter/call/fail", 502, "PluginCallError")
    assert "counter was asked to fail" in body["error"] and body["plugin"] == "counter"
    error("/api/v1/plugins/greeter/call/fail", 502, "PluginCallError")
    for bad in (b"{nope", b"[1, 2]", b"7"):  # GoatFlow: the body must be a JSON object
        assert error("/api/v1/plugins/counter/call/increment", 400, "BadRequest",
                     content=bad)["error"] == "request body must be a JSON object"
    error("/api/v1/plugins/slow/call/loop", 504, "PluginTimeout")
    error("/api/v1/plugins/counter/call/increment?timeout=abc", 400, "BadRequest")
    # the slow plugin still answers after its timed-out call (a fresh instance serves)
    # GoatFlow's direct call: the body, the client's envelope keys dropped, the caller added
    assert post(s.url, "/api/v1/plugins/slow/call/echo", {"x": 1, "_user_id": 99}).json() == {
        "x": 1, "_is_admin": True, "_user_id": 1, "_user_login": "admin", "_user_role": "Admin"}
    r = httpx.get(f"{s.url}/api/v1/plugins/counter/call/increment")
    assert r.status_code == 405 and r.json()["type"] == "MethodNotAllowed"


def test_load_unload_reload(serve: Serve) -> None:
    s = serve()
    seen: list[Event] = []
    s.state.manager.add_listener(seen.append)

    r = post(s.url, "/api/v1/plugins/counter/unload")
    assert r.status_code == 200 and r.json()["ok"] is True
    assert r.json()["plugin"]["state"] == "discovered"
    assert rows(s.url)["counter"]["state"] == "discovered"
    # An eager server does not load on call: unloaded means 404 until loaded again.
    r = post(s.url, "/api/v1/plugins/counter/call/increment")
    assert r.status_code == 404 and r.json()["type"] == "PluginNotFound"
    r = post(s.url, "/api/v1/plugins/counter/unload")
    assert r.status_code == 404

    r = post(s.url, "/api/v1/plugins/counter/load")
    assert r.status_code == 200 and r.json()["plugin"]["state"] == "running"
    assert post(s.url, "/api/v1/plugins/counter/call/increment").json() == {"count": 1}
    assert post(s.url, "/api/v1/plugins/counter/load").json()["ok"] is True  # already: no-op
    assert post(s.url, "/api/v1/plugins/counter/call/increment").json() == {"count": 2}

    r = post(s.url, "/api/v1/plugins/counter/reload")
    assert r.status_code == 200 and r.json() == {
        "ok": True, "action": "reload", "name": "counter", "plugin": rows(s.url)["counter"]}
    assert post(s.url, "/api/v1/plugins/counter/call/increment").json() == {"count": 1}
    assert [e.kind for e in seen if e.plugin == "counter"] == ["unload", "load", "reload"]

    greeter = s.state.manager.get("greeter")
    assert isinstance(greeter, GrpcPlugin) and greeter.pid is not None
    old_pid = greeter.pid
    assert post(s.url, "/api/v1/plugins/greeter/reload").json()["ok"] is True
    new = s.state.manager.get("greeter")
    assert isinstance(new, GrpcPlugin) and new.pid not in (None, old_pid)
    wait_until(lambda: gone(old_pid))

    r = post(s.url, "/api/v1/plugins/broken/load")
    assert r.status_code == 500 and r.json()["type"] == "ManifestError"
    assert post(s.url, "/api/v1/plugins/ghost/reload").status_code == 404
    r = post(s.url, "/api/v1/plugins/counter/explode")
    assert r.status_code == 404 and "unknown action" in r.json()["error"]


def test_a_failed_reload_keeps_serving_and_shows_the_error(serve: Serve,
                                                           plugin_dir: Path) -> None:
    s = serve()
    assert post(s.url, "/api/v1/plugins/counter/call/increment").json() == {"count": 1}
    wasm = plugin_dir / "counter" / "counter.wasm"
    good = wasm.read_bytes()
    wasm.write_bytes(b"\0asm broken")
    r = post(s.url, "/api/v1/plugins/counter/reload")
    assert r.status_code == 500 and r.json()["type"] == "PluginLoadError"
    row = rows(s.url)["counter"]
    assert row["state"] == "running" and row["error"]  # the old version keeps serving
    assert post(s.url, "/api/v1/plugins/counter/call/increment").json() == {"count": 2}
    wasm.write_bytes(good)
    assert post(s.url, "/api/v1/plugins/counter/reload").json()["ok"] is True
    assert rows(s.url)["counter"]["error"] is None  # a good version clears the last error


def test_lazy_server_loads_on_first_use(serve: Serve) -> None:
    s = serve(lazy=True)
    listed = rows(s.url)
    assert {listed[n]["state"] for n in ("hello", "counter", "greeter")} == {"discovered"}
    assert listed["counter"]["version"] == "1.0.0"  # from the manifest, before loading
    assert post(s.url, "/api/v1/plugins/counter/call/increment").json() == {"count": 1}
    assert rows(s.url)["counter"]["state"] == "running"
    r = httpx.get(f"{s.url}/plugins/greeter/hello", timeout=30)  # a route loads it too
    assert r.status_code == 200 and r.json()["calls"] == 1
    assert rows(s.url)["greeter"]["state"] == "running"
    # unloaded, a lazy plugin stays discovered: the next call loads a fresh instance
    assert post(s.url, "/api/v1/plugins/counter/unload").json()["ok"] is True
    assert post(s.url, "/api/v1/plugins/counter/call/increment").json() == {"count": 1}
    r = post(s.url, "/api/v1/plugins/broken/call/x")
    assert r.status_code == 500 and r.json()["type"] == "ManifestError"


def test_logs(serve: Serve) -> None:
    s = serve()
    assert post(s.url, "/api/v1/plugins/counter/call/reset").json() == {"count": 0}
    records = httpx.get(f"{s.url}/api/v1/plugins/counter/logs").json()
    assert any(r["message"] == "counter reset" and r["source"] == "plugin"
               and r["level"] == "info" for r in records)
    assert any("loaded version 1.0.0" in r["message"] for r in records)
    last = httpx.get(f"{s.url}/api/v1/plugins/counter/logs?last=1").json()
    assert len(last) == 1 and last[0] == records[-1]
    assert set(last[0]) == {"time", "level", "message", "source"}
    assert httpx.get(f"{s.url}/api/v1/plugins/counter/logs?last=0").json() == []
    newer = httpx.get(f"{s.url}/api/v1/plugins/counter/logs",
                      params={"since": records[-1]["time"]}).json()
    assert newer == []
    post(s.url, "/api/v1/plugins/greeter/call/hello", {"name": "Ada"})
    wait_until(lambda: any("greeting #1" in r["message"] for r in httpx.get(
        f"{s.url}/api/v1/plugins/greeter/logs").json()))
    assert httpx.get(f"{s.url}/api/v1/plugins/counter/logs?last=-1").status_code == 400
    assert httpx.get(f"{s.url}/api/v1/plugins/ghost/logs").status_code == 404


def test_enable_disable(serve: Serve) -> None:
    s = serve()
    r = post(s.url, "/api/v1/plugins/counter/disable").json()
    assert r["status"] == "disabled" and r["plugin"]["enabled"] is False
    r = post(s.url, "/api/v1/plugins/counter/call/increment")
    assert r.status_code == 503 and r.json()["type"] == "PluginDisabled"
    assert rows(s.url)["counter"]["state"] == "running"  # still loaded
    assert post(s.url, "/api/v1/plugins/counter/enable").json()["plugin"]["enabled"] is True
    assert post(s.url, "/api/v1/plugins/counter/call/increment").json() == {"count": 1}
    assert post(s.url, "/api/v1/plugins/ghost/disable").status_code == 404


class SSE:
    """Reads /api/v1/events on a thread; lines arrive on a queue."""

    def __init__(self, url: str) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._client = httpx.Client(timeout=httpx.Timeout(30, read=None))
        self._opened = threading.Event()
        self._stop = threading.Event()
        self.status = 0
        self.content_type = ""
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()
        assert self._opened.wait(10)

    def _read(self, url: str) -> None:
        try:
            with self._client.stream("GET", f"{url}/api/v1/events") as r:
                self.status, self.content_type = r.status_code, r.headers["content-type"]
                self._opened.set()
                for line in r.iter_lines():
                    if self._stop.is_set():  # checked at least every keep-alive
                        break
                    self.lines.put(line)
        except httpx.HTTPError:
            pass
        finally:
            self.lines.put(None)  # the stream ended

    def wait_for(self, pred: Callable[[str], bool], timeout: float = 15.0) -> str:
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise AssertionError("the stream ended")
            if pred(line):
                return line

    def event(self, kind: str, plugin: str, timeout: float = 15.0) -> dict[str, Any]:
        def match(line: str) -> bool:
            if not line.startswith("data: "):
                return False
            ev = json.loads(line[6:])
            return bool(ev["kind"] == kind and ev["plugin"] == plugin)

        return dict(json.loads(self.wait_for(match, timeout)[6:]))

    def ended(self, timeout: float = 15.0) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        """Leave (the reader notices at the next line: use a short keep-alive)."""
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive()
        self._client.close()


def test_events_stream(serve: Serve) -> None:
    s = serve(keepalive=0.3)
    sse = SSE(s.url)
    try:
        assert sse.status == 200 and sse.content_type.startswith("text/event-stream")
        sse.wait_for(lambda line: line == ": connected")  # our listener is registered
        assert s.state.hub.clients == 1
        assert post(s.url, "/api/v1/plugins/counter/reload").json()["ok"] is True
        ev = sse.event("reload", "counter")
        assert set(ev) == {"kind", "plugin", "time", "detail"} and ev["detail"] == "1.0.0"
        post(s.url, "/api/v1/plugins/hello/disable")
        assert sse.event("disable", "hello")["detail"] == ""
        sse.wait_for(lambda line: line == ": keep-alive")
    finally:
        sse.close()
    wait_until(lambda: s.state.hub.clients == 0)  # the client left the hub
    # the hub (for every client), the job scheduler, the health checker
    assert len(s.state.manager.listeners) == 3


def test_a_plugins_published_event_reaches_the_stream(serve: Serve, plugin_dir: Path) -> None:
    write_wasm(plugin_dir, "tk")
    s = serve(keepalive=0.3)
    sse = SSE(s.url)
    try:
        sse.wait_for(lambda line: line == ": connected")
        assert s.state.manager.call("tk", "host", b'publish_event|{"channel":"tickets",'
                                    b'"event_type":"created","data":"{\\"id\\":7}"}') == {
            "status": "ok"}
        ev = sse.event("plugin_event", "tk")
        assert {k: ev[k] for k in ("channel", "event_type", "detail")} == {
            "channel": "tickets", "event_type": "created", "detail": '{"id":7}'}
    finally:
        sse.close()


def test_a_new_stream_starts_with_the_last_events_then_live_ones(serve: Serve) -> None:
    s = serve(keepalive=0.3, event_history=3)
    for name in ("hello", "counter", "greeter", "hello"):  # the hub keeps the last 3
        post(s.url, f"/api/v1/plugins/{name}/disable")
    sse = SSE(s.url)
    try:
        sse.wait_for(lambda line: line == ": connected")
        past = [json.loads(sse.wait_for(lambda line: line.startswith("data: "))[6:])
                for _ in range(3)]
        assert [(e["kind"], e["plugin"], e["history"]) for e in past] == [
            ("disable", "counter", True), ("disable", "greeter", True),
            ("disable", "hello", True)]
        post(s.url, "/api/v1/plugins/counter/enable")
        live = sse.event("enable", "counter")
        assert "history" not in live
    finally:
        sse.close()


def test_watcher_changes_reach_the_event_stream(serve: Serve, plugin_dir: Path) -> None:
    s = serve(watch=True, debounce_ms=100, keepalive=0.3)
    sse = SSE(s.url)
    try:
        sse.wait_for(lambda line: line == ": connected")
        manifest = plugin_dir / "hello" / "plugin.yaml"
        manifest.write_text(manifest.read_text().replace("version: 1.0.0", "version: 1.0.1"))
        assert sse.event("reload", "hello")["detail"] == "1.0.0"  # the module's own version
        write_plugin_dir(plugin_dir, "fresh")
        sse.event("load", "fresh")
        assert rows(s.url)["fresh"]["state"] == "running"
    finally:
        sse.close()


def test_slow_clients_lose_the_oldest_events() -> None:
    import asyncio

    manager = Manager()
    try:
        hub = EventHub(manager, queue_size=3)
        hub.start()

        async def scenario() -> tuple[list[str], int]:
            joined = hub.connect()
            assert joined is not None
            client, past = joined
            assert past == []
            for i in range(10):  # from another thread, as the manager's threads do
                await asyncio.to_thread(manager.emit, "error", f"p{i}")
            await asyncio.sleep(0)  # let the loop run the scheduled pushes
            got = []
            while not client.queue.empty():
                ev = client.queue.get_nowait()
                assert ev is not None
                got.append(ev.plugin)
            hub.disconnect(client)
            return got, client.dropped

        got, dropped = asyncio.run(scenario())
        assert got == ["p7", "p8", "p9"] and dropped == 7
        hub.stop()
        assert hub.clients == 0 and manager.listeners == ()
    finally:
        manager.close()


def test_plugin_routes(serve: Serve, plugin_dir: Path) -> None:
    web = plugin_dir / "web"
    web.mkdir()
    (web / "web.py").write_text(ROUTES_PLUGIN)
    (web / "plugin.yaml").write_text("name: web\nversion: 2.0.0\nruntime: grpc\nbinary: web.py\n")
    s = serve()

    r = httpx.get(f"{s.url}/plugins/greeter/hello", params={"name": "X"}, timeout=30)
    assert r.status_code == 200
    assert r.json() == {"message": "Hello, X!", "calls": 1}  # the query reaches the handler

    for path in ("/plugins/web/echo/42", "/echo/42"):  # both mounts
        r = httpx.get(s.url + path, params={"q": "a b"}, timeout=30,
                      headers={"X-Trace": "t1", "Cookie": "session=s3cret",
                               "Authorization": "Bearer t0ken"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        # GoatFlow's envelope; no headers, cookies or credentials reach the plugin
        assert r.json() == {"got": {"id": "42", "q": "a b", "_method": "GET",
                                    "_path": path, "_is_admin": True,
                                    "_user_id": 1, "_user_login": "admin",
                                    "_user_role": "Admin"}}
    r = httpx.post(f"{s.url}/plugins/web/items", json={"n": [1, 2]})
    assert r.json()["got"]["n"] == [1, 2] and r.json()["got"]["_path"] == "/plugins/web/items"
    args = httpx.post(f"{s.url}/items", content=b"plain words").json()["got"]
    assert args["_body"] == "plain words" and args["_method"] == "POST"
    args = httpx.post(f"{s.url}/items", content=b"{bad",
                      headers={"content-type": "application/json"}).json()["got"]
    assert "_body" not in args and set(args) >= {"_method", "_path"}  # ignored, as GoatFlow

    r = httpx.get(f"{s.url}/plugins/web/teapot")
    assert (r.status_code, r.json()) == (418, {"error": "short and stout"})
    assert r.headers["content-security-policy"].startswith("sandbox")
    r = httpx.delete(f"{s.url}/items/7")
    assert (r.status_code, r.text) == (200, "<p>gone</p>")
    assert r.headers["content-type"] == "text/html; charset=utf-8"

    r = httpx.get(f"{s.url}/plugins/web/nowhere")
    assert r.status_code == 404 and r.json()["type"] == "NotFound"
    r = httpx.put(f"{s.url}/plugins/web/items")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert httpx.get(f"{s.url}/plugins/ghost/x").status_code == 404
    assert post(s.url, "/api/v1/plugins/web/disable").json()["status"] == "disabled"
    r = httpx.get(f"{s.url}/teapot")  # GoatFlow: a disabled plugin's routes answer 403
    assert r.status_code == 403 and "disabled" in r.json()["error"]
    post(s.url, "/api/v1/plugins/web/unload")
    assert httpx.get(f"{s.url}/plugins/web/teapot").status_code == 404  # eager: not loaded
    assert httpx.get(f"{s.url}/teapot").status_code == 404  # its declared path is gone


def test_graceful_shutdown_unloads_everything(serve: Serve) -> None:
    s = serve(keepalive=0.3)
    manager = s.state.manager
    greeter = manager.get("greeter")
    assert isinstance(greeter, GrpcPlugin) and greeter.pid is not None
    pid = greeter.pid
    assert not gone(pid)
    sse = SSE(s.url)  # an open event stream must not hold the shutdown up
    try:
        sse.wait_for(lambda line: line == ": connected")
        s.stop(timeout=20)
        assert sse.ended()
    finally:
        sse.close()
    assert manager.names() == []
    assert gone(pid)
    assert s.state.loader.watcher is None


def _plughost(*args: str, cache: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PLUGHOST_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1", COLUMNS="200")
    return subprocess.Popen([sys.executable, "-m", "plughost", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_serve_command_runs_and_stops_gracefully_on_sigterm(plugin_dir: Path,
                                                            tmp_path: Path) -> None:
    port = free_port()
    proc = _plughost("serve", str(plugin_dir), "--port", str(port), "--no-watch",
                     cache=tmp_path / "cache")
    try:
        assert proc.stdout is not None
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                return httpx.get(f"{url}/api/v1/plugins", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, timeout=60)
        assert rows(url)["greeter"]["state"] == "running"
        assert post(url, "/api/v1/plugins/counter/call/increment").json() == {"count": 1}
        assert "plughost" in httpx.get(url).text
        children = descendants(proc.pid)
        assert children  # the greeter's process
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"admin page: http://127.0.0.1:{port}/" in out
    assert "stopped, all plugins unloaded" in out
    assert all(gone(pid) for pid in children)


@pytest.mark.parametrize("case", ["port in use", "missing dir"])
def test_serve_command_errors_are_one_line(case: str, plugin_dir: Path,
                                           tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        directory = plugin_dir if case == "port in use" else tmp_path / "nope"
        proc = _plughost("serve", str(directory), "--port", str(port), cache=tmp_path / "c")
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert ("cannot listen on 127.0.0.1" if case == "port in use" else "does not exist") \
        in lines[0]


def test_mounted_under_a_prefix(plugin_dir: Path, engine: WasmEngine) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    manager = Manager(drain_timeout=5.0)
    inner = create_app(manager, Loader(plugin_dir, manager, engine=engine), watch=False)
    outer = Starlette(routes=[Mount("/ph", app=inner)],
                      lifespan=inner.router.lifespan_context)
    try:
        with serve_in_thread(outer) as s:
            listed = rows(f"{s.url}/ph")
            assert listed["greeter"]["routes"][0]["plugin_url"] == "/ph/plugins/greeter/hello"
            assert listed["greeter"]["routes"][0]["url"] == "/ph/hello"
            r = httpx.get(f"{s.url}/ph/hello", timeout=30)  # its declared path, mounted
            assert r.status_code == 200 and r.json()["calls"] == 1
            r = httpx.get(f"{s.url}/ph/plugins/greeter/hello", timeout=30)
            assert r.status_code == 200 and r.json()["calls"] == 2
            page = httpx.get(f"{s.url}/ph/").text
            assert 'fetch(url' in page and '"api/v1/plugins"' in page  # relative to the page
            s.stop()
        assert manager.names() == []
    finally:
        manager.close()


def test_cross_site_requests_cannot_drive_the_api(serve: Serve) -> None:
    """A web page elsewhere must not call plugins or unload them through the browser
    (CSRF: a text/plain POST needs no preflight); programs without Origin are unaffected."""
    s = serve()
    evil = {"origin": "https://evil.example", "content-type": "text/plain"}
    for path in ("/api/v1/plugins/counter/call/increment", "/api/v1/plugins/counter/unload"):
        r = httpx.post(f"{s.url}{path}", content=b"{}", headers=evil, timeout=30)
        assert r.status_code == 403 and r.json()["type"] == "Forbidden"
    r = httpx.post(f"{s.url}/api/v1/plugins/counter/call/increment", content=b"{}",
                   headers={"sec-fetch-site": "cross-site"}, timeout=30)
    assert r.status_code == 403
    assert s.state.manager.get("counter") is not None  # nothing was unloaded
    same = {"origin": s.url}
    r = httpx.post(f"{s.url}/api/v1/plugins/counter/call/increment", json={}, headers=same,
                   timeout=30)
    assert r.status_code == 200 and r.json() == {"count": 1}  # the first call that ran
    # reads too: a cross-site GET neither reads the API nor runs a plugin's handler
    assert httpx.get(f"{s.url}/api/v1/plugins", headers=evil, timeout=30).status_code == 403
    assert httpx.get(f"{s.url}/", headers=evil, timeout=30).status_code == 200  # the page


def test_allowed_hosts_refuse_dns_rebinding(serve: Serve) -> None:
    s = serve(allowed_hosts=["127.0.0.1", "localhost"])
    assert httpx.get(f"{s.url}/api/v1/plugins", timeout=30).status_code == 200
    r = httpx.get(f"{s.url}/api/v1/plugins", headers={"host": "attacker.example"}, timeout=30)
    assert r.status_code == 403 and "attacker.example" in r.json()["error"]


def test_plugin_routes_are_sandboxed_and_get_no_credentials(serve: Serve) -> None:
    s = serve()
    r = httpx.get(f"{s.url}/plugins/greeter/hello", params={"name": "Z"},
                  headers={"cookie": "session=secret", "authorization": "Bearer t"},
                  timeout=30)
    assert r.status_code == 200 and r.json()["message"] == "Hello, Z!"
    assert r.headers["content-security-policy"].startswith("sandbox")
    # a sandboxed page's requests carry Origin "null": refused by the guard
    r = httpx.post(f"{s.url}/api/v1/plugins/counter/unload", headers={"origin": "null"},
                   timeout=30)
    assert r.status_code == 403


def test_jobs_run_in_the_server_and_show_in_the_api(serve: Serve, plugin_dir: Path) -> None:
    import queue

    from .conftest import variant_dir
    from .test_jobs import T0, HandClock

    variant_dir(plugin_dir, "ticker", {"jobs": [
        {"id": "tick", "handler": "count", "schedule": "@every 30s", "enabled": True}]})
    clock = HandClock()
    s = serve(job_clock=clock)
    ran: queue.Queue[Any] = queue.Queue()
    s.state.manager.add_listener(lambda e: ran.put(e) if e.kind == "job_run" else None)
    (job,) = httpx.get(f"{s.url}/api/v1/jobs").json()
    assert (job["plugin"], job["id"], job["next_run"], job["last_run"]) == (
        "ticker", "tick", T0 + 30, None)
    clock.advance(30)
    assert ran.get(timeout=15).plugin == "ticker"
    (job,) = httpx.get(f"{s.url}/api/v1/jobs", params={"plugin": "ticker"}).json()
    assert (job["last_status"], job["last_run"], job["next_run"]) == ("ok", T0 + 30, T0 + 60)
    assert httpx.get(f"{s.url}/api/v1/jobs", params={"plugin": "hello"}).json() == []
