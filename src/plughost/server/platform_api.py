"""The management API's platform endpoints (docs/server.md): widgets, menus, templates and
error codes (catalog.py), health (health.py), and the operator's saved policies
(adminstate.py), at GoatFlow's paths and shapes where GoatFlow has them."""

from __future__ import annotations

import asyncio
import dataclasses
import html
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .. import catalog, uploads
from ..errors import ManifestError, PlughostError, PluginNotFound
from ..host import gojson
from ..manifest import is_valid_name
from .api import admin_only, failed, reader
from .envelope import identity, json_object, language, route_args
from .errors import bad_request, error_json
from .events import ChannelStream
from .results import SANDBOX
from .routes import BodyTimeout, caller_of, parse_json, read_body
from .state import ServerState, state_of

# -- what plugins add to pages (catalog.py) ----------------------------------------------

async def _sweep_lazy(st: ServerState) -> None:
    """GoatFlow loads every discovered plugin before listing widgets (a lazy plugin's
    widgets are only known once it is loaded); a failed load is its own error."""
    if not st.loader.lazy:
        return
    for d in st.loader.discovered_plugins():
        if not d.loaded and d.error is None:
            try:
                await st.loader.aensure_loaded(d.name)
            except PlughostError as exc:
                st.hub.record_error(exc.plugin or d.name, str(exc))


@reader
async def widgets(request: Request) -> Response:
    """GoatFlow's `{"widgets": [...]}` at `?location=` (default `dashboard`); with
    `?load=false` (plughost's) a lazy server lists the loaded plugins' only."""
    st = state_of(request)
    if request.query_params.get("load") != "false":
        await _sweep_lazy(st)
    location = request.query_params.get("location") or catalog.DEFAULT_WIDGET_LOCATION
    return JSONResponse({"widgets": [w.as_goatflow()
                                     for w in catalog.widgets(st.manager, location)]})


@reader
async def widget(request: Request) -> Response:
    """One widget's HTML, from its handler called with the request's route envelope;
    `?wrap=true` puts it in a card with the widget's title. GoatFlow's plain-text 404s
    and 500s."""
    st = state_of(request)
    name, wid = request.path_params["name"], request.path_params["id"]
    info = st.manager.info(name)
    if info is None or not info.enabled:
        return PlainTextResponse(f"Plugin not found: {name}", status_code=404)
    spec = catalog.widget(st.manager, name, wid)
    if spec is None:
        return PlainTextResponse(f"Widget not found: {name}/{wid}", status_code=404)
    plugin = st.manager.get(name)
    with_org = plugin is None or not plugin.registration.skip_org_injection
    args = route_args(request, {}, b"", await caller_of(request), with_org=with_org)
    try:
        raw = await st.manager.acall_raw(name, spec.handler, gojson.dumps(args))
    except PlughostError as exc:
        return PlainTextResponse(f"Widget error: {exc}", status_code=500)
    result = json_object(raw)
    page = result.get("html") if result is not None else None
    if not isinstance(page, str):
        return PlainTextResponse("Invalid widget response", status_code=500)
    if request.query_params.get("wrap") == "true":
        page = (f'<div class="card widget" data-widget="{html.escape(wid)}">'
                f'<div class="card-header">{html.escape(spec.title)}</div>'
                f'<div class="card-body">{page}</div></div>')
    return Response(page, media_type="text/html; charset=utf-8", headers=dict(SANDBOX))


@reader
async def menus(request: Request) -> Response:
    """The enabled plugins' menu items (`?location=`), labels translated for the caller
    (`?lang=` overrides), in GoatFlow's order."""
    st = state_of(request)
    lang = request.query_params.get("lang") or language(request, await caller_of(request))
    items = catalog.menu_items(st.manager, request.query_params.get("location") or None,
                               lang or "en")
    return JSONResponse({"menu_items": [m.as_json() for m in items]})


@reader
async def templates(request: Request) -> Response:
    overrides = catalog.template_overrides(state_of(request).manager)
    return JSONResponse({"templates": [dataclasses.asdict(t) for t in overrides.values()]})


@reader
async def error_codes(request: Request) -> Response:
    codes = catalog.error_codes(state_of(request).manager)
    return JSONResponse({"error_codes": {k: dataclasses.asdict(v) for k, v in codes.items()}})


@reader
async def health(request: Request) -> Response:
    """GoatFlow's `{"plugins": {name: PluginHealth}}` (empty with health checks off)."""
    checker = state_of(request).health
    statuses = checker.statuses() if checker is not None else {}
    return JSONResponse({"plugins": {n: h.as_json() for n, h in sorted(statuses.items())}})


@admin_only
async def reset_crashloop(request: Request) -> Response:
    """Forget a plugin's restart history and abandonment (GoatFlow's crash-loop reset); a
    gRPC plugin whose circuit opened (`failed`) is reloaded too."""
    st = state_of(request)
    name = request.path_params["name"]
    plugin = st.manager.get(name)
    if plugin is None or (st.health is not None and not st.health.reset(name)
                          and plugin.state != "failed"):
        return JSONResponse({"error": "plugin not found"}, status_code=404)
    st.manager.log_for(name).info("Crash-loop guard reset by admin", source="host")
    if plugin.state == "failed":
        try:
            await st.loader.areload(name)
        except PlughostError as exc:
            return failed(st, name, exc, 500)
    return JSONResponse({"status": "reset"})


# -- uploads (uploads.py) ---------------------------------------------------------------

@admin_only
async def upload(request: Request) -> Response:
    """GoatFlow's upload: multipart field `plugin`, a `.wasm` or `.zip`; installed into
    the plugin directory and loaded or reloaded before the answer."""
    st = state_of(request)
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():  # a file part is spooled whole before any size check
        return error_json("an upload must declare its Content-Length", "LengthRequired", 411)
    if int(declared) > st.max_upload + 64 * 1024:  # the form's own bytes aside
        return error_json(f"upload larger than {st.max_upload} bytes", "PayloadTooLarge", 413)
    try:
        async with asyncio.timeout(st.body_timeout):
            async with request.form(max_files=1, max_fields=10,
                                    max_part_size=st.max_upload) as form:
                item = form.get("plugin")
                if not isinstance(item, UploadFile) or not item.filename:
                    return bad_request('expected a multipart file field "plugin"')
                filename = item.filename
                data = await item.read(st.max_upload + 1)
    except TimeoutError:
        return error_json(f"upload not received within {st.body_timeout:g} s",
                          "RequestTimeout", 408)
    except (MultiPartException, HTTPException) as exc:
        return bad_request(f"malformed upload: {getattr(exc, 'message', None) or exc}")
    if len(data) > st.max_upload:
        return error_json(f"upload larger than {st.max_upload} bytes", "PayloadTooLarge", 413)
    try:
        done = await st.manager.run_blocking(uploads.install, st.loader, filename, data)
    except PlughostError as exc:
        st.manager.log_for(exc.plugin or "system").error(
            f"Plugin upload refused: {exc}", source="host")
        return error_json(f"Invalid plugin package: {exc}", type(exc).__name__, 400,
                          plugin=exc.plugin)
    st.manager.log_for(done.name).info(
        f"Plugin uploaded: {done.name} (runtime: {done.runtime}, size: {done.size} bytes)",
        source="host")
    return JSONResponse({"message": "Plugin uploaded successfully", "name": done.name,
                         "path": str(done.path), "runtime": done.runtime,
                         "replaced": done.replaced})


@admin_only
async def uninstall(request: Request) -> Response:
    """GoatFlow's uninstall: unload, forget, remove the plugin's files."""
    st = state_of(request)
    name = request.path_params["name"]
    if not name or ".." in name or "/" in name or "\\" in name or not is_valid_name(name):
        return JSONResponse({"error": "invalid plugin name"}, status_code=400)
    try:
        removed = await st.manager.run_blocking(uploads.uninstall, st.loader, name)
    except PluginNotFound as exc:
        return error_json(str(exc), type(exc).__name__, 404, plugin=name)
    except PlughostError as exc:
        return failed(st, name, exc, 500)
    st.manager.log_for(name).info(f"Plugin uninstalled: {name}", source="host")
    return JSONResponse({"message": "plugin uninstalled", "name": name,
                         "removed": [str(p) for p in removed]})


# -- a plugin's event channels -------------------------------------------------------------

@reader
async def channel_events(request: Request) -> Response:
    """GoatFlow's subscription to one plugin's events on one channel, after its
    `event_authorizer` (if it names one) allows the caller."""
    st = state_of(request)
    name, channel = request.path_params["name"], request.path_params["channel"]
    info = st.manager.info(name)
    plugin = st.manager.get(name)
    if info is None or not info.enabled or plugin is None:
        return JSONResponse({"error": "plugin not found"}, status_code=404)
    authorizer = plugin.registration.event_authorizer
    if authorizer:
        with_org = not plugin.registration.skip_org_injection
        args = {"channel": channel,
                **identity(request, await caller_of(request), with_org=with_org)}
        try:
            raw = await st.manager.acall_raw(name, authorizer, gojson.dumps(args))
        except PlughostError:
            return JSONResponse({"error": "subscription check failed"}, status_code=502)
        answer = json_object(raw)
        if answer is None or answer.get("allow") is not True:
            return JSONResponse({"error": "subscription not allowed"}, status_code=403)
    return ChannelStream(st.hub, name, channel, keepalive=st.hub.channel_keepalive)


# -- the operator's saved policies (adminstate.py) ----------------------------------------

def _policy_view(st: ServerState, name: str) -> dict[str, Any]:
    saved = st.manager.admin.policy(name)
    grants = st.manager.grants(name)
    return {"plugin": name,
            "saved": None if saved is None else saved.model_dump(mode="json",
                                                                 exclude_unset=True),
            "effective": None if grants is None else {
                "grants": grants.as_list(), "unsafe": grants.unsafe(),
                "blocked": grants.blocked}}


@reader
async def get_policy(request: Request) -> Response:
    """The policy the operator saved for a plugin, and what the plugin is granted now."""
    name = request.path_params["name"]
    if not is_valid_name(name):
        return bad_request(f"{name!r} is not a plugin name")
    st = state_of(request)
    return JSONResponse(await st.manager.run_blocking(_policy_view, st, name))


@admin_only
async def put_policy(request: Request) -> Response:
    """Save the operator's policy for a plugin (a JSON Policy); it survives a restart and
    a loaded plugin gets it at once. DELETE drops it."""
    st = state_of(request)
    name = request.path_params["name"]
    if not is_valid_name(name):
        return bad_request(f"{name!r} is not a plugin name")
    policy: Any = None
    if request.method == "PUT":
        try:
            policy = parse_json(await read_body(request, 64 * 1024, st.body_timeout))
        except (OverflowError, BodyTimeout, ValueError) as exc:
            return bad_request(str(exc) or "expected a JSON policy")
        if not isinstance(policy, dict):
            return bad_request("a policy is a JSON object")
    try:
        await st.manager.run_blocking(st.manager.save_policy, name, policy)
    except ManifestError as exc:
        return bad_request(str(exc))
    except PlughostError as exc:
        return failed(st, name, exc, 500)
    st.manager.log_for(name).info("policy " + ("saved" if policy is not None else "dropped")
                                  + " by admin", source="host")
    return JSONResponse(await st.manager.run_blocking(_policy_view, st, name))

