"""A hostile client, plugin or upload against the platform endpoints, over real HTTP.

Each test pins an attack and the defence against it: the first ones are weaknesses a review
found (and that are fixed), the others attacks that were defended from the start and are
not covered by test_platform_routes.py, test_platform_server.py or test_uploads.py.

The `env` and `guard` plugins are testkit modules whose routes all go to `echo`, which
returns its arguments: the response body is the envelope the plugin got, byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.requests import Request

from plughost import Loader, Manager
from plughost.callers import ENVELOPE_KEYS, Caller
from plughost.errors import PluginLoadError
from plughost.health import HealthChecker
from plughost.host import HostSettings
from plughost.registration import Route
from plughost.routing import RouteTable, mount
from plughost.runtimes.wasm import WasmEngine
from plughost.server import create_app
from plughost.server.access import WebhookLimiter
from plughost.server.app import API_PATHS, PLUGIN_MOUNT

from .conftest import variant_dir, variant_module, wait_until
from .serving import Served, serve_in_thread
from .test_health import ping_module
from .test_jobs import HandClock

ENV_ROUTES = [
    {"method": "GET", "path": "/api/plugins/env/:id", "handler": "echo"},
    {"method": "POST", "path": "/api/plugins/env/items", "handler": "echo"},
    {"method": "GET", "path": "/env/files/*rest", "handler": "echo"},
    {"method": "GET", "path": "/env/new", "handler": "echo"},
    {"method": "GET", "path": "/spoof/:_is_admin/:_org_id", "handler": "echo"},
]
GUARD_ROUTES = [
    {"path": "/g/auth", "handler": "echo", "middleware": ["auth"]},
    {"path": "/g/admin", "handler": "echo", "middleware": ["admin"]},
    {"method": "POST", "path": "/g/hook", "handler": "echo", "middleware": ["webhook"]},
    {"method": "POST", "path": "/g/hook-admin", "handler": "echo",
     "middleware": ["webhook", "admin"]},
]

USERS = {
    "root": Caller(user_id=1, login="root", role="Admin", is_admin=True),
    "bob": Caller(user_id=8, email="bob@example.com"),
    "cust": Caller(user_id=40, customer_login="cust", email="c@example.com", role="Customer",
                   org_id=9, org_plugins=frozenset({"guard"})),
}
ROOT = {"x-test-user": "root"}
BOB = {"x-test-user": "bob"}
TOKEN = "t" * 32
SECRET = "s3cr3t"


async def identify(request: Request) -> Caller | None:
    """The application's own auth, as a test stands it in: a header names the user."""
    return USERS.get(request.headers.get("x-test-user", ""))


@pytest.fixture
def site(plugins: Path, engine: WasmEngine, tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """site(**create_app options) -> a server over `plugins` with env and guard (plus
    whatever a test put in `plugins` before)."""
    variant_dir(plugins, "env", {"routes": ENV_ROUTES})
    variant_dir(plugins, "guard", {"routes": GUARD_ROUTES})
    stack: list[tuple[Any, Manager]] = []

    def start(**options: Any) -> Served:
        manager = Manager(settings=HostSettings(data_dir=tmp_path / "data"),
                          drain_timeout=5.0)
        app = create_app(manager, Loader(plugins, manager, engine=engine), watch=False,
                         jobs=False, health=False, **{"identify": identify, **options})
        ctx = serve_in_thread(app)
        stack.append((ctx, manager))
        return ctx.__enter__()

    yield start
    for ctx, manager in reversed(stack):
        ctx.__exit__(None, None, None)
        manager.close()


def get(s: Served, path: str, headers: dict[str, str] | None = None,
        **kw: Any) -> httpx.Response:
    return httpx.get(s.url + path, headers=headers, **{"timeout": 30, **kw})


def post(s: Served, path: str, headers: dict[str, Any] | None = None,
         **kw: Any) -> httpx.Response:
    return httpx.post(s.url + path, headers=headers, **{"timeout": 30, **kw})


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def set_secret(s: Served, plugin: str = "guard", value: str = SECRET) -> None:
    s.state.manager.host.api.secure_config_set(plugin, 0, f"{plugin}_webhook_secret", value)


# -- helpers: how a Go plugin and an SSE client read what plughost sends ---------------

_GO_FOLD = {"\u017f": "s", "\u212a": "k"}  # Go's case folding maps these onto ASCII


def _go_fold(key: str) -> str:
    return "".join(_GO_FOLD.get(c, c.lower()) for c in key)


def go_struct_field(raw: bytes, tag: str) -> Any:
    """What Go's encoding/json puts in a struct field tagged `json:"<tag>"` when it decodes
    `raw`: every key equal to the tag under Go's case folding assigns the field, the last
    one wins (checked against go1.19's decoder). None when no key matches."""
    value = None
    for key, v in json.loads(raw, object_pairs_hook=list):
        if _go_fold(key) == _go_fold(tag):
            value = v
    return value


def sse_events(raw: str) -> list[dict[str, str]]:
    """The events an EventSource dispatches for `raw`, parsed as the HTML standard says
    (a line ends at CRLF, LF or a lone CR)."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    data: list[str] = []
    for line in re.split(r"\r\n|\r|\n", raw):
        if line == "":
            if data:
                events.append({**current, "data": "\n".join(data)})
            current, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name in ("event", "id", "retry"):
            current[name] = value
    return events


def read_stream_until(s: Served, path: str, marker: str, start: Callable[[], None],
                      headers: dict[str, str] | None = None) -> str:
    """Open the stream at `path`, call `start()` once it is connected, and return what
    arrived up to and including `marker`."""
    seen = ""
    with httpx.Client(timeout=httpx.Timeout(30, read=20)) as client, \
            client.stream("GET", s.url + path, headers=headers) as r:
        assert r.status_code == 200, r.read()
        started = False
        for chunk in r.iter_text():
            seen += chunk
            if not started and ("connected" in seen):
                started = True
                start()
            if marker in seen:
                return seen
    raise AssertionError(f"the stream ended before {marker!r}: {seen!r}")


# -- findings ---------------------------------------------------------------------------


def test_case_folded_envelope_keys_do_not_reach_a_go_plugins_struct(
        site: Callable[..., Served]) -> None:
    s = site()
    query = {"_i\u017f_admin": "true", "_USER_ID": "1", "_User_Role": "Admin",
             "_cu\u017ftomer_login": "someone"}
    anonymous = get(s, "/api/plugins/env/1", params=query)
    agent = get(s, "/api/plugins/env/1", BOB, params={**query, "_u\u017fer_id": "1"})
    form = post(s, "/api/plugins/env/items", content="_i\u017f_admin=true".encode(),
                headers={**BOB, "content-type": "application/x-www-form-urlencoded"})
    for r in (anonymous, agent, form):
        assert r.status_code == 200, r.text
        sent = json.loads(r.content)
        smuggled = [k for k in sent if k not in ENVELOPE_KEYS
                    and _go_fold(k) in {_go_fold(e) for e in ENVELOPE_KEYS}]
        assert smuggled == [], smuggled
    # what a GoatFlow plugin decoding into `struct{IsAdmin bool `json:"_is_admin"`...}` reads
    assert go_struct_field(anonymous.content, "_is_admin") is False
    assert go_struct_field(anonymous.content, "_user_id") is None
    assert go_struct_field(anonymous.content, "_user_role") is None
    assert go_struct_field(agent.content, "_is_admin") is False
    assert go_struct_field(agent.content, "_user_id") == 8
    assert go_struct_field(form.content, "_is_admin") is False


NOBODY_MAY_SUBSCRIBE = {"event_authorizer": "nothing"}  # testkit's `nothing`: no answer


def test_the_global_event_stream_does_not_bypass_a_channels_authorizer(
        site: Callable[..., Served], plugins: Path) -> None:
    variant_dir(plugins, "chat", NOBODY_MAY_SUBSCRIBE)
    s = site()
    r = get(s, "/api/v1/plugins/chat/events/room-1", BOB)
    assert (r.status_code, r.json()) == (403, {"error": "subscription not allowed"})
    manager = s.state.manager
    manager.publish("chat", "room-1", "message", "before: the private message")

    def go_on() -> None:
        manager.publish("chat", "room-1", "message", "live: the private message")
        manager.emit("health", "env", "marker-done")

    # the global stream is the operator's: an agent cannot open it at all
    r = get(s, "/api/v1/events", BOB)
    assert (r.status_code, r.json()["error"]) == (403, "admin access required")
    go_on()


def test_carriage_returns_in_channel_data_cannot_forge_sse_fields(
        site: Callable[..., Served]) -> None:
    s = site()
    manager = s.state.manager
    forged = "hello\r\revent: forged\rid: 99\rretry: 1\rdata: injected"

    def go_on() -> None:
        manager.publish("env", "room", "note", forged)
        manager.publish("env", "room", "note", "END")

    seen = read_stream_until(s, "/api/v1/plugins/env/events/room", "END", go_on, BOB)
    events = sse_events(seen)
    assert [e.get("event") for e in events] == ["connected", "note", "note"]
    assert all("id" not in e and "retry" not in e for e in events)


def test_x_forwarded_for_does_not_reset_the_webhook_limiter(
        site: Callable[..., Served]) -> None:
    s = site(webhook_allow_unsigned=True)
    s.state.webhooks = WebhookLimiter(per_hour=2)
    answers = [post(s, "/g/hook", headers={"x-forwarded-for": f"203.0.113.{i}"},
                    content=b"{}").status_code for i in range(3)]
    assert answers == [200, 200, 429]


@pytest.mark.parametrize("header, value", [
    ("stripe-signature", b"t=\xb2,v1=00"),
    ("x-hub-signature-256", b"sha256=\xe9"),
    ("x-webhook-signature", b"\xff" * 64),
], ids=["stripe-latin1-digit", "hub-non-ascii", "plain-non-ascii"])
def test_non_ascii_webhook_signatures_are_refused_not_a_500(
        site: Callable[..., Served], header: str, value: bytes) -> None:
    s = site()
    set_secret(s)
    r = post(s, "/g/hook", headers={header: value}, content=b"{}")
    assert (r.status_code, r.json()["error"]) == (403, "webhook signature mismatch")


def test_uninstalling_a_symlinked_module_leaves_nothing_installed(
        site: Callable[..., Served], plugins: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "linked.wasm").write_bytes(variant_module("linked", {"routes": [
        {"path": "/linked", "handler": "echo"}]}))
    (plugins / "linked.wasm").symlink_to(outside / "linked.wasm")
    s = site()
    assert post(s, "/api/v1/plugins/linked/disable", ROOT).json()["status"] == "disabled"
    r = httpx.delete(f"{s.url}/api/v1/plugins/linked", headers=ROOT, timeout=30)
    assert (outside / "linked.wasm").is_file()  # held: never outside the plugin dir
    if r.status_code == 200:  # "uninstalled": then it is gone
        assert get(s, "/api/v1/plugins/linked", ROOT).status_code == 404
        assert not (plugins / "linked.wasm").is_symlink()
    else:  # or refused: then the operator's disable stands
        assert s.state.manager.admin.enabled("linked") is False
    post(s, "/api/v1/plugins/linked/load", ROOT)
    assert get(s, "/linked").status_code != 200


def test_an_upload_that_cannot_take_its_name_is_refused(
        site: Callable[..., Served], plugins: Path) -> None:
    s = site()
    module = bytes(variant_module("env", {"routes": [{"path": "/uploaded",
                                                      "handler": "echo"}]}))
    r = post(s, "/api/v1/plugins/upload", ROOT,
             files={"plugin": ("env.wasm", module, "application/octet-stream")})
    if r.status_code == 200:
        assert get(s, "/uploaded").status_code == 200  # what it installed serves
    else:
        assert r.status_code == 400 and not (plugins / "env.wasm").exists()
    errors = [p for p in get(s, "/api/v1/plugins", ROOT).json()["plugins"]
              if p["state"] == "error"]
    assert errors == []


def test_a_big_public_request_does_not_stall_the_server(site: Callable[..., Served]) -> None:
    s = site()
    body = b'{"a":[' + b"1," * (2 * 1024 * 1024 - 8) + b"1]}"
    assert len(body) < 4 * 1024 * 1024

    def heavy() -> None:
        post(s, "/api/plugins/env/items", content=body, timeout=120,
             headers={"content-type": "application/json"})

    workers = [threading.Thread(target=heavy) for _ in range(2)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    began = time.monotonic()
    assert get(s, "/env/new").status_code == 200
    latency = time.monotonic() - began
    for w in workers:
        w.join()
    assert latency < 0.5, f"a small request waited {latency:.2f} s"


def test_anonymous_clients_do_not_learn_load_errors_or_paths(
        site: Callable[..., Served], plugins: Path) -> None:
    (plugins / "broken").mkdir()
    (plugins / "broken" / "plugin.yaml").write_text(yaml.safe_dump(
        {"name": "broken", "version": "1.0.0", "runtime": "wasm", "binary": "gone.wasm"}))
    s = site(identify=None, token=TOKEN)
    r = get(s, "/plugins/broken/anything")
    assert str(plugins) not in r.text and "gone.wasm" not in r.text, r.text


# -- defended ---------------------------------------------------------------------------

READING = [("GET", "/api/v1/plugins"), ("HEAD", "/api/v1/plugins"),
           ("GET", "/api/v1/plugins/env"), ("GET", "/api/v1/plugins/logs"),
           ("GET", "/api/v1/plugins/env/logs"), ("GET", "/api/v1/plugins/health"),
           ("GET", "/api/v1/plugins/widgets"), ("GET", "/api/v1/plugins/env/widgets/w"),
           ("GET", "/api/v1/plugins/menus"), ("GET", "/api/v1/plugins/templates"),
           ("GET", "/api/v1/plugins/error-codes"), ("GET", "/api/v1/plugins/env/policy"),
           ("GET", "/api/v1/plugins/env/events/c"), ("GET", "/api/v1/events"),
           ("HEAD", "/api/v1/events"), ("GET", "/api/v1/jobs")]
ACTING = [("POST", "/api/v1/plugins/env/call/echo"), ("POST", "/api/v1/plugins/env/disable"),
          ("POST", "/api/v1/plugins/env/unload"), ("POST", "/api/v1/plugins/env/reload"),
          ("POST", "/api/v1/plugins/env/load"), ("POST", "/api/v1/plugins/env/enable"),
          ("POST", "/api/v1/plugins/env/reset-crashloop"), ("POST", "/api/v1/plugins/upload"),
          ("DELETE", "/api/v1/plugins/logs"), ("DELETE", "/api/v1/plugins/env"),
          ("PUT", "/api/v1/plugins/env/policy"), ("DELETE", "/api/v1/plugins/env/policy")]


def test_every_management_endpoint_is_gated(site: Callable[..., Served]) -> None:
    s = site()
    with httpx.Client(base_url=s.url, timeout=30) as client:
        for method, path in READING + ACTING:
            anonymous = client.request(method, path, content=b'{"status": "blocked"}')
            assert anonymous.status_code == 401, (method, path, anonymous.text)
            customer = client.request(method, path, headers={"x-test-user": "cust"})
            assert customer.status_code == 403, (method, path, customer.text)
        for method, path in ACTING:
            agent = client.request(method, path, headers=BOB, content=b'{"status": "x"}')
            assert (agent.status_code, agent.json()["error"]) == (
                403, "admin access required"), (method, path)
    # nothing of it happened
    entry = get(s, "/api/v1/plugins/env", ROOT).json()
    assert entry["loaded"] and entry["enabled"]
    assert get(s, "/api/v1/plugins/env/policy", ROOT).json()["saved"] is None


def test_envelope_keys_in_escapes_duplicates_and_path_params_are_the_hosts(
        site: Callable[..., Served]) -> None:
    s = site()
    body = (b'{"\\u005fis_admin": true, "_user_id": 1, "_user_id": 2, '
            b'"\\u005f\\u0075ser_role": "Admin", "_org_id": 4, "_lang": "xx"}')
    r = post(s, "/api/plugins/env/items", {**BOB, "content-type": "application/json"},
             content=body)
    got = r.json()
    assert (got["_is_admin"], got["_user_id"], got["_user_role"]) == (False, 8, "Agent")
    assert "_org_id" not in got and "_lang" not in got
    # a path parameter named like an envelope key is the host's key too
    r = get(s, "/spoof/true/5?%5Fis_admin=true&_is_admin=1", BOB)
    got = r.json()
    assert got["_is_admin"] is False and "_org_id" not in got
    # a text body cannot pose as the envelope's own `_body`
    r = post(s, "/api/plugins/env/items?_body=forged&_content_type=x", content=b"real",
             headers={**BOB, "content-type": "text/plain"})
    assert (r.json()["_body"], r.json()["_content_type"]) == ("real", "text/plain")


@pytest.mark.parametrize("method, path", [
    ("GET", "//api/v1/plugins"), ("GET", "/api/v1//plugins"), ("GET", "/api/v1/plugins/"),
    ("GET", "/api/v1/%70lugins"), ("GET", "/api/v1/plugins%2Fenv"),
    ("GET", "/API/v1/plugins"), ("GET", "/api/v1/plugins/env/"),
    ("GET", "/api/v1/plugins;x"), ("GET", "/plugins/env/%2e%2e/%2e%2e/api/v1/plugins"),
    ("GET", "/api/v1/plugins/env/%2e%2e/env"), ("OPTIONS", "/api/v1/plugins"),
    ("HEAD", "/api/v1/plugins"), ("POST", "/api/v1/plugins/env/disable/"),
    ("POST", "/api/v1/plugins/env/%64isable"), ("POST", "/api/v1//plugins/env/disable"),
])
def test_path_tricks_reach_no_endpoint_without_the_token(
        site: Callable[..., Served], method: str, path: str) -> None:
    s = site(identify=None, token=TOKEN)
    r = httpx.request(method, s.url + path, timeout=30)
    assert r.status_code in (401, 404, 405), (path, r.status_code, r.text)
    assert b'"plugins"' not in r.content
    assert s.state.manager.info("env") is not None and s.state.manager.info("env").enabled


def _routes(*specs: str) -> list[Route]:
    out = []
    for spec in specs:
        method, _, path = spec.partition(" ")
        out.append(Route(method=method, path=path, handler="echo"))
    return out


@pytest.mark.parametrize("spec", [
    "GET /files/*rest",          # gin's wildcard against plughost's {rest:path}
    "GET /files/deeper/:x",      # reachable through the wildcard
    "GET /files",                # a wildcard also matches nothing
    "GET /files/",               # trailing slash is the same path
    "GET /:top/*rest",           # overlaps /files/... and /plugins/:name/...
    "GET /api/v1/plugins/{x:path}", "GET /api/:v/plugins", "GET /api/v1/:what",
    "GET /*rest", "GET /plugins/other/x", "GET /plugins/:p", "GET /api/v1/events/",
])
def test_route_collisions_across_syntaxes_are_refused(spec: str) -> None:
    table = RouteTable()
    for path in (*API_PATHS, *PLUGIN_MOUNT):
        table.reserve(path)
    table.install("first", _routes("GET /files/{rest:path}"))
    with pytest.raises(PluginLoadError, match="collides with"):
        table.install("second", _routes(spec))
    route, params, _ = table.match("GET", "/files/deeper/1")
    assert route is not None and route.plugin == "first" and params == {"rest": "deeper/1"}


def test_routes_that_cannot_reach_another_are_no_collision() -> None:
    table = RouteTable()
    for path in (*API_PATHS, *PLUGIN_MOUNT):
        table.reserve(path)
    table.install("first", _routes("GET /files/{rest:path}"))
    table.install("second", _routes("POST /files/x", "GET /FILES/x", "GET /api/v1/pluginsx",
                                    "GET /api/v1/events/:x"))
    assert table.match("GET", "/files/x")[0].plugin == "first"  # type: ignore[union-attr]
    assert table.match("GET", "/FILES/x")[0].plugin == "second"  # type: ignore[union-attr]
    assert table.is_reserved("/api/v1/plugins/x") and not table.is_reserved("/FILES/x")


@pytest.mark.parametrize("middleware", [
    ["auth", "sparkles"], ["webhook", "plugin:x"], ["plugin:x:"], ["plugin::ops"],
    ["group:"], ["Admin"], [" auth"], ["admin "], ["webhook", ""],
])
def test_malformed_middleware_next_to_known_keeps_the_route_unmounted(
        middleware: list[str]) -> None:
    mounted, warnings = mount("p", [Route(path="/x", handler="echo", middleware=middleware)])
    assert mounted == [] and len(warnings) == 1 and "unknown middleware" in warnings[0]


def test_webhook_bodies_stamps_and_sessions(site: Callable[..., Served]) -> None:
    s = site()
    set_secret(s)
    body = b'{"event": "paid"}'

    def chunks(data: bytes) -> Iterator[bytes]:
        for i in range(0, len(data), 64 * 1024):
            yield data[i:i + 64 * 1024]

    # no Content-Length: the 1 MiB cap still holds
    big = b"x" * (1024 * 1024 + 1)
    r = post(s, "/g/hook", {"x-hub-signature-256": "sha256=" + sign(big)},
             content=chunks(big))
    assert (r.status_code, r.json()["error"]) == (413, "webhook body too large")
    # a signed body without a declared length is checked, and not merged (GoatFlow)
    r = post(s, "/g/hook", {"x-hub-signature-256": sign(body),
                            "content-type": "application/json"}, content=chunks(body))
    assert r.status_code == 200 and "event" not in r.json()
    r = post(s, "/g/hook", {"x-hub-signature-256": sign(b"other"),
                            "content-type": "application/json"}, content=chunks(body))
    assert r.status_code == 403
    # a Stripe stamp from the future, or without its v1
    for stamp in (int(time.time()) + 301, int(time.time()) + 10 ** 9):
        r = post(s, "/g/hook", {"stripe-signature": f"t={stamp},v1="
                                f"{sign(str(stamp).encode() + b'.' + body)}"}, content=body)
        assert r.status_code == 403
    r = post(s, "/g/hook", {"stripe-signature": f"t={int(time.time())}"}, content=body)
    assert r.status_code == 403
    # the first signature header present decides, whatever its case
    r = post(s, "/g/hook", {"Stripe-Signature": "t=1,v1=00",
                            "X-HUB-SIGNATURE-256": "sha256=" + sign(body)}, content=body)
    assert r.status_code == 403
    # webhook + admin: the signature and the session are both needed
    signed = {"x-hub-signature-256": "sha256=" + sign(body)}
    assert post(s, "/g/hook-admin", signed, content=body).status_code == 401
    assert post(s, "/g/hook-admin", {**signed, **BOB}, content=body).status_code == 403
    assert post(s, "/g/hook-admin", ROOT, content=body).status_code == 401
    r = post(s, "/g/hook-admin", {**signed, **ROOT}, content=body)
    assert r.status_code == 200 and r.json()["_is_admin"] is True
    # the mount under /plugins/<name>/ is the same route, limiter and all
    assert post(s, "/plugins/guard/g/hook", content=body).status_code == 401
    # an empty secret is no secret
    set_secret(s, value="")
    r = post(s, "/g/hook", {"x-hub-signature-256": sign(body, "")}, content=body)
    assert (r.status_code, r.json()["error"]) == (403, "webhook not configured")


def test_results_cannot_inject_headers_and_stay_sandboxed(site: Callable[..., Served]) -> None:
    s = site()

    def result(obj: dict[str, Any]) -> httpx.Response:
        return post(s, "/api/plugins/env/items", json=obj, follow_redirects=False)

    evil = "text/html\r\nset-cookie: plughost_token=stolen"
    r = result({"_binary": True, "content_type": evil,
                "data": base64.b64encode(b"<script>1</script>").decode()})
    assert "set-cookie" not in r.headers and r.headers["content-type"] == "application/json"
    r = result({"redirect": "/x\r\nset-cookie: a=b"})
    assert r.status_code == 500 and "set-cookie" not in r.headers
    r = result({"html": "<script>parent.document</script>", "raw": True, "status": 200})
    assert r.headers["content-security-policy"].startswith("sandbox")
    assert "allow-same-origin" not in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    r = result({"_binary": True, "content_type": "text/html",
                "data": base64.b64encode(b"\xff\xfe not utf-8").decode()})
    assert r.content == b"\xff\xfe not utf-8"
    assert r.headers["content-security-policy"].startswith("sandbox")


def test_channel_subscribers_are_released_when_they_leave(site: Callable[..., Served]) -> None:
    s = site()
    hub = s.state.hub
    before = hub.clients
    with httpx.Client(base_url=s.url, timeout=httpx.Timeout(30, read=10)) as client:
        for _ in range(20):
            with client.stream("GET", "/api/v1/plugins/env/events/c", headers=BOB) as r:
                assert next(r.iter_lines()) == "event: connected"
    wait_until(lambda: hub.clients == before)
    for i in range(100):  # nobody listens: nothing piles up
        s.state.manager.publish("env", "c", "x", f"event {i}")
    assert hub.clients == before


def test_a_health_restart_keeps_a_disabled_plugin_disabled(
        plugins: Path, engine: WasmEngine, tmp_path: Path) -> None:
    pdir = plugins / "sleepy"
    pdir.mkdir()
    (pdir / "sleepy.wasm").write_bytes(ping_module("sleepy", "hang"))
    (pdir / "plugin.yaml").write_text(yaml.safe_dump({
        "name": "sleepy", "version": "1.0.0", "runtime": "wasm",
        "resources": {"call_timeout_ms": 200}}))
    manager = Manager(settings=HostSettings(data_dir=tmp_path / "data"), drain_timeout=5.0)
    loader = Loader(plugins, manager, engine=engine)
    reloads: list[str] = []
    manager.add_listener(lambda e: reloads.append(e.plugin) if e.kind == "reload" else None)
    try:
        loader.load_all()
        manager.disable("sleepy")
        checker = HealthChecker(manager, restart=loader.reload, clock=HandClock(),
                                timeout=0.2, interval=1e6)
        with checker:
            for _ in range(3):
                checker.probe_now()
            wait_until(lambda: reloads == ["sleepy"])
            wait_until(lambda: not checker.status("sleepy") or
                       not checker.status("sleepy").restarting)  # type: ignore[union-attr]
        info = manager.info("sleepy")
        assert info is not None and info.enabled is False
        assert manager.admin.enabled("sleepy") is False
    finally:
        loader.close()
        manager.close()
