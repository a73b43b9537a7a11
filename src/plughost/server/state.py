"""What every request handler of one app shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from starlette.requests import Request

from ..callers import IdentityHook
from ..health import HealthChecker
from ..jobs import Scheduler
from ..loader import Loader
from ..manager import Manager
from .access import WebhookLimiter
from .auth import TokenCheck
from .events import EventHub
from .results import Layout, default_layout


@dataclass
class ServerState:
    manager: Manager
    loader: Loader
    hub: EventHub
    watch: bool = True
    debounce_ms: int = 500
    max_body: int = 16 * 1024 * 1024  # bytes of a call's or a route's request body
    body_timeout: float = 30.0  # seconds to receive a whole request body
    max_upload: int = 64 * 1024 * 1024  # bytes of an uploaded plugin
    token: TokenCheck | None = None  # the API token, when the server needs one
    scheduler: Scheduler | None = None  # runs the registrations' jobs (None: jobs off)
    health: HealthChecker | None = None  # probes the plugins (None: health checks off)
    identify: IdentityHook | None = None  # who a request's caller is (None: anonymous)
    layout: Layout = default_layout  # the page around a plugin's non-raw `html` result
    webhooks: WebhookLimiter = field(default_factory=WebhookLimiter)
    webhook_allow_unsigned: bool = False  # accept webhooks of plugins without a secret


def state_of(request: Request) -> ServerState:
    return cast(ServerState, request.app.state.plughost)
