"""Request guards against browsers being used as a weapon against a local server.

- Cross-site requests that change state are refused: a POST/PUT/PATCH/DELETE whose
  `Origin` is not this server (or `Sec-Fetch-Site: cross-site`) gets 403. Browsers always
  send `Origin` on such requests; curl and other programs send none and are unaffected.
- DNS rebinding: with `allowed_hosts`, a `Host` header naming anything else gets 403
  (`plughost serve` on a loopback address allows only loopback names).
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class Guard:
    def __init__(self, app: ASGIApp, allowed_hosts: list[str] | None = None) -> None:
        self.app = app
        self.allowed = {h.lower() for h in allowed_hosts} if allowed_hosts else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        why = None
        if self.allowed is not None and _hostname(host) not in self.allowed:
            why = f"host {host!r} is not served here"
        elif scope.get("method", "GET") in _UNSAFE:
            origin = headers.get("origin")
            if headers.get("sec-fetch-site") == "cross-site":
                why = "cross-site request refused"
            elif origin is not None and urlsplit(origin).netloc.lower() != host.lower():
                why = f"cross-origin request from {origin!r} refused"
        if why is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": why, "type": "Forbidden"}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _hostname(host: str) -> str:
    host = host.lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
