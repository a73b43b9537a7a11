"""The JSON API (docs/server.md) and the plugin routes. Blocking work never runs on the loop: plugin
calls use `manager.acall`, loads and unloads the loader's `a*` twins."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import listing
from ..errors import PlughostError, PluginNotFound
from .auth import COOKIE, COOKIE_MAX_AGE
from .errors import LOAD_ERRORS, bad_request, error_json, error_response
from .events import EventStream
from .routes import BodyTimeout, match_route, parse_json, read_body, request_args, to_response
from .state import ServerState, state_of

ACTIONS = ("load", "unload", "reload", "enable", "disable")


# -- reading -----------------------------------------------------------------------------

def plugin_rows(st: ServerState, root: str = "") -> list[dict[str, Any]]:
    """Every plugin, as `plughost list` shows it, plus each one's last error from events."""
    return listing.plugin_rows(st.manager, st.loader, last_error=st.hub.last_error,
                               route_root=root)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _row(request: Request, name: str) -> dict[str, Any] | None:
    rows = plugin_rows(state_of(request), _root(request))
    return next((r for r in rows if r["name"] == name), None)


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


async def list_plugins(request: Request) -> Response:
    return JSONResponse(plugin_rows(state_of(request), _root(request)))


async def get_plugin(request: Request) -> Response:
    name = request.path_params["name"]
    row = _row(request, name)
    if row is None:
        return error_response(PluginNotFound("no such plugin is loaded or discovered",
                                             plugin=name))
    return JSONResponse(row)


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


async def jobs(request: Request) -> Response:
    """Every scheduled job: next run, last run, duration, status, last error
    (`?plugin=` for one plugin's)."""
    st = state_of(request)
    if st.scheduler is None:
        return JSONResponse([])
    plugin = request.query_params.get("plugin") or None
    return JSONResponse([dataclasses.asdict(j) for j in st.scheduler.jobs(plugin)])


async def events(request: Request) -> Response:
    return EventStream(state_of(request).hub)


# -- acting ------------------------------------------------------------------------------

def _failed(st: ServerState, name: str, exc: PlughostError, default: int) -> Response:
    if isinstance(exc, LOAD_ERRORS):
        st.hub.record_error(exc.plugin or name, str(exc))
    return error_response(exc, default)


async def call(request: Request) -> Response:
    """POST a JSON body (the args; empty = {}); `?timeout=S` may shorten the deadline."""
    st = state_of(request)
    name, function = request.path_params["name"], request.path_params["function"]
    try:
        raw = await read_body(request, st.max_body, st.body_timeout)
        timeout = _number(request, "timeout", float)
        args: Any = parse_json(raw) if raw.strip() else {}
    except OverflowError as exc:
        return error_json(str(exc), "PayloadTooLarge", 413)
    except BodyTimeout as exc:
        return error_json(str(exc), "RequestTimeout", 408)
    except ValueError as exc:
        return bad_request(str(exc))
    try:
        result = await st.manager.acall(name, function, args, timeout=timeout or None)
    except PlughostError as exc:
        return _failed(st, name, exc, 502)
    return JSONResponse(result)


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
        return _failed(st, name, exc, 500)
    return JSONResponse({"ok": True, "action": act, "name": name, "plugin": _row(request, name)})


async def plugin_route(request: Request) -> Response:
    """`/plugins/<name>/<path>`: the plugin's registered route for this method and path."""
    st = state_of(request)
    name = request.path_params["name"]
    path = "/" + request.path_params.get("path", "")
    plugin = st.manager.get(name)
    if plugin is None and st.loader.knows(name):
        try:  # loads it (lazy) or says why it is not serving (its load failed)
            await st.manager.run_blocking(st.loader.load_for_call, name)
        except PlughostError as exc:
            return _failed(st, name, exc, 500)
        plugin = st.manager.get(name)
    if plugin is None:
        return error_response(PluginNotFound("no such plugin is loaded or discovered",
                                             plugin=name))
    route, params, allowed = match_route(plugin.registration.routes, request.method, path)
    if route is None:
        if allowed:
            return error_json(f"plugin {name!r}: {request.method} is not allowed on {path}",
                              "MethodNotAllowed", 405, headers={"allow": ", ".join(allowed)})
        return error_json(f"plugin {name!r}: no route for {request.method} {path}",
                          "NotFound", 404)
    try:
        args = request_args(request, path, route, params,
                            await read_body(request, st.max_body, st.body_timeout))
    except OverflowError as exc:
        return error_json(str(exc), "PayloadTooLarge", 413)
    except BodyTimeout as exc:
        return error_json(str(exc), "RequestTimeout", 408)
    except ValueError as exc:
        return bad_request(str(exc))
    try:
        result = await st.manager.acall(name, route.handler, args)
    except PlughostError as exc:
        return _failed(st, name, exc, 502)
    return to_response(name, result)
