"""Request guards: the API token, and browsers used as a weapon against the server.

Checked in this order, before any route runs:

- DNS rebinding: with `allowed_hosts`, a `Host` header naming anything else gets 403
  (`plughost serve` on a loopback address allows only loopback names).
- Cross-site requests get 403, whatever their method: `Sec-Fetch-Site: cross-site` or
  `same-site`, or an `Origin` that is not this server. So a page elsewhere cannot drive the
  API, nor run a plugin's route handler with a GET, HEAD or OPTIONS (a handler may act on
  any method). Browsers send these headers; curl and other programs send none and are
  unaffected. The admin page itself (`GET /`) may be opened from anywhere: it is static.
- With a token (see auth.py), every request to the host's own endpoints but the admin page
  and `POST /api/v1/login` must carry it, or gets 401. Plugin routes are not the token's:
  their middleware decides (a route without middleware is public, as in GoatFlow).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import TokenCheck

_OPEN = frozenset({("GET", "/"), ("HEAD", "/"), ("POST", "/api/v1/login")})


class Guard:
    def __init__(self, app: ASGIApp, allowed_hosts: list[str] | None = None,
                 token: TokenCheck | None = None,
                 needs_token: Callable[[str], bool] = lambda path: True) -> None:
        self.app = app
        self.allowed = {h.lower() for h in allowed_hosts} if allowed_hosts else None
        self.token = token
        self.needs_token = needs_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        method = scope.get("method", "GET")
        root = str(scope.get("root_path", ""))
        path = str(scope.get("path", "/"))
        path = (path[len(root):] if root and path.startswith(root) else path) or "/"
        status, why = self._refusal(headers, method, path)
        if why is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": why, "type": "Forbidden" if status == 403
                           else "Unauthorized"}).encode()
        extra = [(b"www-authenticate", b'Bearer realm="plughost"')] if status == 401 else []
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), *extra]})
        await send({"type": "http.response.body", "body": body})

    def _refusal(self, headers: dict[str, str], method: str, path: str
                 ) -> tuple[int, str | None]:
        host = headers.get("host", "")
        if self.allowed is not None and _hostname(host) not in self.allowed:
            return 403, f"host {host!r} is not served here"
        page = path == "/" and method in ("GET", "HEAD")
        site = headers.get("sec-fetch-site")
        origin = headers.get("origin")
        if not page:
            if site in ("cross-site", "same-site"):
                return 403, "cross-site request refused"
            if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
                return 403, f"cross-origin request from {origin!r} refused"
        if self.token is not None and (method, path) not in _OPEN \
                and self.needs_token(path) and not self.token.allows(headers):
            return 401, "this server needs its API token (Authorization: Bearer <token>)"
        return 200, None


def _hostname(host: str) -> str:
    host = host.lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
