"""Plugin routes (SPEC 5, 9): a registration's `routes` served under `/plugins/<name>/`.

Routes are read from the registry at request time, so a reload that changes them takes
effect at once and a lazy plugin's routes exist as soon as its first request loads it.

The handler function gets `{"method", "path", "route", "params", "query", "headers",
"body"}`; a dict result with `status` and/or `body` (and optional `headers`) is the
response, any other result is sent as JSON.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..registration import Route
from .errors import error_json

_PARAM = re.compile(r"^(?:\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}|:([A-Za-z_][A-Za-z0-9_]*))$")


_PRIVATE_HEADERS = frozenset({"cookie", "authorization", "proxy-authorization"})
_SANDBOX = {"content-security-policy": "sandbox allow-scripts allow-forms",
            "x-content-type-options": "nosniff"}


@functools.lru_cache(maxsize=1024)
def compile_path(path: str) -> re.Pattern[str]:
    """`/items/{id}` (or gin's `/items/:id`) as a regex; `{rest:path}` spans segments."""
    parts = []
    for segment in path.strip("/").split("/"):
        m = _PARAM.match(segment)
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


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; OverflowError past `limit` bytes (without reading the rest)."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise OverflowError(f"request body is larger than {limit} bytes")
    return bytes(raw)


def request_args(request: Request, path: str, route: Route, params: dict[str, str],
                 raw: bytes) -> dict[str, Any]:
    """What a route handler is called with. Raises ValueError for a body it cannot take."""
    body: Any = None
    if raw:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json" or ctype.endswith("+json"):
            try:
                body = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"request body is not valid JSON: {exc}") from None
        else:
            body = raw.decode("utf-8", "replace")
    headers: dict[str, str] = {}
    for key, value in request.headers.items():
        if key in _PRIVATE_HEADERS:  # the user's credentials are not the plugin's business
            continue
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return {"method": request.method, "path": path, "route": route.path, "params": params,
            "query": dict(request.query_params), "headers": headers, "body": body}


def to_response(plugin: str, result: Any) -> Response:
    """A handler's result as the HTTP response (see the module docstring)."""
    if not (isinstance(result, dict) and ("status" in result or "body" in result)):
        return JSONResponse(result, headers=dict(_SANDBOX))
    status = result.get("status", 200)
    headers = result.get("headers") or {}
    if (not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599
            or not isinstance(headers, dict)):
        return error_json(f"plugin {plugin!r}: route handler returned an invalid response "
                          "(status must be an integer 100-599, headers an object)",
                          "BadPluginResponse", 502)
    hdrs = {str(k): str(v) for k, v in headers.items()}
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
        return Response(json.dumps(body), status_code=status, headers=hdrs)
    return JSONResponse(body, status_code=status, headers=hdrs)
