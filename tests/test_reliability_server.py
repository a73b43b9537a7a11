"""The server is safe on any address: loopback by address, a token beyond it, cross-site
refusals, bounded connections and bodies, 400 for bad JSON, 502 for responses HTTP cannot
carry, duplicate route parameters refused. Real `plughost serve` processes, real uvicorn,
real sockets, a real grpc plugin for route responses, Chromium for the admin page's login.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from plughost import Loader, Manager
from plughost.errors import ManifestError
from plughost.registration import parse_registration
from plughost.runtimes.wasm import WasmEngine
from plughost.server import PlughostServer, create_app
from plughost.server.auth import is_loopback
from plughost.server.limits import limited_protocol

from .conftest import write_wasm
from .serving import Served, serve_in_thread
from .test_grpc_runtime import fixture_plugin


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("127.255.1.1", True), ("::1", True),
    ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("10.1.2.3", False), ("::", False),
    ("::ffff:10.0.0.1", False), ("fe80::1%lo", False), ("localhost", False)])
def test_loopback_is_decided_by_address(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback  # names are resolved (and bound) first


class ServeProc:
    """`plughost serve` on port 0, its stdout read by a thread (port and token lines)."""

    def __init__(self, directory: Path, tmp: Path, *args: str,
                 env: dict[str, str] | None = None) -> None:
        full = dict(os.environ)
        full.pop("PLUGHOST_API_TOKEN", None)
        full.update(PLUGHOST_CACHE_DIR=str(tmp / "cache"), PYTHONUNBUFFERED="1",
                    XDG_DATA_HOME=str(tmp / "data"), **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "plughost", "serve", str(directory), "--port", "0",
             "--no-watch", *args], env=full, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = ""
        while not self.url:
            line = self.next_line()
            if m := re.search(r"admin page: (http://\S+)/", line):
                self.url = m[1]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(ValueError):  # stop()'s communicate() closes the pipe
            for line in self.proc.stdout:
                self.lines.put(line)

    def next_line(self) -> str:
        try:
            line = self.lines.get(timeout=60)
        except queue.Empty:
            raise AssertionError(f"no output from serve; stderr: {self.stop()}") from None
        self.seen.append(line)
        return line

    def token(self) -> str | None:
        for line in self.seen:
            if m := re.search(r"API token \(stored in .*\): (\S+)", line):
                return m[1]
        return None

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        return err


@pytest.fixture
def tk_dir(tmp_path: Path) -> Path:
    write_wasm(tmp_path / "plugins", "tk")
    return tmp_path / "plugins"


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1]


@pytest.mark.parametrize("host", ["127.1", "127.0.0.2", "LOCALHOST", "::ffff:127.0.0.1"])
def test_every_spelling_of_loopback_keeps_the_rebinding_check(host: str, tk_dir: Path,
                                                              tmp_path: Path) -> None:
    if ":" in host and not socket.has_ipv6:
        pytest.skip("no IPv6")
    s = ServeProc(tk_dir, tmp_path, "--host", host)
    try:
        target = s.url  # as the operator typed it, resolved as the server resolved it
        ok = httpx.get(f"{target}/api/v1/plugins", timeout=10)
        assert ok.status_code == 200, ok.text  # loopback: no token needed
        r = httpx.get(f"{target}/api/v1/plugins", headers={"host": "attacker.example"},
                      timeout=10)
        assert r.status_code == 403 and "attacker.example" in r.json()["error"]
        assert s.token() is None
    finally:
        s.stop()


def test_beyond_loopback_a_token_is_required_stored_and_reused(tk_dir: Path,
                                                               tmp_path: Path) -> None:
    s = ServeProc(tk_dir, tmp_path, "--host", "0.0.0.0")
    url = f"http://127.0.0.1:{_port(s.url)}"
    try:
        token = s.token()
        assert token and len(token) >= 32
        r = httpx.get(f"{url}/api/v1/plugins", timeout=10)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        for path in ("/api/v1/events", "/api/v1/plugins/tk/logs", "/api/v1/jobs"):
            assert httpx.get(f"{url}{path}", timeout=10).status_code == 401
        # plugin routes are their middleware's: tk declares none here, so no route at all
        r = httpx.get(f"{url}/plugins/tk/x", timeout=10)
        assert r.status_code == 404 and "www-authenticate" not in r.headers
        assert httpx.post(f"{url}/api/v1/plugins/tk/call/echo", json={}, timeout=10
                          ).status_code == 401
        bad = {"authorization": "Bearer " + "x" * 43}
        assert httpx.get(f"{url}/api/v1/plugins", headers=bad, timeout=10).status_code == 401
        auth = {"authorization": f"Bearer {token}"}
        assert httpx.get(f"{url}/api/v1/plugins", headers=auth, timeout=10).status_code == 200
        assert httpx.post(f"{url}/api/v1/plugins/tk/call/echo", json={"a": 1}, headers=auth,
                          timeout=10).json() == {"a": 1, "_is_admin": True, "_user_id": 1,
                                                 "_user_login": "admin", "_user_role": "Admin"}
        assert httpx.get(f"{url}/", timeout=10).status_code == 200  # the page asks for it
        # the login turns the token into an HttpOnly, SameSite=Strict cookie
        r = httpx.post(f"{url}/api/v1/login", json={"token": "wrong" * 8}, timeout=10)
        assert r.status_code == 401
        r = httpx.post(f"{url}/api/v1/login", json={"token": token}, timeout=10)
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        jar = {"plughost_token": token}
        assert httpx.get(f"{url}/api/v1/plugins", cookies=jar, timeout=10).status_code == 200
    finally:
        s.stop()
    stored = tmp_path / "data" / "plughost" / "api-token"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stored.read_text().strip() == token
    again = ServeProc(tk_dir, tmp_path, "--host", "0.0.0.0")  # the next start reuses it
    try:
        assert again.token() is None and any("the one stored in" in x for x in again.seen)
        url = f"http://127.0.0.1:{_port(again.url)}"
        assert httpx.get(f"{url}/api/v1/plugins", headers={"authorization": f"Bearer {token}"},
                         timeout=10).status_code == 200
    finally:
        again.stop()


def test_a_token_from_the_environment_and_explicit_no_auth(tk_dir: Path,
                                                           tmp_path: Path) -> None:
    given = "given-token-0123456789"
    s = ServeProc(tk_dir, tmp_path, "--host", "0.0.0.0", env={"PLUGHOST_API_TOKEN": given})
    try:
        url = f"http://127.0.0.1:{_port(s.url)}"
        assert httpx.get(f"{url}/api/v1/plugins", timeout=10).status_code == 401
        assert httpx.get(f"{url}/api/v1/plugins", headers={"authorization": f"Bearer {given}"},
                         timeout=10).status_code == 200
        assert s.token() is None  # nothing generated, nothing printed
    finally:
        s.stop()
    s = ServeProc(tk_dir, tmp_path, "--host", "0.0.0.0", "--insecure-no-auth")
    try:
        url = f"http://127.0.0.1:{_port(s.url)}"
        assert httpx.get(f"{url}/api/v1/plugins", timeout=10).status_code == 200
        assert any("WITHOUT authentication" in x for x in s.seen)
    finally:
        s.stop()


# -- one app in this process ------------------------------------------------------------


@pytest.fixture
def respond_app(tmp_path: Path, engine: WasmEngine) -> Iterator[Served]:
    plugins = tmp_path / "plugins"
    write_wasm(plugins, "tk")
    fixture_plugin(plugins, "respond", "respond_plugin.py")
    manager = Manager(drain_timeout=5.0)
    loader = Loader(plugins, manager, engine=engine)
    try:
        with serve_in_thread(create_app(manager, loader, watch=False, body_timeout=0.5)) as s:
            yield s
    finally:
        manager.close()


@pytest.mark.parametrize("result, status, body", [
    ({"redirect": "/x\r\nSet-Cookie: s=1"}, 500, {"error": "plugin redirect refused "
                                                            "(status 303)"}),
    ({"redirect": "/x", "status": 101}, 500, {"error": "plugin redirect refused (status 101)"}),
    ({"redirect": "/x", "status": 200}, 500, {"error": "plugin redirect refused (status 200)"}),
    ({"error": "bad", "status": 700}, 500, {"error": "bad"}),
    ({"error": "bad", "status": "404"}, 500, {"error": "bad"}),  # not a number
])
def test_results_http_cannot_carry_are_refused(respond_app: Served, result: dict[str, Any],
                                               status: int, body: dict[str, Any]) -> None:
    r = httpx.post(f"{respond_app.url}/plugins/respond/respond", json={"result": result},
                   timeout=30)
    assert (r.status_code, r.json()) == (status, body), r.text
    assert "set-cookie" not in r.headers


@pytest.mark.parametrize("result", [
    {"_binary": True, "content_type": "text/x\r\nSet-Cookie: a=b", "data": "aGk="},
    {"_binary": True, "content_type": "image/png", "data": "not base64!"},
    {"_binary": "yes", "content_type": "image/png", "data": "aGk="},
    {"status": 201, "headers": {"Set-Cookie": "plughost_token=evil"}, "body": "hi"},
])
def test_results_that_are_no_response_form_are_sent_as_json(respond_app: Served,
                                                            result: dict[str, Any]) -> None:
    r = httpx.post(f"{respond_app.url}/plugins/respond/respond", json={"result": result},
                   timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == result and "set-cookie" not in r.headers


def test_a_result_that_is_not_json_is_passed_through(respond_app: Served) -> None:
    r = httpx.post(f"{respond_app.url}/plugins/respond/respond", json={"nan": True},
                   timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.content == b'{"x": NaN}' and "sandbox" in r.headers["content-security-policy"]


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"a": NaN}',
                                  b"[Infinity]", b'{"n": ' + b"9" * 5000 + b"}", b"\xff\xfe"])
def test_malformed_request_json_is_400_or_ignored_by_a_route(respond_app: Served,
                                                             body: bytes) -> None:
    r = httpx.post(f"{respond_app.url}/api/v1/plugins/tk/call/echo", content=body,
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "BadRequest"
    # a route ignores a JSON body that is no object, as GoatFlow does: the handler runs
    r = httpx.post(f"{respond_app.url}/plugins/respond/respond", content=body,
                   headers={"content-type": "application/json"}, timeout=30)
    assert (r.status_code, r.json()) == (200, {"ran": True}), r.text


def test_a_stalled_body_is_408(respond_app: Served) -> None:
    port = int(respond_app.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"POST /api/v1/plugins/tk/call/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\"")
        reply = b""
        while chunk := sock.recv(4096):  # headers and body may come in separate reads
            reply += chunk
            head, _, body = reply.partition(b"\r\n\r\n")
            length = re.search(rb"content-length: (\d+)", head, re.I)
            if length and len(body) >= int(length[1]):
                break
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b"RequestTimeout" in reply


def test_a_route_with_a_repeated_parameter_is_refused_at_registration() -> None:
    raw = (b'{"name": "p", "routes": [{"method": "GET", "path": "/a/{id}/b/:id", '
           b'"handler": "h"}]}')
    with pytest.raises(ManifestError, match=r"repeats the parameter name\(s\) \['id'\]"):
        parse_registration(raw, expected_name="p")
    ok = b'{"name": "p", "routes": [{"path": "/a/{id}/b/{rest:path}", "handler": "h"}]}'
    assert parse_registration(ok, expected_name="p").routes[0].path == "/a/{id}/b/{rest:path}"


# -- slow connections -----------------------------------------------------------------------


@contextmanager
def limited_server(app: Any, header_timeout: float, max_connections: int
                   ) -> Iterator[PlughostServer]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_config=None,
                            http=limited_protocol(header_timeout, max_connections))
    server = PlughostServer(config)
    started = threading.Event()
    server.on_ready = lambda _: started.set()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert started.wait(60), "the server did not start"
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(30)


def _slow_client(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(b"GET /api/v1/plugins HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # never ends
    return sock


def test_slow_clients_cannot_take_the_api_down(tmp_path: Path, engine: WasmEngine) -> None:
    write_wasm(tmp_path / "plugins", "tk")
    manager = Manager()
    loader = Loader(tmp_path / "plugins", manager, engine=engine)
    app = create_app(manager, loader, watch=False)
    slow: list[socket.socket] = []
    try:
        with limited_server(app, header_timeout=60.0, max_connections=20) as server:
            url = f"http://127.0.0.1:{server.port}"
            slow = [_slow_client(server.port) for _ in range(60)]
            for _ in range(5):  # whole requests still get through, one after another
                assert httpx.get(f"{url}/api/v1/plugins", timeout=20).status_code == 200
            assert len(server.server_state.connections) <= 20
    finally:
        for s in slow:
            s.close()
        manager.close()


def test_headers_that_never_finish_are_cut_off(tmp_path: Path, engine: WasmEngine) -> None:
    write_wasm(tmp_path / "plugins", "tk")
    manager = Manager()
    loader = Loader(tmp_path / "plugins", manager, engine=engine)
    app = create_app(manager, loader, watch=False)
    try:
        with limited_server(app, header_timeout=0.3, max_connections=50) as server:
            with _slow_client(server.port) as sock:
                assert sock.recv(1024) == b""  # closed by the server: EOF
            with socket.create_connection(("127.0.0.1", server.port), timeout=20) as idle:
                assert idle.recv(1024) == b""  # never sent a byte: closed too
            url = f"http://127.0.0.1:{server.port}"
            with httpx.Client() as client:  # a kept-alive client that is quick is fine
                for _ in range(3):
                    assert client.get(f"{url}/api/v1/plugins", timeout=20).status_code == 200
    finally:
        manager.close()


# -- the admin page asks for the token once ---------------------------------------------


def test_the_admin_page_asks_for_the_token_once(tmp_path: Path, engine: WasmEngine) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("needs /usr/bin/chromium")
    from .test_admin_page import ARGS
    write_wasm(tmp_path / "plugins", "tk")
    manager = Manager()
    loader = Loader(tmp_path / "plugins", manager, engine=engine)
    token = "admin-page-token-0123456789"
    app = create_app(manager, loader, watch=False, token=token, keepalive=1.0)
    try:
        with serve_in_thread(app) as s, sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            context = browser.new_context()
            page = context.new_page()
            expect = sync_api.expect
            expect.set_options(timeout=20_000)
            page.goto(s.url + "/")
            expect(page.locator("#login")).to_be_visible()
            page.fill("#token", "wrong-token-wrong-token")
            page.click("#login button[type=submit]")
            expect(page.locator("#login-message")).to_contain_text("wrong API token")
            page.fill("#token", token)
            page.click("#login button[type=submit]")
            expect(page.locator("#login")).to_be_hidden()
            expect(page.locator('#plugins tr[data-plugin="tk"] .state')).to_have_text(
                "running")
            expect(page.locator("#live")).to_have_attribute("data-state", "open")
            page.reload()  # the cookie is remembered: no second prompt
            expect(page.locator('#plugins tr[data-plugin="tk"] .state')).to_have_text(
                "running")
            expect(page.locator("#login")).to_be_hidden()
            assert all(c["httpOnly"] for c in context.cookies())
            browser.close()
    finally:
        manager.close()
