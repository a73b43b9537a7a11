"""The plughost server (docs/server.md): a Starlette app over one Manager and one Loader.

Start-up loads the plugin directory (`loader.aload_all`) and starts the watcher; shutdown
ends the event streams, stops the watcher and unloads every plugin, off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from ..callers import OPERATOR, Caller, IdentityHook
from ..health import HealthChecker, PluginHealth
from ..jobs import Clock, Scheduler
from ..loader import Loader
from ..manager import Manager
from ..routing import parse_pattern
from . import api, platform_api, routes
from .auth import TokenCheck
from .errors import error_json
from .events import EventHub
from .guard import Guard
from .results import Layout, default_layout
from .state import ServerState

logger = logging.getLogger(__name__)

_ALL = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

#: The host's own paths (patterns): no plugin route may reach them, and with an API token
#: every one but the page and the login needs it.
API_PATHS = ("/", "/api/v1/login", "/api/v1/events", "/api/v1/jobs", "/api/v1/plugins",
             "/api/v1/plugins/*rest")
#: Where every plugin's routes are also served (their middleware decides who may call).
PLUGIN_MOUNT = ("/plugins/:name", "/plugins/:name/*rest")


def health_detail(h: PluginHealth) -> str:
    """A `health` event's detail: the verdict and what the checker did about it."""
    if h.crash_loop_abandoned:
        return f"abandoned after {h.restart_attempts} restart(s): {h.last_error}"
    if h.restarting:
        return f"restart attempt {h.restart_attempts}"
    return "healthy" if h.healthy else f"unhealthy: {h.last_error or 'not probed yet'}"


def token_identity(check: TokenCheck | None) -> IdentityHook:
    """`plughost serve`'s identity hook: the API token's holder is the operator (an
    admin); without a token (a loopback server), every client is."""

    def identify(request: Request) -> Caller | None:
        if check is None:
            return OPERATOR
        headers = {k.lower(): v for k, v in request.headers.items()}
        return OPERATOR if check.allows(headers) else None

    return identify


def admin_html() -> str:
    return (resources.files("plughost.server") / "static" / "admin.html").read_text("utf-8")


def create_app(manager: Manager, loader: Loader, *, watch: bool = True,
               debounce_ms: int = 500, keepalive: float = 15.0,
               max_body: int = 16 * 1024 * 1024, sse_queue_size: int = 256,
               allowed_hosts: list[str] | None = None, token: str | None = None,
               body_timeout: float = 30.0, jobs: bool = True,
               job_clock: Clock | None = None, identify: IdentityHook | None = None,
               layout: Layout = default_layout,
               webhook_allow_unsigned: bool = False, health: bool = True,
               auto_restart: bool = True, health_interval: float = 60.0,
               health_clock: Clock | None = None, event_history: int = 100,
               max_upload: int = 64 * 1024 * 1024) -> Starlette:
    """The server app. The caller keeps ownership of `manager` (close it after the app
    stopped); the app loads `loader`'s directory on start and unloads it on shutdown.

    Cross-site requests are always refused; `allowed_hosts` (host names without port)
    additionally refuses other `Host` headers (DNS rebinding). With `token`, every request
    but the admin page and `POST /api/login` must carry it. A request body must arrive
    within `body_timeout` seconds (408 otherwise). With `jobs`, the registrations' jobs run
    on their schedules (`job_clock`: the scheduler's clock, for tests).

    `identify` says who a request's caller is (callers.Caller; docs/embedding.md); without
    it, the API token's holder is the operator (`token_identity`). `layout` wraps a
    plugin's non-raw `html` result in the application's page. Plugin routes are served at
    their declared paths (the manager's route table refuses one that reaches the host's
    own paths) and under `/plugins/<name>/`; `webhook_allow_unsigned` lets `webhook`
    routes of plugins without a secret through. With `health`, every plugin is probed
    every `health_interval` seconds (GoatFlow's `__health_ping__`); with `auto_restart`,
    an unhealthy one is reloaded with backoff (health.py). A new event stream starts with
    the last `event_history` events. An uploaded plugin may be `max_upload` bytes."""
    for path in (*API_PATHS, *PLUGIN_MOUNT):
        manager.routes.reserve(path)
    hub = EventHub(manager, queue_size=sse_queue_size, keepalive=keepalive,
                   history=event_history)
    check = TokenCheck(token) if token is not None else None
    timezone = getattr(getattr(manager.host.api, "settings", None), "app_config", {}).get(
        "app.timezone")
    scheduler = Scheduler(manager, clock=job_clock, timezone=timezone) if jobs else None
    checker = HealthChecker(manager, restart=loader.reload if auto_restart else None,
                            interval=health_interval, clock=health_clock,
                            on_change=lambda name, h: manager.emit(
                                "health", name, health_detail(h))) if health else None
    state = ServerState(manager, loader, hub, watch=watch, debounce_ms=debounce_ms,
                        max_body=max_body, body_timeout=body_timeout, token=check,
                        max_upload=max_upload,
                        scheduler=scheduler, health=checker,
                        identify=identify if identify is not None else token_identity(check),
                        layout=layout, webhook_allow_unsigned=webhook_allow_unsigned)
    page = admin_html()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hub.start()
        try:
            count, errors = await loader.aload_all()
            for exc in errors:
                if exc.plugin:
                    hub.record_error(exc.plugin, str(exc))
            logger.info("%d plugin(s) %s from %s, %d error(s)", count,
                        "discovered" if loader.lazy else "loaded", loader.plugin_dir,
                        len(errors))
            if watch:
                await asyncio.to_thread(loader.watch_dir, debounce_ms)
            if scheduler is not None:
                scheduler.start()
            if checker is not None:
                checker.start()
            yield
        finally:
            if checker is not None:
                await asyncio.to_thread(checker.close)
            if scheduler is not None:
                await asyncio.to_thread(scheduler.close)
            hub.stop()  # ends the event streams
            await asyncio.to_thread(loader.close)  # stops the watcher, unloads its plugins
            await asyncio.to_thread(manager.shutdown_all)  # and anything else registered

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"cache-control": "no-store"})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        name = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        return error_json(str(exc.detail), name, exc.status_code,
                          headers=dict(exc.headers) if exc.headers else None)

    async def internal_error(request: Request, exc: Exception) -> Response:
        return error_json(f"internal error: {exc!r}", type(exc).__name__, 500)

    v1 = "/api/v1"
    endpoints = [
        Route("/", index, methods=["GET"]),
        Route(f"{v1}/login", api.login, methods=["POST"]),
        Route(f"{v1}/events", api.events, methods=["GET"]),
        Route(f"{v1}/jobs", api.jobs, methods=["GET"]),
        Route(f"{v1}/plugins", api.list_plugins, methods=["GET"]),
        Route(f"{v1}/plugins/logs", api.all_logs, methods=["GET"]),
        Route(f"{v1}/plugins/health", platform_api.health, methods=["GET"]),
        Route(f"{v1}/plugins/upload", platform_api.upload, methods=["POST"]),
        Route(f"{v1}/plugins/widgets", platform_api.widgets, methods=["GET"]),
        Route(f"{v1}/plugins/menus", platform_api.menus, methods=["GET"]),
        Route(f"{v1}/plugins/templates", platform_api.templates, methods=["GET"]),
        Route(f"{v1}/plugins/error-codes", platform_api.error_codes, methods=["GET"]),
        Route(f"{v1}/plugins/{{name}}/widgets/{{id}}", platform_api.widget, methods=["GET"]),
        Route(f"{v1}/plugins/{{name}}/policy", platform_api.get_policy, methods=["GET"]),
        Route(f"{v1}/plugins/{{name}}/policy", platform_api.put_policy,
              methods=["PUT", "DELETE"]),
        Route(f"{v1}/plugins/{{name}}/reset-crashloop", platform_api.reset_crashloop,
              methods=["POST"]),
        Route(f"{v1}/plugins/logs", api.clear_logs, methods=["DELETE"]),
        Route(f"{v1}/plugins/{{name}}", api.get_plugin, methods=["GET"]),
        Route(f"{v1}/plugins/{{name}}", platform_api.uninstall, methods=["DELETE"]),
        Route(f"{v1}/plugins/{{name}}/events/{{channel}}", platform_api.channel_events,
              methods=["GET"]),
        Route(f"{v1}/plugins/{{name}}/logs", api.logs, methods=["GET"]),
        Route(f"{v1}/plugins/{{name}}/call/{{function}}", api.call, methods=["POST"]),
        Route(f"{v1}/plugins/{{name}}/{{action}}", api.action, methods=["POST"]),
        Route("/plugins/{name}", routes.plugin_route, methods=_ALL),
        Route("/plugins/{name}/{path:path}", routes.plugin_route, methods=_ALL),
        # Anything else may be a plugin route at its declared path (GoatFlow's "no route"
        # handler): the host's own endpoints above always win.
        Route("/{path:path}", routes.declared_route, methods=_ALL),
    ]
    protected = [parse_pattern(p) for p in API_PATHS]

    def needs_token(path: str) -> bool:
        return any(p.match(path) is not None for p in protected)

    app = Starlette(routes=endpoints, lifespan=lifespan,
                    middleware=[Middleware(Guard, allowed_hosts=allowed_hosts, token=check,
                                           needs_token=needs_token)],
                    exception_handlers={HTTPException: http_error, Exception: internal_error})
    app.state.plughost = state
    return app
