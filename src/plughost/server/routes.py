"""Plugin routes (docs/server.md): a registration's `routes` served under `/plugins/<name>/`.

Routes are read from the registry at request time, so a reload that changes them takes
effect at once and a lazy plugin's routes exist as soon as its first request loads it.

The handler function gets `{"method", "path", "route", "params", "query", "headers",
"body"}`; a dict result with `status` and/or `body` (and optional `headers`) is the
response, any other result is sent as JSON.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..registration import ROUTE_PARAM, Route
from .errors import error_json

_PRIVATE_HEADERS = frozenset({"cookie", "authorization", "proxy-authorization"})
_SANDBOX = {"content-security-policy": "sandbox allow-scripts allow-forms",
            "x-content-type-options": "nosniff"}


@functools.lru_cache(maxsize=1024)
def compile_path(path: str) -> re.Pattern[str]:
    """`/items/{id}` (or gin's `/items/:id`) as a regex; `{rest:path}` spans segments."""
    parts = []
    for segment in path.strip("/").split("/"):
        m = ROUTE_PARAM.match(segment)
        if m is None:
            parts.append(re.escape(segment))
        elif m.group(2):
            parts.append(f"(?P<{m.group(1)}>.*)")
        else:
            parts.append(f"(?P<{m.group(1) or m.group(3)}>[^/]+)")
    return re.compile("^/" + "/".join(parts) + "/?$")


def match_route(routes: list[Route], method: str, path: str
                ) -> tuple[Route | None, dict[str, str], list[str]]:
    """The route for `method path`, its parameters, and the methods the path allows."""
    allowed: list[str] = []
    for route in routes:
        m = compile_path(route.path).match(path)
        if m is None:
            continue
        want = route.method.upper()
        if want in ("*", "ANY") or want == method or (method == "HEAD" and want == "GET"):
            return route, m.groupdict(), allowed
        allowed.append(want)
    return None, {}, allowed


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


def request_args(request: Request, path: str, route: Route, params: dict[str, str],
                 raw: bytes) -> dict[str, Any]:
    """What a route handler is called with. Raises ValueError for a body it cannot take."""
    body: Any = None
    if raw:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json" or ctype.endswith("+json"):
            body = parse_json(raw)
        else:
            body = raw.decode("utf-8", "replace")
    headers: dict[str, str] = {}
    for key, value in request.headers.items():
        if key in _PRIVATE_HEADERS:  # the user's credentials are not the plugin's business
            continue
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return {"method": request.method, "path": path, "route": route.path, "params": params,
            "query": dict(request.query_params), "headers": headers, "body": body}


#: Response headers a plugin may not send: the admin page shares the plugin routes'
#: origin, so a plugin must not set or clear its cookies.
_FORBIDDEN_HEADERS = frozenset({"set-cookie", "set-cookie2", "clear-site-data"})
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _bad(plugin: str, why: str) -> Response:
    return error_json(f"plugin {plugin!r}: route handler returned a response HTTP cannot "
                      f"carry ({why})", "BadPluginResponse", 502)


def to_response(plugin: str, result: Any) -> Response:
    """A handler's result as the HTTP response (see the module docstring). What HTTP
    cannot carry (a 1xx status, a bad header name or value, NaN in JSON) is a 502 JSON
    error; cookie headers are dropped."""
    try:
        return _to_response(plugin, result)
    except (ValueError, TypeError, UnicodeError) as exc:  # e.g. NaN, a non-latin-1 value
        return _bad(plugin, f"{type(exc).__name__}: {exc}")


def _to_response(plugin: str, result: Any) -> Response:
    if not (isinstance(result, dict) and ("status" in result or "body" in result)):
        return JSONResponse(result, headers=dict(_SANDBOX))
    status = result.get("status", 200)
    headers = result.get("headers") or {}
    if (not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599
            or not isinstance(headers, dict)):
        return _bad(plugin, "status must be an integer 200-599, headers an object")
    hdrs: dict[str, str] = {}
    for k, v in headers.items():
        name, value = str(k), str(v)
        if not _TOKEN.match(name):
            return _bad(plugin, f"header name {name[:60]!r}")
        if any(c in value for c in "\r\n\0"):
            return _bad(plugin, f"header {name!r} has a control character")
        value.encode("latin-1")  # UnicodeEncodeError: handled above
        if name.lower() not in _FORBIDDEN_HEADERS:
            hdrs[name] = value
    # A plugin's page shares the admin page's origin: sandbox it, so its scripts run in an
    # opaque origin and cannot drive the admin API (the guard refuses origin "null").
    hdrs.update(_SANDBOX)
    body = result.get("body")
    has_type = any(k.lower() == "content-type" for k in hdrs)
    if body is None:
        return Response(b"", status_code=status, headers=hdrs)
    if isinstance(body, str):
        return Response(body, status_code=status, headers=hdrs,
                        media_type=None if has_type else "text/plain")
    if has_type:
        return Response(json.dumps(body, allow_nan=False), status_code=status, headers=hdrs)
    return JSONResponse(body, status_code=status, headers=hdrs)
