"""Running the app: a uvicorn Server that shuts down gracefully, and `plughost serve`."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from ..errors import AdminStateError
from ..host import HostSettings
from ..loader import Loader
from ..manager import Manager
from .app import create_app
from .auth import is_loopback, load_or_create_token
from .limits import limited_protocol, raise_fd_limit
from .state import ServerState


class ServeError(Exception):
    """`plughost serve` cannot start: the message is the one line the user sees."""


class PlughostServer(uvicorn.Server):
    """uvicorn's Server, plus what a plughost app needs to stop cleanly.

    - At shutdown the app's event streams end first; uvicorn would otherwise wait for the
      never-ending `/api/v1/events` responses before it runs the app's shutdown.
    - SIGINT/SIGTERM only ask for a graceful shutdown (a second SIGINT forces it), and are
      not re-raised afterwards, so a service stopped with SIGTERM exits 0.
    - `on_ready(server)` runs once the socket is listening (plugins already loaded).
    """

    def __init__(self, config: uvicorn.Config,
                 on_ready: Callable[[PlughostServer], None] | None = None) -> None:
        super().__init__(config)
        self.on_ready = on_ready

    @property
    def port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        return int(self.servers[0].sockets[0].getsockname()[1])

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_ready is not None:
            self.on_ready(self)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        state = getattr(getattr(self.config.app, "state", None), "plughost", None)
        if isinstance(state, ServerState):
            state.hub.close()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(sig: int, frame: FrameType | None) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

        originals = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, original in originals.items():
                signal.signal(sig, original)


def _listen(host: str, port: int) -> socket.socket:
    """Bind the listening socket up front, so "port in use" is a clear error, not a log."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(False)
    return sock


def _token_for(loopback: bool, token: str | None, insecure_no_auth: bool, data_dir: Path,
               echo: Callable[[str], Any]) -> str | None:
    """The API token this server requires, or None (loopback, or explicitly no auth)."""
    if token:
        return token
    if loopback:
        return None
    if insecure_no_auth:
        echo("plughost: WARNING: listening beyond loopback WITHOUT authentication "
             "(--insecure-no-auth): anyone who can reach this port controls the plugins")
        return None
    try:
        stored, path, created = load_or_create_token(data_dir)
    except OSError as exc:
        raise ServeError(f"cannot set up the API token: {exc.strerror or exc}") from None
    if created:
        echo(f"plughost: API token (stored in {path}, mode 0600): {stored}")
    else:
        echo(f"plughost: API token: the one stored in {path}")
    return stored


def serve(directory: Path, *, host: str = "127.0.0.1", port: int = 8080, watch: bool = True,
          debounce_ms: int = 500, lazy: bool = False, token: str | None = None,
          insecure_no_auth: bool = False, header_timeout: float = 10.0,
          body_timeout: float = 30.0, max_connections: int = 200,
          health: bool = True, auto_restart: bool = True,
          echo: Callable[[str], Any] = print) -> None:
    """Serve `directory` until SIGINT/SIGTERM; every plugin is unloaded before returning.

    Beyond loopback (decided by the bound address) an API token is required unless
    `insecure_no_auth`; see auth.py. Raises ServeError (one line for the user) when it
    cannot start.
    """
    if not directory.is_dir():
        raise ServeError(f"plugin directory {directory} does not exist")
    if debounce_ms < 0:
        raise ServeError("--debounce-ms must not be negative")
    if token is not None and len(token) < 16:
        raise ServeError("the API token must be at least 16 characters")
    sock = _listen(host, port)
    bound = str(sock.getsockname()[0])
    loopback = is_loopback(bound)
    settings = HostSettings()
    manager = Manager(settings=settings)
    try:
        api_token = _token_for(loopback, token, insecure_no_auth, settings.data_dir, echo)
        try:  # the operator's saved state, read now: a bad file stops the host at start
            manager.admin.snapshot()
        except AdminStateError as exc:
            raise ServeError(str(exc)) from None
    except ServeError:
        sock.close()
        manager.close()
        raise
    loader = Loader(directory, manager, lazy=lazy)
    # On a loopback address only loopback names are served (no DNS rebinding).
    names = [host.lower(), bound, f"[{bound}]", "localhost", "127.0.0.1", "[::1]", "::1"]
    app = create_app(manager, loader, watch=watch, debounce_ms=debounce_ms,
                     allowed_hosts=names if loopback else None, token=api_token,
                     body_timeout=body_timeout, health=health, auto_restart=auto_restart)
    # Room for every allowed connection plus the plugins' own pipes and sockets.
    raise_fd_limit(max_connections + 1024)
    # proxy_headers off: X-Forwarded-For is a client's word (plughost serve runs behind no
    # proxy it knows), so the webhook limiter counts the connection's own address
    config = uvicorn.Config(app, lifespan="on", log_config=None, timeout_graceful_shutdown=10,
                            http=limited_protocol(header_timeout, max_connections),
                            timeout_keep_alive=5, proxy_headers=False)

    def ready(server: PlughostServer) -> None:
        shown = f"[{host}]" if ":" in host else host
        rows = [r for r in loader.discovered_plugins()]
        loaded = sum(1 for r in rows if r.loaded)
        echo(f"plughost: {loaded} of {len(rows)} plugin(s) loaded from {directory}"
             f"{' (lazy)' if lazy else ''}{', watching for changes' if watch else ''}")
        echo(f"admin page: http://{shown}:{server.port}/  (Ctrl-C to stop)")

    server = PlughostServer(config, on_ready=ready)
    try:
        server.run(sockets=[sock])
    except SystemExit:  # uvicorn's exit when the app failed to start (already logged)
        raise ServeError("the server failed to start (see the log above)") from None
    finally:
        sock.close()
        manager.close()  # unloads anything still registered after a forced exit
        loader.engine.close()
    echo("plughost: stopped, all plugins unloaded")
