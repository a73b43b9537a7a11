"""Route middleware, enforced as GoatFlow enforces it (docs/server.md, "Route middleware").

Webhook checks run first (a per-client rate limit, a body cap, the signature), then, once,
authentication if any entry needs it, then each authorisation entry:

| entry | who passes |
|---|---|
| `auth` | any caller the identity hook vouches for |
| `admin` | an admin |
| `agent` | an agent (customers refused) |
| `customer` | a customer (agents refused) |
| `group:<g>` | an admin, or an agent in group `<g>` (customers refused) |
| `plugin:<p>:<g>` | an admin, an agent in `<g>`, a customer whose organisation has `<p>` |
| `webhook` | a request signed with the plugin's webhook secret (no session) |

Failures answer as GoatFlow does: 401 `{"success": false, "error": "Authentication
required"}` (or "Invalid or expired token" when credentials were sent but not accepted),
403 with the reason.

Webhook signature: the first present of `Stripe-Signature`, `X-Signature-256`,
`X-Hub-Signature-256`, `X-Webhook-Signature`; HMAC-SHA256 hex of the body (a short
`algo=` prefix is stripped), or Stripe's `t=<ts>,v1=<hex>` over `<ts>.<body>`, at most
300 s old. The secret is the plugin's secure-config value `<plugin>_webhook_secret`
(organisation 0). Without one, webhooks are refused (403 `webhook not configured`) unless
the server allows unsigned webhooks.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..callers import Caller
from ..host.policy import Window
from ..routing import MountedRoute

#: GoatFlow's webhook limits.
WEBHOOK_PER_HOUR = 500
WEBHOOK_MAX_BODY = 1024 * 1024
STRIPE_TOLERANCE = 300.0
SIGNATURE_HEADERS = ("stripe-signature", "x-signature-256", "x-hub-signature-256",
                     "x-webhook-signature")
#: Clients remembered by the webhook limiter (the oldest are forgotten first).
MAX_TRACKED_CLIENTS = 10_000


def refusal(status: int, message: str, **headers: str) -> Response:
    return JSONResponse({"success": False, "error": message}, status_code=status,
                        headers=headers or None)


class WebhookLimiter:
    """500 requests per hour per plugin per client address, for a bounded set of
    clients (so a flood of addresses cannot grow it without end)."""

    def __init__(self, per_hour: int = WEBHOOK_PER_HOUR,
                 max_clients: int = MAX_TRACKED_CLIENTS) -> None:
        self.per_hour = per_hour
        self.max_clients = max_clients
        self._windows: OrderedDict[tuple[str, str], Window] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, plugin: str, client: str) -> bool:
        with self._lock:
            key = (plugin, client)
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = Window(3600.0)
                while len(self._windows) > self.max_clients:
                    self._windows.popitem(last=False)
            self._windows.move_to_end(key)
        return window.admit(self.per_hour)


def signature_ok(headers: dict[str, str], body: bytes, secret: str,
                 now: float | None = None) -> bool | None:
    """True/False for a present signature, None when there is none."""
    for name in SIGNATURE_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        key = secret.encode()
        if not value.isascii():  # a hex signature is ASCII; anything else is no match
            return False
        if name == "stripe-signature":
            parts = dict(p.strip().partition("=")[::2] for p in value.split(","))
            stamp, sig = parts.get("t", ""), parts.get("v1", "")
            if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 12:
                return False
            if abs((time.time() if now is None else now) - int(stamp)) > STRIPE_TOLERANCE:
                return False
            want = hmac.new(key, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
            return hmac.compare_digest(want.encode(), sig.lower().encode())
        sig = value.strip()
        prefix, eq, rest = sig.partition("=")
        if eq and len(prefix) <= 10:  # "sha256=<hex>"
            sig = rest
        want = hmac.new(key, body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(want.encode(), sig.lower().encode())
    return None


#: `secret(plugin) -> str | None`: the plugin's webhook secret (None: not configured).
SecretLookup = Callable[[str], Awaitable[str | None]]


async def check_webhook(request: Request, route: MountedRoute, body: bytes,
                        limiter: WebhookLimiter, secret: SecretLookup,
                        allow_unsigned: bool) -> Response | None:
    """The webhook part of the middleware (None: it passes)."""
    client = request.client.host if request.client else ""
    if not limiter.admit(route.plugin, client):
        return refusal(429, "rate limit exceeded", **{"retry-after": "60"})
    if len(body) > WEBHOOK_MAX_BODY:
        return refusal(413, "webhook body too large")
    key = await secret(route.plugin)
    if not key:
        return None if allow_unsigned else refusal(403, "webhook not configured")
    verdict = signature_ok({k.lower(): v for k, v in request.headers.items()}, body, key)
    if verdict is None:
        return refusal(401, "webhook signature required")
    if not verdict:
        return refusal(403, "webhook signature mismatch")
    return None


def authorize(route: MountedRoute, caller: Caller | None, credentials_sent: bool
              ) -> Response | None:
    """The session part of the middleware (None: the caller passes)."""
    if not any(m.needs_auth for m in route.middleware):
        return None
    if caller is None:
        return refusal(401, "Invalid or expired token" if credentials_sent
                       else "Authentication required")
    for m in route.middleware:
        if m.kind == "admin" and not caller.is_admin:
            return refusal(403, "admin access required")
        if m.kind == "agent" and caller.is_customer:
            return refusal(403, "agent access required")
        if m.kind == "customer" and not caller.is_customer:
            return refusal(403, "customer access required")
        if m.kind == "group" and not caller.is_admin and (
                caller.is_customer or m.group not in caller.groups):
            return refusal(403, f"access denied: requires group {m.group}")
        if m.kind == "plugin" and not caller.is_admin:
            if caller.is_customer:
                if m.plugin not in caller.org_plugins:
                    return refusal(403, f"{m.plugin} is not enabled for your organisation")
            elif m.group not in caller.groups:
                return refusal(403, f"access denied: requires group {m.group}")
    return None
