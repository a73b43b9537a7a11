"""The platform around the routes, over real HTTP: health checks, widgets, menus, templates
and error codes, admin state across restarts, uploads, and the event history."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from plughost import Event, Loader, Manager, catalog
from plughost.host import HostSettings
from plughost.runtimes.wasm import WasmEngine
from plughost.server import create_app

from .conftest import variant_dir, variant_module, wait_until
from .serving import Served, serve_in_thread
from .test_health import ping_module
from .test_jobs import HandClock


class Site:
    """A server over `plugins` whose manager's events are also on a queue."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.url = served.url
        self.manager = served.state.manager
        self.events: queue.Queue[Event] = queue.Queue()
        self.manager.add_listener(self.events.put)

    def event(self, kind: str, plugin: str, detail: str | None = None,
              timeout: float = 20.0) -> Event:
        while True:
            e = self.events.get(timeout=timeout)
            if e.kind == kind and e.plugin == plugin and (detail is None or
                                                         e.detail.startswith(detail)):
                return e

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=30, **kw)


@pytest.fixture
def site(plugins: Path, engine: WasmEngine, tmp_path: Path) -> Iterator[Callable[..., Site]]:
    stack: list[tuple[Any, Manager]] = []

    def start(**options: Any) -> Site:
        manager = Manager(settings=HostSettings(data_dir=tmp_path / "data"),
                          drain_timeout=5.0)
        app = create_app(manager, Loader(plugins, manager, engine=engine), watch=False,
                         jobs=False, **options)
        ctx = serve_in_thread(app)
        stack.append((ctx, manager))
        return Site(ctx.__enter__())

    yield start
    for ctx, manager in reversed(stack):
        ctx.__exit__(None, None, None)
        manager.close()


def pinger(plugins: Path, name: str, behaviour: str, call_timeout_ms: int = 200) -> None:
    pdir = plugins / name
    pdir.mkdir(parents=True)
    (pdir / f"{name}.wasm").write_bytes(ping_module(name, behaviour))
    (pdir / "plugin.yaml").write_text(yaml.safe_dump({
        "name": name, "version": "1.0.0", "runtime": "wasm",
        "resources": {"call_timeout_ms": call_timeout_ms}}))


# -- health -----------------------------------------------------------------------------


def test_health_checks_feed_restarts_and_the_api(site: Callable[..., Site],
                                                 plugins: Path) -> None:
    pinger(plugins, "well", "json")
    pinger(plugins, "sick", "hang")
    clock = HandClock()
    s = site(health_clock=clock)
    health = s.get("/api/v1/plugins/health").json()["plugins"]
    assert set(health) == {"well", "sick"}
    assert health["well"]["healthy"] is False  # until its first probe
    assert health["well"]["last_check"] == "0001-01-01T00:00:00Z"

    clock.advance(60)
    assert s.event("health", "well").detail == "healthy"
    checker = s.served.state.health
    assert checker is not None
    for n in (2, 3):  # one round at a time: a tick passed during a round is skipped
        wait_until(lambda n=n: checker.rounds == n - 1)
        clock.advance(60)
    s.event("reload", "sick")  # 3 deadlines: restarted (reloaded) by the checker
    got = s.get("/api/v1/plugins/health").json()["plugins"]
    assert got["well"]["healthy"] and got["well"]["payload"] == {
        "status": "ok", "runtime": "test-wasm", "version": "1.0.0"}
    sick = got["sick"]
    assert not sick["healthy"] and sick["consecutive_failures"] == 3
    assert sick["restart_attempts"] == 1 and "deadline" in sick["last_error"]
    assert sick["last_restart_at"] != "0001-01-01T00:00:00Z"

    r = s.post("/api/v1/plugins/sick/reset-crashloop")
    assert r.json() == {"status": "reset"}
    assert s.get("/api/v1/plugins/health").json()["plugins"]["sick"]["restart_attempts"] == 0
    r = s.post("/api/v1/plugins/ghost/reset-crashloop")
    assert (r.status_code, r.json()) == (404, {"error": "plugin not found"})
    logs = [x["message"] for x in s.get("/api/v1/plugins/sick/logs").json()]
    assert "Crash-loop guard reset by admin" in logs


def test_health_checks_can_be_off(site: Callable[..., Site], plugins: Path) -> None:
    pinger(plugins, "well", "json")
    s = site(health=False)
    assert s.get("/api/v1/plugins/health").json() == {"plugins": {}}
    assert s.served.state.health is None


# -- widgets, menus, templates, error codes ---------------------------------------------

DECK_PLUGIN = '''
import html
from plughost import sdk

plugin = sdk.Plugin("deck", version="1.0.0",
    widgets=[
        {"id": "tickets", "title": "Open <tickets>", "handler": "tickets",
         "location": "dashboard", "size": "medium", "order": 2, "refreshable": True,
         "refresh_sec": 5},
        {"id": "first", "title": "First", "handler": "first", "size": "small", "order": 1},
        {"id": "admin", "title": "Admin only", "handler": "first", "location": "admin_home"},
        {"id": "nohtml", "title": "Broken", "handler": "nohtml", "order": 9},
        {"id": "fails", "title": "Failing", "handler": "fails", "order": 9},
    ],
    menu_items=[
        {"id": "b", "label": "deck.reports", "path": "/reports", "location": "agent",
         "order": 1, "children": [{"id": "y", "label": "Y", "order": 2},
                                  {"id": "x", "label": "X", "order": 1}]},
        {"id": "a", "label": "Alpha", "path": "/alpha", "location": "agent", "order": 1},
        {"id": "z", "label": "Settings", "path": "/settings", "location": "admin"},
    ],
    templates=[{"name": "ticket/view.html", "override": True},
               {"name": "base", "override": True}, {"name": "footer", "override": False}],
    error_codes=[{"code": "query_failed", "message": "Query failed", "http_status": 500}],
    i18n={"namespace": "deck", "translations": {"en": {"reports": "Reports"},
                                                "de": {"reports": "Berichte"}}},
)

@plugin.function
def tickets(args):
    who = args.get("_user_login", "nobody")
    return {"html": f"<p class='tickets'>7 open for {html.escape(who)}, "
                    f"wrap={args.get('wrap')}</p>"}

@plugin.function
def first(args):
    return {"html": "<b>first</b>"}

@plugin.function
def nohtml(args):
    return {"text": "no html here"}

@plugin.function
def fails(args):
    raise sdk.PluginError("widget broke")

@plugin.function
def template_ticket_view_html(args):
    return {"html": f"<article>{html.escape(args['data']['subject'])}</article>"}

@plugin.function
def template_base(args):
    raise sdk.PluginError("no base today")

if __name__ == "__main__":
    plugin.serve()
'''


def deck(plugins: Path) -> None:
    pdir = plugins / "deck"
    pdir.mkdir(parents=True)
    (pdir / "deck.py").write_text(DECK_PLUGIN)
    (pdir / "plugin.yaml").write_text(
        "name: deck\nversion: 1.0.0\nruntime: grpc\nbinary: deck.py\n")


def test_widgets_at_goatflows_endpoints(site: Callable[..., Site], plugins: Path) -> None:
    deck(plugins)
    variant_dir(plugins, "aaa", {"widgets": [{"id": "w", "title": "AAA", "handler": "echo",
                                              "order": 2}]})
    s = site()
    assert s.get("/api/v1/plugins/widgets").json() == {"widgets": [
        {"id": "first", "title": "First", "plugin_name": "deck", "size": "small",
         "refreshable": False},
        {"id": "w", "title": "AAA", "plugin_name": "aaa", "size": "", "refreshable": False},
        {"id": "tickets", "title": "Open <tickets>", "plugin_name": "deck", "size": "medium",
         "refreshable": True, "refresh_sec": 5},
        {"id": "fails", "title": "Failing", "plugin_name": "deck", "size": "",
         "refreshable": False},
        {"id": "nohtml", "title": "Broken", "plugin_name": "deck", "size": "",
         "refreshable": False}]}
    admin = s.get("/api/v1/plugins/widgets?location=admin_home").json()["widgets"]
    assert [w["id"] for w in admin] == ["admin"]

    r = s.get("/api/v1/plugins/deck/widgets/tickets")
    assert r.text == "<p class='tickets'>7 open for admin, wrap=None</p>"
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["content-security-policy"].startswith("sandbox")
    r = s.get("/api/v1/plugins/deck/widgets/tickets?wrap=true")
    assert r.text == ('<div class="card widget" data-widget="tickets"><div class="card-header">'
                      'Open &lt;tickets&gt;</div><div class="card-body"><p class=\'tickets\'>'
                      '7 open for admin, wrap=true</p></div></div>')
    # the echo widget shows its arguments: the request's own route envelope
    r = s.get("/api/v1/plugins/aaa/widgets/w?html=%3Ci%3Ex%3C/i%3E")
    assert r.text == "<i>x</i>"
    for path, status, text in (
            ("/api/v1/plugins/deck/widgets/nope", 404, "Widget not found: deck/nope"),
            ("/api/v1/plugins/ghost/widgets/w", 404, "Plugin not found: ghost"),
            ("/api/v1/plugins/deck/widgets/nohtml", 500, "Invalid widget response")):
        r = s.get(path)
        assert (r.status_code, r.text) == (status, text)
    r = s.get("/api/v1/plugins/deck/widgets/fails")
    assert r.status_code == 500 and r.text.startswith("Widget error: ")
    assert "widget broke" in r.text
    s.post("/api/v1/plugins/deck/disable")
    assert [w["plugin_name"] for w in s.get("/api/v1/plugins/widgets").json()["widgets"]] == [
        "aaa"]
    r = s.get("/api/v1/plugins/deck/widgets/first")
    assert (r.status_code, r.text) == (404, "Plugin not found: deck")


def test_menus_templates_and_error_codes(site: Callable[..., Site], plugins: Path) -> None:
    deck(plugins)
    variant_dir(plugins, "aaa", {"menu_items": [{"id": "b", "label": "From aaa",
                                                 "location": "agent", "order": 1}]})
    s = site()
    items = s.get("/api/v1/plugins/menus?location=agent").json()["menu_items"]
    # by order, then plugin name, then id
    assert [(m["plugin"], m["id"]) for m in items] == [("aaa", "b"), ("deck", "a"),
                                                      ("deck", "b")]
    reports = items[2]
    assert (reports["label"], reports["text"]) == ("deck.reports", "Reports")
    assert [c["id"] for c in reports["children"]] == ["x", "y"]
    german = s.get("/api/v1/plugins/menus?location=agent&lang=de").json()["menu_items"]
    assert german[2]["text"] == "Berichte"
    assert len(s.get("/api/v1/plugins/menus").json()["menu_items"]) == 4

    assert s.get("/api/v1/plugins/templates").json() == {"templates": [
        {"name": "ticket/view.html", "plugin": "deck", "handler": "template_ticket_view_html"},
        {"name": "base", "plugin": "deck", "handler": "template_base"}]}
    assert s.get("/api/v1/plugins/error-codes").json() == {"error_codes": {
        "deck:query_failed": {"key": "deck:query_failed", "plugin": "deck",
                              "code": "query_failed", "message": "Query failed",
                              "http_status": 500}}}

    m = s.manager
    assert catalog.render_template(m, "ticket/view.html", {"subject": "<Help>"}) == (
        "<article>&lt;Help&gt;</article>")
    assert catalog.render_template(m, "base", {}) is None  # failed: the host's own
    assert catalog.render_template(m, "footer", {}) is None  # not an override
    logs = [r.message for r in m.log_for("deck").records()]
    assert any(x.startswith("template override 'base' failed, the host's is used") and
               "no base today" in x for x in logs)


# -- admin state ------------------------------------------------------------------------


def test_a_restart_keeps_what_the_operator_set(site: Callable[..., Site], plugins: Path,
                                               tmp_path: Path) -> None:
    variant_dir(plugins, "tk", {"resources": {"permissions": [{"type": "cache"},
                                                              {"type": "db",
                                                               "access": "read"}]}})
    variant_dir(plugins, "other")
    first = site()
    assert first.post("/api/v1/plugins/tk/disable").json()["status"] == "disabled"
    r = httpx.put(f"{first.url}/api/v1/plugins/tk/policy", json={"revoke": [{"type": "db"}]},
                  timeout=30)
    assert r.status_code == 200 and r.json()["saved"] == {"revoke": [{"type": "db"}]}
    assert [g["type"] for g in r.json()["effective"]["grants"]] == ["cache"]  # at once
    r = httpx.put(f"{first.url}/api/v1/plugins/other/policy", json={"status": "sideways"},
                  timeout=30)
    assert r.status_code == 400 and "status" in r.json()["error"]
    first.served.stop()

    second = site()  # the same data dir: a restart
    listed = {p["name"]: p for p in second.get("/api/v1/plugins").json()["plugins"]}
    assert listed["tk"]["enabled"] is False and listed["tk"]["state"] == "running"
    assert listed["other"]["enabled"] is True
    assert second.post("/api/v1/plugins/tk/call/echo").status_code == 503
    got = second.get("/api/v1/plugins/tk/policy").json()
    assert got["saved"] == {"revoke": [{"type": "db"}]}
    assert [g["type"] for g in got["effective"]["grants"]] == ["cache"]
    second.post("/api/v1/plugins/tk/enable")
    r = httpx.delete(f"{second.url}/api/v1/plugins/tk/policy", timeout=30)
    assert r.json()["saved"] is None
    assert [g["type"] for g in r.json()["effective"]["grants"]] == ["cache", "db"]
    second.served.stop()

    third = site()
    assert third.post("/api/v1/plugins/tk/call/echo", json={"a": 1}).json()["a"] == 1
    assert (tmp_path / "data" / "admin.db").stat().st_mode & 0o777 == 0o600


def test_a_bad_admin_state_file_stops_serve_with_one_line(plugins: Path,
                                                         private_data_dir: Path,
                                                         tmp_path: Path) -> None:
    private_data_dir.mkdir(parents=True)
    (private_data_dir / "admin.db").write_bytes(b"this is no database at all, " * 10)
    proc = subprocess.run([sys.executable, "-m", "plughost", "serve", str(plugins),
                           "--port", "0"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PLUGHOST_CACHE_DIR": str(tmp_path / "c")})
    assert proc.returncode == 1
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "admin.db" in lines[0] and "Traceback" not in proc.stderr
    assert (private_data_dir / "admin.db").read_bytes().startswith(b"this is no")  # kept


# -- uninstall --------------------------------------------------------------------------


def test_uninstall_removes_the_plugin_its_files_and_its_state(site: Callable[..., Site],
                                                              plugins: Path) -> None:
    variant_dir(plugins, "gone")
    (plugins / "mod.wasm").write_bytes(variant_module("mod"))
    (plugins / "mod.wasm.sig").write_text("not checked here")
    s = site()
    s.post("/api/v1/plugins/gone/disable")
    r = httpx.delete(f"{s.url}/api/v1/plugins/gone", timeout=30)
    assert r.json() == {"message": "plugin uninstalled", "name": "gone",
                        "removed": [str(plugins / "gone")]}
    r = httpx.delete(f"{s.url}/api/v1/plugins/mod", timeout=30)
    assert sorted(r.json()["removed"]) == [str(plugins / "mod.wasm"),
                                           str(plugins / "mod.wasm.sig")]
    assert sorted(p.name for p in plugins.iterdir()) == []
    assert [p["name"] for p in s.get("/api/v1/plugins").json()["plugins"]] == []
    assert s.manager.admin.enabled("gone") is None  # its disable is forgotten
    assert httpx.delete(f"{s.url}/api/v1/plugins/ghost", timeout=30).status_code == 404
    r = httpx.delete(f"{s.url}/api/v1/plugins/a..b", timeout=30)
    assert (r.status_code, r.json()) == (400, {"error": "invalid plugin name"})
    variant_dir(plugins, "gone")  # back again: enabled, as new
    assert s.post("/api/v1/plugins/gone/load").json()["plugin"]["enabled"] is True


# -- a plugin's event channels ----------------------------------------------------------

NEWSROOM_PLUGIN = '''
from plughost import sdk

plugin = sdk.Plugin("newsroom", version="1.0.0", event_authorizer="may_subscribe")

@plugin.function
def may_subscribe(args):
    if args["channel"] == "broken":
        raise sdk.PluginError("cannot decide")
    return {"allow": args["channel"] != "secret" and args.get("_user_login") == "admin"}

@plugin.function
def publish(args):
    sdk.host.publish_event(args["channel"], args["type"], args["data"])
    return {"ok": True}

if __name__ == "__main__":
    plugin.serve()
'''


def test_a_plugins_channel_streams_its_events_after_its_authorizer_agrees(
        site: Callable[..., Site], plugins: Path) -> None:
    pdir = plugins / "newsroom"
    pdir.mkdir()
    (pdir / "newsroom.py").write_text(NEWSROOM_PLUGIN)
    (pdir / "plugin.yaml").write_text("name: newsroom\nversion: 1.0.0\nruntime: grpc\n"
                                      "binary: newsroom.py\npermissions: [log]\n")
    variant_dir(plugins, "open")
    s = site()
    for path, status, error in (("/newsroom/events/secret", 403, "subscription not allowed"),
                                ("/newsroom/events/broken", 502, "subscription check failed"),
                                ("/ghost/events/news", 404, "plugin not found")):
        r = s.get(f"/api/v1/plugins{path}")
        assert (r.status_code, r.json()) == (status, {"error": error})

    def publish(channel: str, kind: str, data: str) -> None:
        s.manager.call("newsroom", "publish", {"channel": channel, "type": kind, "data": data})

    with httpx.Client(timeout=httpx.Timeout(30, read=30)) as client, \
            client.stream("GET", f"{s.url}/api/v1/plugins/newsroom/events/news") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        assert [next(lines), next(lines), next(lines)] == [
            "event: connected", 'data: {"status":"ok"}', ""]
        publish("sports", "goal", "not for us")
        publish("news", "created", '{"id":1}')
        publish("news", "multi", "line one\nline two")
        assert [next(lines) for _ in range(6)] == [
            "event: created", 'data: {"id":1}', "",
            "event: multi", "data: line one", "data: line two"]
    with httpx.stream("GET", f"{s.url}/api/v1/plugins/open/events/any", timeout=30) as r:
        assert r.status_code == 200  # no authorizer: any agent
    s.post("/api/v1/plugins/open/disable")
    assert s.get("/api/v1/plugins/open/events/any").status_code == 404


def test_a_lazy_servers_widget_list_loads_plugins_unless_told_not_to(
        site: Callable[..., Site], plugins: Path, engine: WasmEngine, tmp_path: Path) -> None:
    variant_dir(plugins, "aaa", {"widgets": [{"id": "w", "title": "AAA", "handler": "echo"}]})
    manager = Manager(settings=HostSettings(data_dir=tmp_path / "lazy"), drain_timeout=5.0)
    app = create_app(manager, Loader(plugins, manager, engine=engine, lazy=True),
                     watch=False, jobs=False, health=False)
    try:
        with serve_in_thread(app) as s:
            r = httpx.get(f"{s.url}/api/v1/plugins/widgets?load=false", timeout=30)
            assert r.json() == {"widgets": []} and manager.names() == []
            r = httpx.get(f"{s.url}/api/v1/plugins/widgets", timeout=30)  # GoatFlow's sweep
            assert [w["id"] for w in r.json()["widgets"]] == ["w"]
            assert manager.names() == ["aaa"]
    finally:
        manager.close()
