"""The GoatFlow corpus's ticket-tools plugin (Go, wasip1; tests/fixtures/goatflow) on
`plughost serve`'s app, over real HTTP: its routes at their declared paths with each
middleware and each result form, its widget, its job on a hand-moved clock, its menu,
template override, error codes and health probe."""

from __future__ import annotations

import hashlib
import hmac
import queue
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from plughost import Caller, Event, Loader, Manager, catalog
from plughost.host import HostSettings
from plughost.runtimes.wasm import WasmEngine
from plughost.server import create_app

from .serving import Served, serve_in_thread
from .test_goatflow_hostapi import CORPUS
from .test_jobs import HandClock

BASE = "/api/plugins/ticket-tools"
USERS = {
    "ada": Caller(user_id=7, login="ada", groups=frozenset({"support"}), org_id=3, lang="de"),
    "bob": Caller(user_id=8, login="bob"),
    "root": Caller(user_id=1, login="root", role="Admin", is_admin=True),
    "cust": Caller(user_id=40, customer_login="cust", role="Customer"),
}


def identify(request: Request) -> Caller | None:
    return USERS.get(request.headers.get("x-user", ""))


class Desk:
    def __init__(self, served: Served, jobs: HandClock, health: HandClock) -> None:
        self.s, self.url, self.jobs, self.health = served, served.url, jobs, health
        self.manager = served.state.manager
        self.events: queue.Queue[Event] = queue.Queue()
        self.manager.add_listener(self.events.put)

    def get(self, path: str, user: str | None = None, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers={"x-user": user} if user else {},
                         timeout=30, follow_redirects=False, **kw)

    def post(self, path: str, user: str | None = None, **kw: Any) -> httpx.Response:
        headers = {**({"x-user": user} if user else {}), **kw.pop("headers", {})}
        return httpx.post(self.url + path, headers=headers, timeout=30, **kw)

    def event(self, kind: str, timeout: float = 20.0) -> Event:
        while True:
            e = self.events.get(timeout=timeout)
            if e.kind == kind and e.plugin == "ticket-tools":
                return e


@pytest.fixture
def desk(plugins: Path, tmp_path: Path, engine: WasmEngine) -> Iterator[Desk]:
    shutil.copytree(CORPUS / "ticket-tools", plugins / "ticket-tools")
    manager = Manager(settings=HostSettings(data_dir=tmp_path / "data"), drain_timeout=5.0)
    jobs, health = HandClock(), HandClock()
    app = create_app(manager, Loader(plugins, manager, engine=engine), watch=False,
                     identify=identify, job_clock=jobs, health_clock=health)
    try:
        with serve_in_thread(app) as s:
            yield Desk(s, jobs, health)
    finally:
        manager.close()


def test_routes_answer_as_under_goatflow(desk: Desk) -> None:
    r = desk.get(f"{BASE}/hello?name=Ada")  # public
    assert r.content == b'{"admin":false,"message":"Hello, Ada!","method":"GET"}'
    assert desk.get(f"{BASE}/mine").json() == {"success": False,
                                               "error": "Authentication required"}
    assert desk.get(f"{BASE}/mine", "ada").content == (
        b'{"customer":null,"lang":"de","login":"ada","org_id":3,"role":"Agent","user_id":7}')
    r = desk.post(f"{BASE}/close/42", "ada", json={"reason": "duplicate", "_user_login": "x"})
    assert r.content == b'{"by":"ada","closed":"42","reason":"duplicate"}'
    r = desk.post(f"{BASE}/close/42", "bob", json={"reason": "x"})
    assert (r.status_code, r.json()["error"]) == (403, "access denied: requires group support")
    assert desk.get(f"{BASE}/admin", "bob").status_code == 403
    r = desk.get(f"{BASE}/admin", "root")
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>Ticket tools</title>" in r.text
    assert "<h1>Ticket tools</h1><p>for root</p>" in r.text
    r = desk.get(f"{BASE}/again", "bob")
    assert (r.status_code, r.headers["location"]) == (302, f"{BASE}/hello?name=again")
    r = desk.get(f"{BASE}/export.csv", "bob")
    assert (r.content, r.headers["content-type"]) == (b"id,subject\n1,Printer on fire\n",
                                                      "text/csv")
    assert desk.get(f"{BASE}/export.csv", "cust").status_code == 403
    assert desk.get(f"{BASE}/portal", "cust").json()["customer"] == "cust"
    assert desk.get(f"{BASE}/portal", "bob").status_code == 403
    r = desk.get(f"{BASE}/broken")
    assert (r.status_code, r.json()) == (500, {"error": "unknown function: nosuch"})
    assert desk.get(f"{BASE}/sparkly", "root").status_code == 404
    log = [x.message for x in desk.manager.log_for("ticket-tools").records()]
    assert ("not registering plugin route GET /api/plugins/ticket-tools/sparkly: unknown "
            "middleware 'sparkles'") in log


def test_its_webhook_checks_the_signature(desk: Desk) -> None:
    api = desk.manager.host.api
    assert api is not None
    api.secure_config_set("ticket-tools", 0, "ticket-tools_webhook_secret", "whsec")
    body = b'{"event": "ticket.created"}'
    sig = hmac.new(b"whsec", body, hashlib.sha256).hexdigest()
    r = desk.post(f"{BASE}/hook", content=body, headers={
        "content-type": "application/json", "x-hub-signature-256": f"sha256={sig}"})
    assert r.content == b'{"received":"ticket.created"}'
    r = desk.post(f"{BASE}/hook", content=b"{}", headers={
        "content-type": "application/json",
        "x-hub-signature-256": "sha256=" + hmac.new(b"whsec", b"{}", hashlib.sha256)
        .hexdigest()})
    assert (r.status_code, r.json()) == (422, {"error": "missing event"})


def test_its_job_runs_on_schedule_and_its_widget_shows_it(desk: Desk) -> None:
    scheduler = desk.s.state.scheduler
    assert scheduler is not None
    (info,) = scheduler.jobs("ticket-tools")
    assert info.id == "tick" and info.last_run is None  # "dormant" is not enabled
    r = desk.get("/api/v1/plugins/ticket-tools/widgets/open-tickets", "bob")
    assert '<p class="runs">Job runs: 0</p>' in r.text
    desk.jobs.advance(60)
    published = desk.event("plugin_event")  # during the run
    assert (published.channel, published.event_type, published.detail) == (
        "tickets", "tick", '{"runs":1}')
    assert desk.event("job_run").detail.startswith("tick ok in ")
    r = desk.get("/api/v1/plugins/ticket-tools/widgets/open-tickets?wrap=true", "bob")
    assert '<div class="card-header">Open tickets</div>' in r.text
    assert '<p class="runs">Job runs: 1</p>' in r.text
    jobs = desk.get("/api/v1/jobs", "bob").json()
    assert jobs[0]["last_status"] == "ok" and jobs[0]["last_run"] is not None
    widgets = desk.get("/api/v1/plugins/widgets", "bob").json()["widgets"]
    assert widgets == [{"id": "open-tickets", "title": "Open tickets",
                        "plugin_name": "ticket-tools", "size": "medium", "refreshable": True,
                        "refresh_sec": 1}]
    assert "tick 1" in [x.message for x in desk.manager.log_for("ticket-tools").records()]


def test_its_menu_template_error_codes_and_health(desk: Desk) -> None:
    (item,) = desk.get("/api/v1/plugins/menus?location=agent", "ada").json()["menu_items"]
    assert (item["id"], item["text"], item["path"]) == ("tools", "Ticket-Werkzeuge",
                                                        "/ticket-tools")
    assert catalog.render_template(desk.manager, "ticket/zoom", {"subject": "A & B"}) == (
        '<section class="zoom">A &amp; B</section>')
    codes = desk.get("/api/v1/plugins/error-codes", "ada").json()["error_codes"]
    assert codes["ticket-tools:not_found"]["http_status"] == 404
    desk.health.advance(60)
    assert desk.event("health").detail == "healthy"
    health = desk.get("/api/v1/plugins/health", "ada").json()["plugins"]["ticket-tools"]
    assert health["healthy"] and health["payload"] == {"runs": 0, "status": "ok"}
