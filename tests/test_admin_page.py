"""The admin page in a real browser: Debian's headless Chromium driven by Playwright, against
the real server (uvicorn) on a copy of examples/plugins. No fixed sleeps: Playwright's
`expect` waits for each state the page must reach."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from plughost import Loader, Manager
from plughost.runtimes.wasm import WasmEngine
from plughost.server import create_app

from .conftest import variant_dir
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


# -- the dashboard, health, policies, event history ----------------------------------------


@pytest.fixture
def serve(plugins: Path, engine: WasmEngine) -> Iterator[Callable[..., Served]]:
    """`serve(**create_app options)`: the server over `plugins`, stopped at the end."""
    managers: list[Manager] = []
    running: list[Any] = []

    def start(**options: Any) -> Served:
        manager = Manager(drain_timeout=5.0)
        managers.append(manager)
        ctx = serve_in_thread(create_app(manager, Loader(plugins, manager, engine=engine),
                                         watch=False, keepalive=1.0, **options))
        served = ctx.__enter__()
        running.append(ctx)
        return served

    try:
        yield start
    finally:
        for ctx in reversed(running):
            ctx.__exit__(None, None, None)
        for manager in managers:
            manager.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[[Served], Any]]:
    """`open_page(served)`: the admin page in a fresh browser context, its events flowing."""
    contexts: list[Any] = []

    def open_(s: Served) -> Any:
        context = browser.new_context()
        contexts.append(context)
        pg = context.new_page()
        expect.set_options(timeout=20_000)
        pg.goto(s.url + "/")
        expect(pg.locator("#live")).to_have_attribute("data-state", "open")
        return pg

    yield open_
    for context in contexts:
        context.close()


PANEL_PLUGIN = '''
from plughost import sdk

plugin = sdk.Plugin("panel", version="1.0.0", widgets=[
    {"id": "ticker", "title": "Ticker", "handler": "ticker", "size": "small", "order": 1,
     "refreshable": True, "refresh_sec": 1},
    {"id": "still", "title": "Still <life>", "handler": "still", "size": "large", "order": 2},
    {"id": "elsewhere", "title": "Not here", "handler": "still", "location": "admin_home"},
])
calls = 0

# The script reports where it runs: an opaque origin that cannot reach the admin page.
PROBE = """<p id="where"></p><script>
let reach;
try { reach = String(!!parent.document.body); } catch (e) { reach = "no"; }
document.getElementById("where").textContent = `origin ${window.origin}, parent ${reach}`;
</script>"""

@plugin.function
def ticker(args):
    global calls
    calls += 1
    return {"html": f"<p class='n'>call {calls}</p>" + PROBE}

@plugin.function
def still(args):
    return {"html": "<p class='still'>unchanging</p>"}

if __name__ == "__main__":
    plugin.serve()
'''


def panel(plugins: Path) -> None:
    pdir = plugins / "panel"
    pdir.mkdir(parents=True)
    (pdir / "panel.py").write_text(PANEL_PLUGIN)
    (pdir / "plugin.yaml").write_text(
        "name: panel\nversion: 1.0.0\nruntime: grpc\nbinary: panel.py\n")


def test_the_dashboard_shows_each_widget_in_a_sandboxed_frame(
        serve: Callable[..., Served], open_page: Callable[[Served], Any],
        plugins: Path) -> None:
    panel(plugins)
    # testkit's echo answers its arguments, which have no `html`: a broken widget
    variant_dir(plugins, "aaa", {"widgets": [{"id": "w", "title": "AAA", "handler": "echo"}]})
    s = serve()
    pg = open_page(s)
    frames = pg.locator("#dashboard .widget-frame")
    # in GoatFlow's order (order, then plugin, then id), only the dashboard's
    expect(frames).to_have_count(3)
    assert [(f.get_attribute("data-plugin"), f.get_attribute("data-widget"))
            for f in frames.all()] == [("aaa", "w"), ("panel", "ticker"), ("panel", "still")]
    ticker = pg.locator('.widget-frame[data-plugin="panel"][data-widget="ticker"]')
    still = pg.locator('.widget-frame[data-plugin="panel"][data-widget="still"]')
    assert ticker.get_attribute("sandbox") == "allow-scripts"  # no allow-same-origin
    assert ticker.get_attribute("src") == "api/v1/plugins/panel/widgets/ticker?wrap=true"
    expect(ticker).to_have_attribute("data-refresh", "1")
    assert still.get_attribute("data-refresh") is None

    inside = pg.frame_locator('.widget-frame[data-widget="ticker"]')
    expect(inside.locator(".card-header")).to_have_text("Ticker")
    expect(inside.locator("p.n")).to_have_text(re.compile(r"^call \d+$"))
    # the widget's script runs, in an opaque origin, and cannot reach the page
    expect(inside.locator("#where")).to_have_text("origin null, parent no")
    expect(pg.frame_locator('.widget-frame[data-widget="still"]').locator(".card-header")) \
        .to_have_text("Still <life>")
    expect(pg.frame_locator('.widget-frame[data-widget="w"]').locator("body")) \
        .to_have_text("Invalid widget response")

    # sized by `size`: small is a quarter of the row, large three quarters
    small = pg.locator('figure.widget[data-widget="ticker"]')
    large = pg.locator('figure.widget[data-widget="still"]')
    expect(small).to_have_attribute("data-size", "small")
    expect(large).to_have_attribute("data-size", "large")
    small_box, large_box = small.bounding_box(), large.bounding_box()
    assert small_box is not None and large_box is not None
    assert large_box["width"] > 2.5 * small_box["width"]

    # refreshed every second: the frame loads again, with the handler's new answer, and
    # without filling the page's history (the Back button)
    history = pg.evaluate("history.length")
    expect(ticker).to_have_attribute("data-loads", re.compile(r"^([3-9]|\d\d+)$"))
    expect(inside.locator("p.n")).not_to_have_text("call 1")
    assert pg.evaluate("history.length") == history
    expect(still).to_have_attribute("data-loads", "1")  # not refreshable

    r = httpx.post(f"{s.url}/api/v1/plugins/panel/disable", timeout=30)
    assert r.json()["status"] == "disabled"
    expect(pg.locator('.widget-frame[data-plugin="panel"]')).to_have_count(0)
    expect(frames).to_have_count(1)  # aaa's stays
    httpx.post(f"{s.url}/api/v1/plugins/aaa/unload", timeout=30)
    expect(frames).to_have_count(0)
    expect(pg.locator("#dashboard-empty")).to_be_visible()
    httpx.post(f"{s.url}/api/v1/plugins/panel/enable", timeout=30)
    expect(frames).to_have_count(2)
    expect(pg.locator("#dashboard-empty")).to_be_hidden()
    expect(pg.frame_locator('.widget-frame[data-widget="still"]').locator("p.still")) \
        .to_have_text("unchanging")


def test_the_health_column_and_the_crash_loop_reset(
        serve: Callable[..., Served], open_page: Callable[[Served], Any],
        plugins: Path) -> None:
    from .conftest import wait_until
    from .test_jobs import HandClock
    from .test_platform_server import pinger

    pinger(plugins, "well", "json")
    pinger(plugins, "sick", "hang", call_timeout_ms=200)
    clock = HandClock()
    s = serve(health_clock=clock)
    pg = open_page(s)
    well, sick = row(pg, "well").locator(".health"), row(pg, "sick").locator(".health")
    reset = row(pg, "sick").locator('button[data-action="reset-crashloop"]')
    expect(well).to_have_attribute("data-health", "unknown")  # not probed yet
    expect(sick).to_have_attribute("data-health", "unknown")
    expect(pg.locator('button[data-action="reset-crashloop"]')).to_have_count(0)

    clock.advance(60)
    expect(well).to_have_attribute("data-health", "healthy")  # its health event
    expect(well.locator(".verdict")).to_have_text("healthy")
    checker = s.state.health
    assert checker is not None
    for n in (2, 3):  # one round at a time: a tick passed during a round is skipped
        wait_until(lambda n=n: checker.rounds == n - 1)
        clock.advance(60)
    # three deadlines: unhealthy, and restarted by the checker (its reload and health
    # events refresh the page)
    expect(sick).to_have_attribute("data-health", "unhealthy")
    expect(sick.locator(".verdict")).to_have_text("unhealthy (failures 3)")
    expect(sick.locator(".detail")).to_contain_text("restarts: 1")
    expect(reset).to_be_visible()
    expect(row(pg, "well").locator('button[data-action="reset-crashloop"]')).to_have_count(0)

    reset.click()
    expect(pg.locator("#message")).to_have_text("reset-crashloop sick: ok")
    expect(reset).to_have_count(0)
    got = httpx.get(f"{s.url}/api/v1/plugins/health", timeout=30).json()["plugins"]["sick"]
    assert got["restart_attempts"] == 0
    expect(sick).to_have_attribute("data-health", "unhealthy")  # still failing


def test_the_policy_editor_saves_and_drops_a_policy(
        serve: Callable[..., Served], open_page: Callable[[Served], Any],
        plugins: Path) -> None:
    variant_dir(plugins, "tk", {"resources": {"permissions": [
        {"type": "cache"}, {"type": "db", "access": "read"}]}})
    s = serve()
    pg = open_page(s)
    url = f"{s.url}/api/v1/plugins/tk/policy"
    grants = row(pg, "tk").locator("td.grants .grant")
    expect(grants).to_have_text(["cache", "db:read"])
    row(pg, "tk").locator("td.name").click()
    box, message = pg.locator("#policy"), pg.locator("#policy-message")
    expect(message).to_have_text("no saved policy; effective grants: cache, db:read")
    expect(message).to_have_attribute("data-kind", "ok")
    expect(box).to_have_value("")

    box.fill('{"revoke": [{"type": "cache"}]}')
    pg.locator("#policy-save").click()
    expect(message).to_have_text("saved; effective grants: db:read")
    expect(grants).to_have_text(["db:read"])  # the table follows
    assert json.loads(box.input_value()) == {"revoke": [{"type": "cache"}]}
    got = httpx.get(url, timeout=30).json()
    assert got["saved"] == {"revoke": [{"type": "cache"}]}
    assert got["effective"]["grants"] == [{"type": "db", "access": "read"}]

    bad = {"status": "sideways"}
    refused = httpx.put(url, json=bad, timeout=30)
    assert refused.status_code == 400
    box.fill(json.dumps(bad))
    pg.locator("#policy-save").click()
    expect(message).to_have_attribute("data-kind", "error")
    expect(message).to_contain_text(refused.json()["error"])
    box.fill("{not json")
    pg.locator("#policy-save").click()
    expect(message).to_contain_text("not JSON")
    assert httpx.get(url, timeout=30).json()["saved"] == {"revoke": [{"type": "cache"}]}

    pg.locator("#policy-drop").click()
    expect(message).to_have_text("dropped; effective grants: cache, db:read")
    expect(box).to_have_value("")
    expect(grants).to_have_text(["cache", "db:read"])
    assert httpx.get(url, timeout=30).json()["saved"] is None


def test_the_event_list_starts_with_the_history_and_never_repeats_it(
        page: Any, served: Served) -> None:
    events = page.locator("#events li.event")
    loads = page.locator('#events li.event[data-kind="load"]')
    # the server loaded three plugins before the page opened: the stream's history
    expect(loads).to_have_count(3)
    expect(page.locator('#events li.event[data-kind="load"][data-history="true"]')) \
        .to_have_count(3)
    assert sorted(x.get_attribute("data-plugin") for x in loads.all()) == [
        "counter", "greeter", "hello"]
    httpx.post(f"{served.url}/api/v1/plugins/hello/disable", timeout=30)
    live = page.locator('#events li.event[data-kind="disable"]:not([data-history])')
    expect(live).to_have_count(1)
    expect(events.first).to_have_attribute("data-kind", "disable")  # newest first
    # a new connection replays the history: nothing shown twice
    page.evaluate("() => { source.close(); listen(); }")
    httpx.post(f"{served.url}/api/v1/plugins/hello/enable", timeout=30)
    expect(page.locator('#events li.event[data-kind="enable"]')).to_have_count(1)
    expect(loads).to_have_count(3)
    expect(page.locator('#events li.event[data-kind="disable"]')).to_have_count(1)
    expect(events).to_have_count(5)


def test_the_page_works_under_a_prefix_behind_a_token(browser: Any, plugins: Path,
                                                        engine: WasmEngine) -> None:
    """Relative URLs everywhere: mounted at /ph, every request, the event stream and the
    widget frames carry the login cookie (its path is the prefix)."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    panel(plugins)
    token = "a-token-for-the-admin-page"
    manager = Manager(drain_timeout=5.0)
    inner = create_app(manager, Loader(plugins, manager, engine=engine), watch=False,
                       keepalive=1.0, token=token)
    outer = Starlette(routes=[Mount("/ph", app=inner)],
                      lifespan=inner.router.lifespan_context)
    try:
        with serve_in_thread(outer) as s:
            # closed before the server stops: mounted, the server cannot end the page's
            # event stream itself (docs/server.md), and shutdown would wait for it
            context = browser.new_context()
            try:
                pg = context.new_page()
                pg.goto(s.url + "/ph/")
                expect(pg.locator("#login")).to_be_visible()  # every request was refused
                expect(pg.locator("#dashboard .widget-frame")).to_have_count(0)
                pg.locator("#token").fill(token)
                pg.locator('#login button[type="submit"]').click()
                expect(pg.locator("#login")).to_be_hidden()
                expect(pg.locator("#live")).to_have_attribute("data-state", "open")
                expect(row(pg, "panel").locator(".state")).to_have_text("running")
                expect(pg.frame_locator('.widget-frame[data-widget="still"]')
                       .locator("p.still")).to_have_text("unchanging")
                expect(pg.locator('#events li.event[data-kind="load"][data-history="true"]')) \
                    .to_have_count(1)
            finally:
                context.close()
    finally:
        manager.close()


def test_a_goatflow_plugins_widget_shows_its_jobs_run(browser: Any, plugins: Path,
                                                     serve: Callable[..., Served],
                                                     open_page: Callable[[Served], Any]
                                                     ) -> None:
    """The corpus's ticket-tools (Go): its dashboard widget counts its job's runs, so a run
    on the hand-moved clock shows in the jobs table and, at the next refresh, in the
    widget's sandboxed frame."""
    import shutil

    from .test_goatflow_hostapi import CORPUS
    from .test_jobs import HandClock

    shutil.copytree(CORPUS / "ticket-tools", plugins / "ticket-tools")
    clock = HandClock()
    s = serve(job_clock=clock)
    pg = open_page(s)
    frame = pg.frame_locator(
        'iframe.widget-frame[data-plugin="ticket-tools"][data-widget="open-tickets"]')
    expect(frame.locator(".card-header")).to_have_text("Open tickets")
    expect(frame.locator(".runs")).to_have_text("Job runs: 0")
    tick = pg.locator('#jobs tr[data-job="tick"]')
    expect(tick.locator(".schedule")).to_have_text("@every 1m")
    clock.advance(60)
    expect(tick.locator(".status")).to_have_text("ok")
    expect(frame.locator(".runs")).to_have_text("Job runs: 1")  # refresh_sec 1
    expect(pg.locator('#events li.event[data-kind="plugin_event"]'
                      '[data-plugin="ticket-tools"]')).to_have_count(1)
