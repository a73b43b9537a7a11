"""The admin page in a real browser: Debian's headless Chromium driven by Playwright, against
the real server (uvicorn) on a copy of examples/plugins. No fixed sleeps: Playwright's
`expect` waits for each state the page must reach."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from plughost import Loader, Manager
from plughost.runtimes.wasm import WasmEngine
from plughost.server import create_app

from .serving import Served, serve_in_thread

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="needs the playwright package (pip install playwright; "
    "the browser is Debian's chromium, never `playwright install`)")
expect = sync_api.expect

ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def served(examples: Path, engine: WasmEngine) -> Iterator[Served]:
    manager = Manager(drain_timeout=5.0)
    loader = Loader(examples, manager, engine=engine)
    try:
        with serve_in_thread(create_app(manager, loader, watch=False, keepalive=1.0)) as s:
            yield s
    finally:
        manager.close()


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Any]:
    context = browser.new_context()
    pg = context.new_page()
    expect.set_options(timeout=20_000)  # a loaded CI machine starts grpc plugins slowly
    pg.goto(served.url + "/")
    expect(pg.locator("#live")).to_have_attribute("data-state", "open")  # events flow
    yield pg
    context.close()


def call(s: Served, function: str, plugin: str = "counter") -> Any:
    r = httpx.post(f"{s.url}/api/v1/plugins/{plugin}/call/{function}", json={}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def row(pg: Any, name: str) -> Any:
    return pg.locator(f'#plugins tr[data-plugin="{name}"]')


def test_page_lists_the_plugins_with_their_state(page: Any) -> None:
    for name, kind in (("hello", "wasm"), ("counter", "wasm"), ("greeter", "grpc")):
        expect(row(page, name).locator(".state")).to_have_text("running")
        expect(row(page, name).locator(".kind")).to_have_text(kind)
        expect(row(page, name).locator(".version")).to_have_text("1.0.0")
    expect(page.locator("#summary")).to_have_text("3 of 3 plugins loaded")
    expect(row(page, "greeter").locator("a.route")).to_have_attribute(
        "href", "/hello")
    expect(row(page, "counter").locator('button[data-action="load"]')).to_be_disabled()
    # each plugin's effective grants: counter and greeter declare [config, log]
    expect(row(page, "counter").locator("td.grants .grant")).to_have_text(["config:read"])
    expect(row(page, "counter").locator("td.grants .unsafe")).to_have_count(0)


def test_reload_button_reloads_the_plugin(page: Any, served: Served) -> None:
    assert call(served, "increment") == {"count": 1}
    row(page, "counter").locator('button[data-action="reload"]').click()
    expect(page.locator('#events li.event[data-kind="reload"][data-plugin="counter"]')) \
        .to_have_count(1)
    expect(page.locator("#message")).to_have_text("reload counter: ok")
    assert call(served, "increment") == {"count": 1}  # a fresh instance: state was reset


def test_unload_and_load_buttons_change_the_state(page: Any, served: Served) -> None:
    counter = row(page, "counter")
    counter.locator('button[data-action="unload"]').click()
    expect(counter.locator(".state")).to_have_text("discovered")
    expect(page.locator("#summary")).to_have_text("2 of 3 plugins loaded")
    assert served.state.manager.get("counter") is None
    counter.locator('button[data-action="load"]').click()
    expect(counter.locator(".state")).to_have_text("running")
    expect(page.locator("#summary")).to_have_text("3 of 3 plugins loaded")
    assert call(served, "increment") == {"count": 1}


def test_changes_made_elsewhere_show_up_live(page: Any, served: Served) -> None:
    r = httpx.post(f"{served.url}/api/v1/plugins/hello/disable", timeout=30)
    assert r.status_code == 200
    expect(page.locator('#events li.event[data-kind="disable"][data-plugin="hello"]')) \
        .to_have_count(1)
    expect(row(page, "hello").locator(".state")).to_have_attribute("data-enabled", "false")
    expect(row(page, "hello").locator('button[data-action="enable"]')).to_be_enabled()
    httpx.post(f"{served.url}/api/v1/plugins/hello/unload", timeout=30)
    expect(row(page, "hello").locator(".state")).to_have_text("discovered")


def test_live_log_shows_a_line_after_a_call(page: Any, served: Served) -> None:
    row(page, "counter").locator("td.name").click()
    expect(page.locator("#log-panel")).to_have_attribute("data-plugin", "counter")
    expect(page.locator("#log li.log-line").first).to_be_visible()  # the load lines
    lines = page.locator("#log li.log-line", has_text="counter reset")
    expect(lines).to_have_count(0)
    assert call(served, "reset") == {"count": 0}
    expect(lines).to_have_count(1)
    expect(lines).to_have_attribute("data-source", "plugin")


def test_a_failed_reload_is_reported(page: Any, served: Served) -> None:
    wasm = served.state.loader.plugin_dir / "counter" / "counter.wasm"
    wasm.write_bytes(b"\0asm not really")
    row(page, "counter").locator('button[data-action="reload"]').click()
    expect(page.locator("#message")).to_have_attribute("data-kind", "error")
    expect(page.locator("#message")).to_contain_text("reload counter failed: PluginLoadError")
    expect(row(page, "counter").locator(".error")).to_contain_text("counter")
    expect(row(page, "counter").locator(".state")).to_have_text("running")  # old one serves


def test_the_jobs_table_shows_a_jobs_last_run(browser: Any, plugins: Path,
                                               engine: WasmEngine) -> None:
    from .conftest import variant_dir
    from .test_jobs import HandClock

    variant_dir(plugins, "ticker", {"jobs": [
        {"id": "tick", "handler": "count", "schedule": "@every 30s", "enabled": True},
        {"id": "broken", "handler": "count", "schedule": "61 * * * *", "enabled": True}]})
    clock = HandClock()
    manager = Manager(drain_timeout=5.0)
    loader = Loader(plugins, manager, engine=engine)
    try:
        app = create_app(manager, loader, watch=False, keepalive=1.0, job_clock=clock)
        with serve_in_thread(app) as s:
            context = browser.new_context()
            pg = context.new_page()
            pg.goto(s.url + "/")
            expect(pg.locator("#live")).to_have_attribute("data-state", "open")
            tick = pg.locator('#jobs tr[data-job="tick"]')
            expect(tick.locator(".schedule")).to_have_text("@every 30s")
            expect(tick.locator(".status")).to_have_text("")
            expect(pg.locator('#jobs tr[data-job="broken"] .next')).to_have_text("never")
            clock.advance(30)
            # the job_run event refreshes the page: its last run, duration and status
            expect(tick.locator(".status")).to_have_text("ok")
            expect(tick.locator(".took")).to_have_text(re.compile(r"^\d+\.\d{3} s$"))
            expect(tick.locator(".last")).not_to_have_text("")
            expect(pg.locator('#events li.event[data-kind="job_run"][data-plugin="ticker"]')) \
                .to_have_count(1)
            context.close()
    finally:
        manager.close()
