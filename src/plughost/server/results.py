"""A route handler's result as the HTTP response, as GoatFlow's router makes it
(docs/server.md, "Routes").

The result is read as a JSON object and checked in this order:
1. `error`, a non-empty string: `{"error": <error>}` alone, with the numeric `status` if it
   is 400-599, else 500;
2. `redirect`, a non-empty string: a redirect with the numeric `status` (300-308 or 201),
   else 303;
3. `_binary` true with a string `content_type` and a string `data` in standard base64:
   those bytes with that content type;
4. `html`, a string: with `raw` true the HTML as is, else inside the host's page layout
   with the result's `title` (the embedding application may supply its own layout);
anything else (arrays, other objects, not JSON at all) is sent as the plugin wrote it,
200 `application/json`; a `status` without an `error` means nothing.

Every response carries `Content-Security-Policy: sandbox`: plugin pages share the host's
origin, so their scripts run in an opaque origin and cannot drive the management API.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse, RedirectResponse, Response

#: Sent with every plugin response (see the module docstring).
SANDBOX = {"content-security-policy": "sandbox allow-scripts allow-forms allow-popups",
           "x-content-type-options": "nosniff"}

#: `layout(title, active_page, body_html) -> page`: how a non-raw `html` result is shown.
Layout = Callable[[str, str, str], str]


def default_layout(title: str, active_page: str, body: str) -> str:
    """A plain page around a plugin's HTML (GoatFlow wraps it in its own layout)."""
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title or 'plugin')}</title></head>"
            f"<body data-active-page=\"{html.escape(active_page or 'plugin')}\">"
            f"{body}</body></html>")


def _number(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return int(value)
    except (OverflowError, ValueError):  # inf / nan cannot come from JSON, but be safe
        return None


def _header_safe(value: str) -> bool:
    return not any(c in value for c in "\r\n\0") and value.isprintable() \
        and all(ord(c) < 256 for c in value)


def error_response(message: str, status: int) -> Response:
    """GoatFlow's route error shape: `{"error": message}`."""
    return JSONResponse({"error": message}, status_code=status, headers=dict(SANDBOX))


def to_response(raw: bytes, layout: Layout = default_layout) -> Response:
    """The response for a route handler's raw result bytes."""
    try:
        result = json.loads(raw) if raw.strip() else None
    except (ValueError, RecursionError):
        result = None
    if isinstance(result, dict):
        chosen = _mapped(result, layout)
        if chosen is not None:
            return chosen
    return Response(raw, status_code=200, media_type="application/json",
                    headers=dict(SANDBOX))


def _mapped(result: dict[str, Any], layout: Layout) -> Response | None:
    status = _number(result.get("status"))
    error = result.get("error")
    if isinstance(error, str) and error:
        return error_response(error, status if status is not None and 400 <= status <= 599
                              else 500)
    target = result.get("redirect")
    if isinstance(target, str) and target:
        code = 303 if status is None else status
        if not (300 <= code <= 308 or code == 201) or not _header_safe(target):
            # gin refuses such a redirect (a recovered panic, a 500 in GoatFlow)
            return error_response(f"plugin redirect refused (status {code})", 500)
        return RedirectResponse(target, status_code=code, headers=dict(SANDBOX))
    if result.get("_binary") is True:
        ctype, data = result.get("content_type"), result.get("data")
        if isinstance(ctype, str) and isinstance(data, str) and _header_safe(ctype):
            try:
                body = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                body = None
            if body is not None:
                # the plugin's content type exactly (no charset added)
                return Response(body, status_code=200,
                                headers={"content-type": ctype, **SANDBOX})
    page = result.get("html")
    if isinstance(page, str):
        if result.get("raw") is not True:
            title = result.get("title")
            active = result.get("active_page")
            page = layout(title if isinstance(title, str) else "",
                          active if isinstance(active, str) and active else "plugin", page)
        return Response(page, status_code=200, media_type="text/html; charset=utf-8",
                        headers=dict(SANDBOX))
    return None
