"""The management API under `/api/v1` (docs/server.md): GoatFlow's endpoints at GoatFlow's
paths with GoatFlow's shapes (a plughost row adds its own keys to each), plughost's own
endpoints beside them. Blocking work never runs on the loop: plugin calls use the
manager's `a*` calls, loads and unloads the loader's `a*` twins.

Who may use it: with an identity hook, reading needs an authenticated agent and acting an
admin (GoatFlow's rule); `plughost serve` vouches the API token's holder as the operator.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import listing
from ..errors import PlughostError, PluginNotFound
from ..host import gojson
from ..logs import LogRecord
from .auth import COOKIE, COOKIE_MAX_AGE
from .envelope import MAX_ROUTE_BODY, direct_call_args, json_object
from .errors import LOAD_ERRORS, bad_request, error_json, error_response
from .events import EventStream
from .routes import BodyTimeout, caller_of, parse_json, read_body
from .state import ServerState, state_of

ACTIONS = ("load", "unload", "reload", "enable", "disable")

_Endpoint = Callable[[Request], Awaitable[Response]]


def _gate(admin: bool) -> Callable[[_Endpoint], _Endpoint]:
    """GoatFlow's rule for the management API: reading needs an authenticated agent,
    acting an admin (with `plughost serve`, the token's holder is both)."""

    def wrap(endpoint: _Endpoint) -> _Endpoint:
        @functools.wraps(endpoint)
        async def gated(request: Request) -> Response:
            caller = await caller_of(request)
            if caller is None:
                return error_json("Authentication required", "Unauthorized", 401)
            if caller.is_customer or (admin and not caller.is_admin):
                return error_json("admin access required" if admin
                                  else "agent access required", "Forbidden", 403)
            return await endpoint(request)

        return gated

    return wrap


reader, admin_only = _gate(admin=False), _gate(admin=True)


# -- reading -----------------------------------------------------------------------------

def plugin_rows(st: ServerState, root: str = "") -> list[dict[str, Any]]:
    """Every plugin, as `plughost list` shows it, plus each one's last error from events."""
    return listing.plugin_rows(st.manager, st.loader, last_error=st.hub.last_error,
                               route_root=root)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _row(request: Request, name: str) -> dict[str, Any] | None:
    st = state_of(request)
    rows = plugin_rows(st, _root(request))
    row = next((r for r in rows if r["name"] == name), None)
    return None if row is None else goatflow_entry(st, row)


async def login(request: Request) -> Response:
    """`{"token": "..."}` -> the login cookie (HttpOnly, SameSite=Strict) for the admin
    page, whose EventSource cannot send an Authorization header."""
    st = state_of(request)
    try:
        body = parse_json(await read_body(request, 4096, st.body_timeout))
    except (OverflowError, BodyTimeout, ValueError):
        return bad_request('expected {"token": "..."}')
    if st.token is None:
        return JSONResponse({"ok": True, "auth": False})
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not st.token.matches(token):
        return error_json("wrong API token", "Unauthorized", 401)
    resp = JSONResponse({"ok": True, "auth": True})
    resp.set_cookie(COOKIE, token, max_age=COOKIE_MAX_AGE, path=_root(request) or "/",
                    httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return resp


def goatflow_entry(st: ServerState, row: dict[str, Any]) -> dict[str, Any]:
    """A row with GoatFlow's list keys added (its `routes` already are GoatFlow's route
    specs, each with plughost's `url`)."""
    plugin = st.manager.get(row["name"])
    loaded = plugin is not None
    entry = dict(row)
    if plugin is not None:
        reg = plugin.registration
        extra = reg.model_extra or {}
        entry.update(icon=extra.get("icon", ""), author=reg.author, license=reg.license,
                     widgets=[w.model_dump() for w in reg.widgets],
                     jobs=[j.model_dump() for j in reg.jobs], menuItems=reg.menu_items)
    else:
        entry.update(widgets=[], jobs=[], menuItems=[])
        if st.loader.lazy and row["state"] == "discovered" and not row["description"]:
            # GoatFlow's words; plughost keeps what the manifest says when it says it
            entry.update(description="Not loaded (lazy loading enabled)")
    entry.update(loaded=loaded, enabled=bool(row.get("enabled")))
    return entry


@reader
async def list_plugins(request: Request) -> Response:
    """GoatFlow's `{"plugins": [...]}`."""
    st = state_of(request)
    return JSONResponse({"plugins": [goatflow_entry(st, r)
                                     for r in plugin_rows(st, _root(request))]})


@reader
async def get_plugin(request: Request) -> Response:
    """One plugin's row (plughost's; GoatFlow has no such endpoint)."""
    name = request.path_params["name"]
    row = _row(request, name)
    if row is None:
        return error_response(PluginNotFound("no such plugin is loaded or discovered",
                                             plugin=name))
    return JSONResponse(row)


def _rfc3339(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat().replace("+00:00", "Z")


def _log_entry(plugin: str, r: LogRecord) -> dict[str, Any]:
    return {"timestamp": _rfc3339(r.time), "plugin": plugin, "level": r.level,
            "message": r.message, **r.as_dict()}


@reader
async def all_logs(request: Request) -> Response:
    """GoatFlow's log view over every plugin's buffer, newest first: `?plugin=` (all of
    that plugin's), else the newest `?limit=` (default 100); then `?level=` exactly;
    then at most `limit`. `total`: entries held now."""
    st = state_of(request)
    try:
        limit = _number(request, "limit", int)
    except ValueError as exc:
        return bad_request(str(exc))
    limit = 100 if limit is None or limit == 0 else limit
    plugin = request.query_params.get("plugin") or None
    level = request.query_params.get("level") or None
    buffers = st.manager.logs()
    entries = sorted(((name, r) for name, log in buffers.items() for r in log.records()),
                     key=lambda e: e[1].time, reverse=True)
    total = len(entries)
    chosen = [e for e in entries if e[0] == plugin] if plugin else entries[:limit]
    if level:
        chosen = [e for e in chosen if e[1].level == level]
    logs_out = [_log_entry(name, r) for name, r in chosen[:limit]]
    return JSONResponse({"logs": logs_out, "count": len(logs_out), "total": total})


@admin_only
async def clear_logs(request: Request) -> Response:
    for log in state_of(request).manager.logs().values():
        log.clear()
    return JSONResponse({"message": "Plugin logs cleared"})


@reader
async def logs(request: Request) -> Response:
    """`?last=N` (the newest N), `?since=T` (records after unix time T)."""
    st = state_of(request)
    name = request.path_params["name"]
    if not (st.loader.knows(name) or name in st.manager or st.hub.has_seen(name)):
        return error_response(PluginNotFound("no such plugin is loaded or discovered",
                                             plugin=name))
    try:
        last = _number(request, "last", int)
        since = _number(request, "since", float)
    except ValueError as exc:
        return bad_request(str(exc))
    records = st.manager.log_for(name).records()
    if since is not None:
        records = [r for r in records if r.time > since]
    if last is not None:
        records = records[len(records) - last:] if last else []
    return JSONResponse([r.as_dict() for r in records])


def _number(request: Request, key: str, kind: type[int] | type[float]) -> Any:
    raw = request.query_params.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"?{key} must be a non-negative number, got {raw!r}") from None
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"?{key} must be a non-negative number, got {raw!r}")
    return value


@reader
async def jobs(request: Request) -> Response:
    """Every scheduled job: next run, last run, duration, status, last error
    (`?plugin=` for one plugin's)."""
    st = state_of(request)
    if st.scheduler is None:
        return JSONResponse([])
    plugin = request.query_params.get("plugin") or None
    return JSONResponse([dataclasses.asdict(j) for j in st.scheduler.jobs(plugin)])


@admin_only
async def events(request: Request) -> Response:
    """Every event, the plugins' own included: the operator's stream (a plugin's
    `event_authorizer` guards its channels, `/api/v1/plugins/<name>/events/<channel>`,
    not this one), so it is an admin's."""
    return EventStream(state_of(request).hub)


# -- acting ------------------------------------------------------------------------------

def failed(st: ServerState, name: str, exc: PlughostError, default: int) -> Response:
    if isinstance(exc, LOAD_ERRORS):
        st.hub.record_error(exc.plugin or name, str(exc))
    return error_response(exc, default)


@admin_only
async def call(request: Request) -> Response:
    """GoatFlow's direct call: a JSON object body (empty: {}), the client's envelope keys
    removed, the caller's identity added; the raw result, 200 `application/json`.
    `?timeout=S` (plughost's) may shorten the deadline."""
    st = state_of(request)
    name, function = request.path_params["name"], request.path_params["function"]
    try:
        raw = await read_body(request, MAX_ROUTE_BODY, st.body_timeout)
        timeout = _number(request, "timeout", float)
    except OverflowError:
        return error_json("request body too large", "PayloadTooLarge", 413)
    except BodyTimeout as exc:
        return error_json(str(exc), "RequestTimeout", 408)
    except ValueError as exc:
        return bad_request(str(exc))
    body = json_object(raw) if raw.strip() else {}
    if body is None:
        return bad_request("request body must be a JSON object")
    plugin = st.manager.get(name)
    with_org = plugin is None or not plugin.registration.skip_org_injection
    args = direct_call_args(request, body, await caller_of(request), with_org=with_org)
    try:
        result = await st.manager.acall_raw(name, function, gojson.dumps(args),
                                            timeout=timeout or None)
    except PlughostError as exc:
        return failed(st, name, exc, 502)
    return Response(result, media_type="application/json")


@admin_only
async def action(request: Request) -> Response:
    """load | unload | reload | enable | disable one plugin."""
    st = state_of(request)
    name, act = request.path_params["name"], request.path_params["action"]
    if act not in ACTIONS:
        return error_json(f"unknown action {act!r}; one of {', '.join(ACTIONS)}",
                          "NotFound", 404)
    loader, manager = st.loader, st.manager
    try:
        if act == "load":
            if loader.knows(name):
                await loader.aensure_loaded(name)
            else:  # added since the last scan: rescan, then load
                await loader.aload_or_reload(name)
        elif act == "reload":
            if loader.knows(name):
                await loader.areload(name)
            else:
                await loader.aload_or_reload(name)
        elif act == "unload":
            await loader.aunload(name)
        else:
            await manager.run_blocking(manager.enable if act == "enable" else manager.disable,
                                       name)
    except PlughostError as exc:
        if act in ("enable", "disable"):  # GoatFlow: 404 when not found, else 400
            return error_response(exc, 400)
        return failed(st, name, exc, 500)
    row = _row(request, name)
    if act in ("enable", "disable"):
        return JSONResponse({"status": f"{act}d", "name": name, "plugin": row})
    return JSONResponse({"ok": True, "action": act, "name": name, "plugin": row})
