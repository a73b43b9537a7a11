"""Plugin routes as GoatFlow serves them, over real HTTP: declared paths, the argument
envelope (exact bytes), result mapping, middleware with an identity hook, webhooks,
collisions, and the GoatFlow corpus (hello-wasm, stats) at their own paths.

The `env` and `guard` plugins are testkit modules whose routes all go to `echo`, which
returns its arguments: the response body is the envelope the plugin got, byte for byte,
and a request can choose the result (an `error`, a `redirect`...) through its body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from plughost import Loader, Manager
from plughost.callers import Caller
from plughost.host import HostSettings
from plughost.runtimes.wasm import WasmEngine
from plughost.server import create_app
from plughost.server.access import WebhookLimiter

from .conftest import variant_dir
from .serving import Served, serve_in_thread
from .test_goatflow_hostapi import CORPUS, _stats_db

ENV_ROUTES = [
    {"method": "GET", "path": "/api/plugins/env/:id", "handler": "echo"},
    {"method": "POST", "path": "/api/plugins/env/items", "handler": "echo"},
    {"method": "GET", "path": "/env/files/*rest", "handler": "echo"},
    {"method": "GET", "path": "/env/new", "handler": "echo"},
    {"method": "put", "path": "/env/lower", "handler": "echo"},  # not a GoatFlow method: GET
]
GUARD_ROUTES = [
    {"path": "/g/auth", "handler": "echo", "middleware": ["auth"]},
    {"path": "/g/admin", "handler": "echo", "middleware": ["admin"]},
    {"path": "/g/agent", "handler": "echo", "middleware": ["agent"]},
    {"path": "/g/customer", "handler": "echo", "middleware": ["customer"]},
    {"path": "/g/group", "handler": "echo", "middleware": ["group:ops"]},
    {"path": "/g/org", "handler": "echo", "middleware": ["plugin:guard:ops"]},
    {"path": "/g/sparkles", "handler": "echo", "middleware": ["sparkles"]},
    {"path": "/g/half", "handler": "echo", "middleware": ["plugin:guard"]},
    {"method": "POST", "path": "/g/hook", "handler": "echo", "middleware": ["webhook"]},
]

USERS = {
    "root": Caller(user_id=1, login="root", role="Admin", is_admin=True),
    "ada": Caller(user_id=7, login="ada", email="ada@example.com", groups=frozenset({"ops"}),
                  org_id=3, lang="de"),
    "bob": Caller(user_id=8, email="bob@example.com"),
    "cust": Caller(user_id=40, customer_login="cust", email="c@example.com", role="Customer",
                   org_id=9, org_plugins=frozenset({"guard"})),
    "stranger": Caller(user_id=41, customer_login="stranger", role="Customer"),
}


ROOT = {"x-test-user": "root"}


async def identify(request: Request) -> Caller | None:
    """The application's own auth, as a test stands it in: a header names the user."""
    return USERS.get(request.headers.get("x-test-user", ""))


@pytest.fixture
def site(plugins: Path, engine: WasmEngine, tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """site(**create_app options) -> a server over `plugins` with env and guard."""
    variant_dir(plugins, "env", {"routes": ENV_ROUTES})
    variant_dir(plugins, "guard", {"routes": GUARD_ROUTES})
    stack: list[tuple[Any, Manager]] = []

    def start(**options: Any) -> Served:
        manager = Manager(settings=HostSettings(data_dir=tmp_path / "data"),
                          drain_timeout=5.0)
        app = create_app(manager, Loader(plugins, manager, engine=engine), watch=False,
                         jobs=False, **{"identify": identify, **options})
        ctx = serve_in_thread(app)
        stack.append((ctx, manager))
        return ctx.__enter__()

    yield start
    for ctx, manager in reversed(stack):
        ctx.__exit__(None, None, None)
        manager.close()


def get(s: Served, path: str, user: str | None = None, **kw: Any) -> httpx.Response:
    headers = {**({"x-test-user": user} if user else {}), **kw.pop("headers", {})}
    return httpx.get(s.url + path, headers=headers, timeout=30, **kw)


def post(s: Served, path: str, user: str | None = None, **kw: Any) -> httpx.Response:
    headers = {**({"x-test-user": user} if user else {}), **kw.pop("headers", {})}
    return httpx.post(s.url + path, headers=headers, timeout=30, **kw)


# -- the envelope -----------------------------------------------------------------------


def test_the_envelope_is_goatflows_byte_for_byte(site: Callable[..., Served]) -> None:
    s = site()
    r = get(s, "/api/plugins/env/42?a=1&a=2&b=x&_user_id=99&_is_admin=true&org_id=5", "ada")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    # path and query params (repeated: a list), client envelope keys dropped, the caller's
    # identity added; keys sorted and numbers written as Go writes a map
    assert r.content == (
        b'{"_is_admin":false,"_lang":"de","_method":"GET","_org_id":3,'
        b'"_path":"/api/plugins/env/42","_user_email":"ada@example.com","_user_id":7,'
        b'"_user_login":"ada","_user_role":"Agent","a":["1","2"],"b":"x","id":"42",'
        b'"org_id":3}')
    # anonymous: only _is_admin (and the language the browser asks for); a client's
    # org_id survives when the host sets none, as in GoatFlow
    r = get(s, "/api/plugins/env/7?org_id=5", headers={"accept-language": "fr-CH, en;q=0.5"})
    assert r.content == (b'{"_is_admin":false,"_lang":"fr","_method":"GET",'
                         b'"_path":"/api/plugins/env/7","id":"7","org_id":"5"}')
    # a customer: _customer_login, and the login falls back to the email
    assert get(s, "/api/plugins/env/1", "cust").content == (
        b'{"_customer_login":"cust","_is_admin":false,"_method":"GET","_org_id":9,'
        b'"_path":"/api/plugins/env/1","_user_email":"c@example.com","_user_id":40,'
        b'"_user_login":"c@example.com","_user_role":"Customer","id":"1","org_id":9}')


def test_bodies_merge_as_goatflow_reads_them(site: Callable[..., Served]) -> None:
    s = site()
    r = post(s, "/api/plugins/env/items?id=q&q=1",
             content=b'{"n": 1.50, "big": 12345678901234567890, "id": "body wins", '
                     b'"_path": "/evil", "nested": {"b": 1, "a": [true, null]}, "h": "<b>&"}',
             headers={"content-type": "Application/JSON; charset=utf-8"})
    # every number a float64 (the big one loses digits), HTML characters escaped by Go
    assert r.content == (
        b'{"_is_admin":false,"_method":"POST","_path":"/api/plugins/env/items",'
        b'"big":12345678901234567000,"h":"\\u003cb\\u003e\\u0026","id":"body wins","n":1.5,'
        b'"nested":{"a":[true,null],"b":1},"q":"1"}')
    form = post(s, "/api/plugins/env/items?a=0", content=b"a=1&a=2&c=%20x&_user_id=1",
                headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.content == (b'{"_is_admin":false,"_method":"POST",'
                            b'"_path":"/api/plugins/env/items","a":["1","2"],"c":" x"}')
    raw = post(s, "/api/plugins/env/items", content=b"plain <words>",
               headers={"content-type": "text/plain"})
    assert raw.json()["_body"] == "plain <words>" and raw.json()["_content_type"] == "text/plain"
    for bad in (b"[1, 2]", b"{nope", b'{"a": NaN}'):  # not an object: ignored, not a 400
        r = post(s, "/api/plugins/env/items", content=bad,
                 headers={"content-type": "application/json"})
        assert r.status_code == 200 and set(r.json()) == {"_is_admin", "_method", "_path"}

    def chunked() -> Iterator[bytes]:
        yield b'{"from": "a body without a length"}'

    r = post(s, "/api/plugins/env/items", content=chunked(),
             headers={"content-type": "application/json"})
    assert "from" not in r.json()  # GoatFlow reads a body only when its length is declared
    r = post(s, "/api/plugins/env/items", content=b"x" * (4 * 1024 * 1024 + 1))
    assert (r.status_code, r.json()) == (413, {"error": "plugin request body too large"})


def test_paths_methods_and_both_mounts(site: Callable[..., Served]) -> None:
    s = site()
    assert get(s, "/env/files/a/b.txt").json()["rest"] == "/a/b.txt"  # gin keeps the slash
    assert get(s, "/env/new").json()["_path"] == "/env/new"
    assert get(s, "/env/lower").status_code == 200  # "put" is served as GET
    r = httpx.put(f"{s.url}/env/lower", timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    r = get(s, "/plugins/env/api/plugins/env/5")
    assert r.json()["id"] == "5" and r.json()["_path"] == "/plugins/env/api/plugins/env/5"
    assert get(s, "/nowhere").status_code == 404
    # the host's own endpoint, wrong method
    assert httpx.post(f"{s.url}/api/v1/jobs", headers=ROOT, timeout=30).status_code == 405
    listed = {r["name"]: r for r in get(s, "/api/v1/plugins", "root").json()["plugins"]}
    routes = {r["path"]: r for r in listed["env"]["routes"]}
    assert routes["/env/lower"]["method"] == "GET" and routes["/env/lower"]["mounted"]


# -- results ----------------------------------------------------------------------------


def test_results_map_to_responses_as_goatflows_router_does(site: Callable[..., Served]) -> None:
    s = site(layout=lambda title, page, body: f"<main title='{title}' data-page='{page}'>"
                                              f"{body}</main>")

    def result(body: dict[str, Any]) -> httpx.Response:
        return post(s, "/api/plugins/env/items", json=body, follow_redirects=False)

    r = result({"error": "nope", "status": 418, "more": 1})
    assert (r.status_code, r.json()) == (418, {"error": "nope"})
    assert result({"error": "nope", "status": 200}).status_code == 500
    assert result({"error": "", "status": 418}).status_code == 200  # empty: no error
    r = result({"redirect": "/elsewhere?x=1", "status": 307})
    assert (r.status_code, r.headers["location"]) == (307, "/elsewhere?x=1")
    assert result({"redirect": "/x"}).status_code == 303
    assert result({"redirect": "/x", "status": 201}).status_code == 201
    png = b"\x89PNG\r\n\x1a\n\x00binary"
    r = result({"_binary": True, "content_type": "image/png",
                "data": base64.b64encode(png).decode()})
    assert (r.status_code, r.content, r.headers["content-type"]) == (200, png, "image/png")
    r = result({"html": "<b>hi</b>", "raw": True})
    assert (r.text, r.headers["content-type"]) == ("<b>hi</b>", "text/html; charset=utf-8")
    r = result({"html": "<b>hi</b>", "title": "Report", "active_page": "stats"})
    assert r.text == "<main title='Report' data-page='stats'><b>hi</b></main>"
    assert result({"html": "<b>hi</b>"}).text == (
        "<main title='' data-page='plugin'><b>hi</b></main>")
    r = result({"status": 404, "x": 1})  # a status without an error means nothing
    assert r.status_code == 200 and r.json()["status"] == 404
    for r in (result({"error": "e", "status": 400}), result({"html": "x", "raw": True})):
        assert r.headers["content-security-policy"].startswith("sandbox")


def test_call_errors_answer_as_goatflow(site: Callable[..., Served]) -> None:
    s = site()
    httpx.post(f"{s.url}/api/v1/plugins/env/disable", headers=ROOT, timeout=30)
    r = get(s, "/api/plugins/env/1")
    assert r.status_code == 403 and set(r.json()) == {"error"}
    assert "disabled" in r.json()["error"]


# -- middleware -------------------------------------------------------------------------


@pytest.mark.parametrize("path, user, status, error", [
    ("/g/auth", None, 401, "Authentication required"),
    ("/g/auth", "bob", 200, None),
    ("/g/admin", "bob", 403, "admin access required"),
    ("/g/admin", "root", 200, None),
    ("/g/agent", "cust", 403, "agent access required"),
    ("/g/agent", "bob", 200, None),
    ("/g/customer", "bob", 403, "customer access required"),
    ("/g/customer", "cust", 200, None),
    ("/g/group", "ada", 200, None),
    ("/g/group", "bob", 403, "access denied: requires group ops"),
    ("/g/group", "root", 200, None),
    ("/g/group", "cust", 403, "access denied: requires group ops"),
    ("/g/org", "cust", 200, None),
    ("/g/org", "stranger", 403, "guard is not enabled for your organisation"),
    ("/g/org", "ada", 200, None),
    ("/g/org", "bob", 403, "access denied: requires group ops"),
    ("/g/org", "root", 200, None),
    ("/g/org", None, 401, "Authentication required"),
])
def test_middleware_lets_in_whom_goatflow_lets_in(site: Callable[..., Served], path: str,
                                                  user: str | None, status: int,
                                                  error: str | None) -> None:
    s = site()
    r = get(s, path, user)
    assert r.status_code == status, r.text
    if error is None:
        assert r.json()["_path"] == path
    else:
        assert r.json() == {"success": False, "error": error}


def test_unknown_middleware_is_not_mounted_and_says_so(site: Callable[..., Served]) -> None:
    s = site()
    r = get(s, "/api/v1/plugins/guard", "root")
    routes = {x["path"]: x for x in r.json()["routes"]}
    assert not routes["/g/sparkles"]["mounted"] and not routes["/g/half"]["mounted"]
    assert routes["/g/auth"]["mounted"]
    for path in ("/g/sparkles", "/g/half", "/plugins/guard/g/sparkles"):
        assert get(s, path, "root").status_code == 404
    logs = [x["message"] for x in get(s, "/api/v1/plugins/guard/logs", "root").json()]
    assert "not registering plugin route GET /g/sparkles: unknown middleware 'sparkles'" in logs
    assert "not registering plugin route GET /g/half: unknown middleware 'plugin:guard'" in logs


def test_sent_but_refused_credentials_say_so(site: Callable[..., Served]) -> None:
    s = site()
    r = get(s, "/g/auth", headers={"authorization": "Bearer nope"})
    assert r.json() == {"success": False, "error": "Invalid or expired token"}


def test_plughost_serve_vouches_for_its_token_holder(site: Callable[..., Served]) -> None:
    token = "t" * 32
    s = site(identify=None, token=token)
    assert get(s, "/g/auth").status_code == 401
    assert get(s, "/api/plugins/env/1").status_code == 200  # a public route needs no token
    r = get(s, "/g/admin", headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert (r.json()["_user_id"], r.json()["_is_admin"]) == (1, True)
    assert get(s, "/api/v1/plugins").status_code == 401  # the host's API still needs it


# -- webhooks ---------------------------------------------------------------------------


def _sign(body: bytes, secret: str = "s3cr3t") -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_webhooks_need_a_secret_and_a_signature(site: Callable[..., Served]) -> None:
    s = site()
    body = b'{"event": "paid"}'
    json_type = {"content-type": "application/json"}
    r = post(s, "/g/hook", content=body, headers=json_type)
    assert (r.status_code, r.json()["error"]) == (403, "webhook not configured")
    s.state.manager.host.api.secure_config_set("guard", 0, "guard_webhook_secret", "s3cr3t")

    r = post(s, "/g/hook", content=body, headers=json_type)
    assert (r.status_code, r.json()["error"]) == (401, "webhook signature required")
    r = post(s, "/g/hook", content=body, headers={
        **json_type, "x-hub-signature-256": "sha256=" + _sign(body, "wrong")})
    assert (r.status_code, r.json()["error"]) == (403, "webhook signature mismatch")
    for header, value in (("x-hub-signature-256", "sha256=" + _sign(body)),
                          ("x-webhook-signature", _sign(body)),
                          ("x-signature-256", _sign(body).upper())):
        r = post(s, "/g/hook", content=body, headers={**json_type, header: value})
        assert r.status_code == 200, (header, r.text)
        assert r.json()["event"] == "paid" and "_user_id" not in r.json()  # no session
    stamp = str(int(time.time()))
    stripe = _sign(stamp.encode() + b"." + body)
    r = post(s, "/g/hook", content=body,
             headers={**json_type, "stripe-signature": f"t={stamp},v1={stripe}"})
    assert r.status_code == 200
    old = str(int(time.time()) - 301)
    r = post(s, "/g/hook", content=body, headers={
        **json_type, "stripe-signature": f"t={old},v1={_sign(old.encode() + b'.' + body)}"})
    assert r.status_code == 403
    r = post(s, "/g/hook", content=b"x" * (1024 * 1024 + 1))
    assert (r.status_code, r.json()["error"]) == (413, "webhook body too large")


def test_webhooks_are_rate_limited_per_client(site: Callable[..., Served]) -> None:
    s = site(webhook_allow_unsigned=True)
    s.state.webhooks = WebhookLimiter(per_hour=3)
    for _ in range(3):
        assert post(s, "/g/hook", content=b"{}").status_code == 200  # unsigned allowed
    r = post(s, "/g/hook", content=b"{}")
    assert (r.status_code, r.headers["retry-after"]) == (429, "60")
    assert r.json()["error"] == "rate limit exceeded"
    assert get(s, "/g/auth", "bob").status_code == 200  # other routes are not limited


def test_the_webhook_limiter_forgets_the_oldest_clients() -> None:
    limiter = WebhookLimiter(per_hour=1, max_clients=2)
    assert limiter.admit("p", "a") and not limiter.admit("p", "a")
    assert limiter.admit("p", "b") and limiter.admit("p", "c")  # "a" is forgotten
    assert limiter.admit("p", "a")


# -- collisions -------------------------------------------------------------------------


def test_colliding_routes_are_refused_naming_both(site: Callable[..., Served],
                                                  plugins: Path) -> None:
    s = site()
    variant_dir(plugins, "twin", {"routes": [{"path": "/api/plugins/env/:key",
                                              "handler": "echo"}]})
    variant_dir(plugins, "intruder", {"routes": [{"path": "/api/v1/plugins/x",
                                                  "handler": "echo"}]})
    variant_dir(plugins, "shadow", {"routes": [{"path": "/:a/:b", "handler": "echo"}]})
    variant_dir(plugins, "poster", {"routes": [{"method": "DELETE",
                                                "path": "/api/plugins/env/:id",
                                                "handler": "echo"}]})
    for name, words in (
            ("twin", "route GET /api/plugins/env/:key collides with plugin 'env''s route "
                     "GET /api/plugins/env/:id"),
            ("intruder", "route GET /api/v1/plugins/x collides with plughost's own "
                         "endpoint /api/v1/plugins/*rest"),
            ("shadow", "route GET /:a/:b collides with plughost's own endpoint "
                       "/plugins/:name")):
        r = httpx.post(f"{s.url}/api/v1/plugins/{name}/load", headers=ROOT, timeout=30)
        assert r.status_code == 500 and words in r.json()["error"], (name, r.text)
        assert r.json()["plugin"] == name
    # another method on the same path is no collision
    r = httpx.post(f"{s.url}/api/v1/plugins/poster/load", headers=ROOT, timeout=30)
    assert r.status_code == 200
    assert httpx.delete(f"{s.url}/api/plugins/env/3", timeout=30).json()["id"] == "3"
    route = s.state.manager.routes.match("DELETE", "/api/plugins/env/3")[0]
    assert route is not None and route.plugin == "poster"
    assert get(s, "/api/plugins/env/3").status_code == 200  # env keeps GET
    # env reloads with its own routes (no collision with itself)
    r = httpx.post(f"{s.url}/api/v1/plugins/env/reload", headers=ROOT, timeout=30)
    assert r.status_code == 200
    # a reload that would collide is refused; the running version keeps its routes
    variant_dir(plugins / "new", "poster", {"routes": [{"path": "/env/new",
                                                        "handler": "echo"}]})
    shutil.copy(plugins / "new" / "poster" / "poster.wasm", plugins / "poster" / "poster.wasm")
    r = httpx.post(f"{s.url}/api/v1/plugins/poster/reload", headers=ROOT, timeout=30)
    assert r.status_code == 500 and "plugin 'env''s route GET /env/new" in r.json()["error"]
    assert httpx.delete(f"{s.url}/api/plugins/env/4", timeout=30).json()["id"] == "4"
    # POST /api/plugins/env/:id would reach env's POST /api/plugins/env/items: refused too
    variant_dir(plugins, "overlap", {"routes": [{"method": "POST",
                                                 "path": "/api/plugins/env/:id",
                                                 "handler": "echo"}]})
    r = httpx.post(f"{s.url}/api/v1/plugins/overlap/load", headers=ROOT, timeout=30)
    assert "collides with plugin 'env''s route POST /api/plugins/env/items" in r.json()["error"]


# -- the GoatFlow corpus at its own paths -----------------------------------------------


def test_goatflow_plugins_serve_at_their_declared_paths(plugins: Path, tmp_path: Path,
                                                        engine: WasmEngine) -> None:
    shutil.copytree(CORPUS / "hello-wasm", plugins / "hello-wasm")
    shutil.copytree(CORPUS / "stats", plugins / "stats")
    data = tmp_path / "data"
    _stats_db(data / "db" / "stats.sqlite3")
    manager = Manager(settings=HostSettings(data_dir=data), drain_timeout=5.0)
    app = create_app(manager, Loader(plugins, manager, engine=engine), watch=False,
                     jobs=False, identify=identify)
    users = {**USERS, "agent2": Caller(user_id=2, login="agent2")}
    try:
        with serve_in_thread(app) as s:
            r = httpx.get(f"{s.url}/api/plugins/hello-wasm", params={"name": "Ada"})
            assert r.content == b'{"message":"Hello from WASM, Ada!","runtime":"tinygo-wasm"}'
            r = httpx.get(f"{s.url}/api/plugins/stats/overview")
            assert r.status_code == 401  # its routes declare `auth`
            USERS["agent2"] = users["agent2"]
            r = httpx.get(f"{s.url}/api/plugins/stats/overview",
                          headers={"x-test-user": "agent2"})
            # agent 2 sees only its queues' tickets: the plugin got `_user_id`
            assert r.content == b'{"total":2,"open":2,"pending":0,"closed":0,"range":"all"}'
            r = httpx.get(f"{s.url}/api/plugins/stats/overview",
                          headers={"x-test-user": "root"})
            assert r.json()["total"] == 4  # an admin sees everything
            r = httpx.get(f"{s.url}/api/plugins/stats/overview?range=fortnight",
                          headers={"x-test-user": "root"})
            assert (r.status_code, r.json()["error"]) == (400, "invalid_range")
    finally:
        USERS.pop("agent2", None)
        manager.close()


def test_the_management_api_lets_agents_read_and_admins_act(site: Callable[..., Served]
                                                            ) -> None:
    s = site()
    assert get(s, "/api/v1/plugins").status_code == 401
    assert get(s, "/api/v1/plugins", "cust").json()["error"] == "agent access required"
    assert get(s, "/api/v1/plugins", "bob").status_code == 200
    assert get(s, "/api/v1/jobs", "bob").status_code == 200
    for path in ("/api/v1/plugins/env/disable", "/api/v1/plugins/env/call/echo"):
        r = post(s, path, "bob")
        assert (r.status_code, r.json()["error"]) == (403, "admin access required")
    assert httpx.delete(f"{s.url}/api/v1/plugins/logs", headers={"x-test-user": "bob"}
                        ).status_code == 403
    assert post(s, "/api/v1/plugins/env/call/echo", "root", json={}).json()["_user_id"] == 1
