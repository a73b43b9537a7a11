"""Plugin routes (docs/server.md, "Routes"): a registration's `routes`, served at the
paths they declare and under `/plugins/<name>/`, with GoatFlow's middleware, argument
envelope (envelope.py) and result mapping (results.py).

Routes are read from the manager's route table at request time, so a reload that changes
them takes effect at once; a lazy plugin's declared paths exist once it is loaded (its
`/plugins/<name>/...` paths load it).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

from ..callers import Caller
from ..errors import (
    HostCallError,
    PlughostError,
    PluginCallError,
    PluginDisabled,
    PluginLoadError,
    PluginNotFound,
    PluginTimeout,
    PluginUnavailable,
)
from ..host import gojson
from ..routing import MountedRoute
from . import access
from .envelope import MAX_ROUTE_BODY, declared_length, route_args
from .errors import error_json
from .results import error_response, to_response
from .state import ServerState, state_of


class BodyTimeout(Exception):
    """The request body did not arrive in time (a slow or stalled client)."""


async def read_body(request: Request, limit: int, timeout: float = 30.0) -> bytes:
    """The request body; OverflowError past `limit` bytes (without reading the rest),
    BodyTimeout when the whole body has not arrived within `timeout` seconds."""
    raw = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > limit:
                    raise OverflowError(f"request body is larger than {limit} bytes")
    except TimeoutError:
        raise BodyTimeout(f"request body not received within {timeout:g} s") from None
    return bytes(raw)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes) -> Any:
    """Strict JSON from a client: NaN/Infinity, nesting past the parser's depth and integers
    past Python's digit limit are all ValueError (a 400, never a 500)."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("request body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        text = str(exc)
        raise ValueError("request body is not valid JSON: "
                         f"{text if len(text) < 200 else text[:200] + '...'}") from None



#: Bodies and results past this many bytes are handled off the event loop.
OFF_LOOP = 64 * 1024


async def caller_of(request: Request) -> Caller | None:
    """Who the identity hook says is calling (None: anonymous)."""
    hook = state_of(request).identify
    if hook is None:
        return None
    found = hook(request)
    if inspect.isawaitable(found):
        found = await found
    return found if isinstance(found, Caller) else None


def credentials_sent(request: Request) -> bool:
    return "authorization" in request.headers or bool(request.cookies)


def call_error(exc: PlughostError) -> Response:
    """A failed route call, as GoatFlow's router answers it (plughost tells timeouts and
    unavailable plugins apart). A route's caller may be anyone: why a plugin cannot serve
    (a load error, with the paths of its files) is for its log and the management API."""
    if isinstance(exc, PluginNotFound):
        return error_response(str(exc), 404)
    if isinstance(exc, PluginDisabled):
        return error_response(str(exc), 403)
    if isinstance(exc, PluginTimeout):
        return error_response(str(exc), 504)
    if isinstance(exc, PluginUnavailable | PluginLoadError):  # its load failed, crash loop
        return error_response(f"plugin {exc.plugin!r} is unavailable", 503)
    if isinstance(exc, PluginCallError):  # the plugin's own words (GoatFlow shows them)
        return error_response(str(exc), 500)
    return error_response(f"plugin {exc.plugin!r} failed", 500)


async def _read(request: Request, st: ServerState, limit: int, too_big: str
                ) -> bytes | Response:
    if declared_length(request) > limit:
        return error_response(too_big, 413)
    try:
        return await read_body(request, limit, st.body_timeout)
    except OverflowError:
        return error_response(too_big, 413)
    except BodyTimeout as exc:
        return error_json(str(exc), "RequestTimeout", 408)


async def serve_route(request: Request, route: MountedRoute, params: dict[str, str]
                      ) -> Response:
    """Run one matched route: body, middleware, envelope, call, response."""
    st = state_of(request)
    webhook = any(m.kind == "webhook" for m in route.middleware)
    body = b""
    if webhook or declared_length(request) > 0:
        read = await _read(request, st, access.WEBHOOK_MAX_BODY if webhook
                           else MAX_ROUTE_BODY,
                           "webhook body too large" if webhook
                           else "plugin request body too large")
        if isinstance(read, Response):
            return read
        body = read
    if webhook:
        refused = await access.check_webhook(request, route, body, st.webhooks,
                                             lambda p: _webhook_secret(st, p),
                                             st.webhook_allow_unsigned)
        if refused is not None:
            return refused
        if declared_length(request) == 0:
            body = b""  # GoatFlow reads a body into the envelope only when declared
    caller = await caller_of(request)
    refused = access.authorize(route, caller, credentials_sent(request))
    if refused is not None:
        return refused
    plugin = st.manager.get(route.plugin)
    with_org = plugin is None or not plugin.registration.skip_org_injection

    def envelope() -> bytes:
        return gojson.dumps(route_args(request, params, body, caller, with_org=with_org))

    # A big body or result is parsed and encoded off the event loop, which must keep
    # serving everyone else meanwhile; a small one is cheaper than the thread hop.
    args = await asyncio.to_thread(envelope) if len(body) > OFF_LOOP else envelope()
    try:
        raw = await st.manager.acall_raw(route.plugin, route.handler, args)
    except PlughostError as exc:
        return call_error(exc)
    if len(raw) > OFF_LOOP:
        return await asyncio.to_thread(to_response, raw, st.layout)
    return to_response(raw, st.layout)


async def _webhook_secret(st: ServerState, plugin: str) -> str | None:
    api = st.manager.host.api

    def lookup() -> str | None:
        if api is None:  # a custom host table without backends: no secrets to read
            return None
        try:
            return api.secure_config_get(plugin, 0, f"{plugin}_webhook_secret")
        except HostCallError:
            return None

    return await asyncio.to_thread(lookup)


async def declared_route(request: Request) -> Response:
    """A request no endpoint of the host took: a plugin's route at its declared path,
    else 404 (405 with `Allow` when only the method is wrong)."""
    st = state_of(request)
    path = request.url.path[len(str(request.scope.get("root_path", ""))):] or "/"
    route, params, allowed = st.manager.routes.match(request.method, path)
    if route is None:
        allowed = allowed or _host_methods(request)
        if allowed:
            return error_json(f"{request.method} is not allowed on {path}",
                              "MethodNotAllowed", 405, headers={"allow": ", ".join(allowed)})
        return error_json(f"no route for {request.method} {path}", "NotFound", 404)
    return await serve_route(request, route, params)


def _host_methods(request: Request) -> list[str]:
    """The methods of a host endpoint whose path this is (it was only the method that
    did not match, so the request fell through to here)."""
    methods: list[str] = []
    for endpoint in request.app.router.routes:
        if getattr(endpoint, "endpoint", None) is declared_route:
            continue
        match, _ = endpoint.matches({**request.scope, "method": "\0"})
        if match == Match.PARTIAL:
            methods += sorted(getattr(endpoint, "methods", None) or ())
    return methods


async def plugin_route(request: Request) -> Response:
    """`/plugins/<name>/<path>`: the plugin's route for this method and path (loads a
    lazy plugin first)."""
    st = state_of(request)
    name = request.path_params["name"]
    path = "/" + request.path_params.get("path", "")
    if st.manager.get(name) is None and st.loader.knows(name):
        try:  # loads it (lazy) or says why it is not serving (its load failed)
            await st.manager.run_blocking(st.loader.load_for_call, name)
        except PlughostError as exc:
            return call_error(exc)
    if st.manager.get(name) is None:
        return error_response(str(PluginNotFound("no such plugin is loaded or discovered",
                                                 plugin=name)), 404)
    route, params, allowed = st.manager.routes.match(request.method, path, plugin=name)
    if route is None:
        if allowed:
            return error_json(f"plugin {name!r}: {request.method} is not allowed on {path}",
                              "MethodNotAllowed", 405, headers={"allow": ", ".join(allowed)})
        return error_json(f"plugin {name!r}: no route for {request.method} {path}",
                          "NotFound", 404)
    return await serve_route(request, route, params)
