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

from ..jobs import Clock, Scheduler
from ..loader import Loader
from ..manager import Manager
from . import api
from .auth import TokenCheck
from .errors import error_json
from .events import EventHub
from .guard import Guard
from .state import ServerState

logger = logging.getLogger(__name__)

_ALL = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def admin_html() -> str:
    return (resources.files("plughost.server") / "static" / "admin.html").read_text("utf-8")


def create_app(manager: Manager, loader: Loader, *, watch: bool = True,
               debounce_ms: int = 500, keepalive: float = 15.0,
               max_body: int = 16 * 1024 * 1024, sse_queue_size: int = 256,
               allowed_hosts: list[str] | None = None, token: str | None = None,
               body_timeout: float = 30.0, jobs: bool = True,
               job_clock: Clock | None = None) -> Starlette:
    """The server app. The caller keeps ownership of `manager` (close it after the app
    stopped); the app loads `loader`'s directory on start and unloads it on shutdown.

    Cross-site requests are always refused; `allowed_hosts` (host names without port)
    additionally refuses other `Host` headers (DNS rebinding). With `token`, every request
    but the admin page and `POST /api/login` must carry it. A request body must arrive
    within `body_timeout` seconds (408 otherwise). With `jobs`, the registrations' jobs run
    on their schedules (`job_clock`: the scheduler's clock, for tests)."""
    hub = EventHub(manager, queue_size=sse_queue_size, keepalive=keepalive)
    check = TokenCheck(token) if token is not None else None
    timezone = getattr(getattr(manager.host.api, "settings", None), "app_config", {}).get(
        "app.timezone")
    scheduler = Scheduler(manager, clock=job_clock, timezone=timezone) if jobs else None
    state = ServerState(manager, loader, hub, watch=watch, debounce_ms=debounce_ms,
                        max_body=max_body, body_timeout=body_timeout, token=check,
                        scheduler=scheduler)
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
            yield
        finally:
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

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/api/login", api.login, methods=["POST"]),
        Route("/api/plugins", api.list_plugins, methods=["GET"]),
        Route("/api/events", api.events, methods=["GET"]),
        Route("/api/jobs", api.jobs, methods=["GET"]),
        Route("/api/plugins/{name}", api.get_plugin, methods=["GET"]),
        Route("/api/plugins/{name}/logs", api.logs, methods=["GET"]),
        Route("/api/plugins/{name}/call/{function}", api.call, methods=["POST"]),
        Route("/api/plugins/{name}/{action}", api.action, methods=["POST"]),
        Route("/plugins/{name}", api.plugin_route, methods=_ALL),
        Route("/plugins/{name}/{path:path}", api.plugin_route, methods=_ALL),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(Guard, allowed_hosts=allowed_hosts, token=check)],
                    exception_handlers={HTTPException: http_error, Exception: internal_error})
    app.state.plughost = state
    return app
