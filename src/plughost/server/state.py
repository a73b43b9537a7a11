"""What every request handler of one app shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from starlette.requests import Request

from ..jobs import Scheduler
from ..loader import Loader
from ..manager import Manager
from .auth import TokenCheck
from .events import EventHub


@dataclass
class ServerState:
    manager: Manager
    loader: Loader
    hub: EventHub
    watch: bool = True
    debounce_ms: int = 500
    max_body: int = 16 * 1024 * 1024  # bytes of a call's or a route's request body
    body_timeout: float = 30.0  # seconds to receive a whole request body
    token: TokenCheck | None = None  # the API token, when the server needs one
    scheduler: Scheduler | None = None  # runs the registrations' jobs (None: jobs off)


def state_of(request: Request) -> ServerState:
    return cast(ServerState, request.app.state.plughost)
