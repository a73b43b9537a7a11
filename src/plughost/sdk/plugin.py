"""The plugin's side of the protocol: the `Plugin` service, health, handshake, lifecycle."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any, NoReturn, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..proto import CALL_ID_METADATA, CHANNEL_OPTIONS
from ..proto.plughost.v1 import plugin_pb2 as pb
from ..proto.plughost.v1 import plugin_pb2_grpc as pb_grpc
from .host import _current_call, host_token

Handler = Callable[[Any], Any]
F = TypeVar("F", bound=Handler)


class PluginError(Exception):
    """Raise from a function to fail the call with this message (the host raises
    `PluginCallError(message)`). Any other exception does the same, with its type name."""


class Plugin:
    """A grpc plugin: its registration, its functions, and `serve()`."""

    def __init__(self, name: str, version: str = "0.0.0", **registration: Any) -> None:
        self.registration: dict[str, Any] = {"name": name, "version": version, **registration}
        self.functions: dict[str, Handler] = {}
        self.config: dict[str, Any] = {}
        self._on_init: list[Callable[[dict[str, Any]], None]] = []
        self._on_shutdown: list[Callable[[], None]] = []
        self._stop = threading.Event()

    @property
    def name(self) -> str:
        return str(self.registration["name"])

    def function(self, fn: F | None = None, *, name: str | None = None) -> Any:
        """Decorator: expose `fn(args) -> result` (JSON in, JSON out) as a plugin function."""

        def register(f: F) -> F:
            self.functions[name or f.__name__] = f
            return f

        return register(fn) if fn is not None else register

    def on_init(self, fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        """Decorator: run `fn(config)` when the host initialises the plugin."""
        self._on_init.append(fn)
        return fn

    def on_shutdown(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Decorator: run `fn()` before the plugin exits on the host's request."""
        self._on_shutdown.append(fn)
        return fn

    # -- serving -------------------------------------------------------------------------

    def serve(self, *, magic_cookie: tuple[str, str] = ("PLUGHOST_PLUGIN", "v1")) -> NoReturn:
        """Serve until the host says stop (or dies). Never returns."""
        key, value = magic_cookie
        if os.environ.get(key) != value:
            sys.stderr.write(
                f"{self.name} is a plughost plugin: it is started by a plughost host, not "
                f"run directly (magic cookie {key} is not set).\n")
            sys.exit(1)
        if "1" not in os.environ.get("PLUGIN_PROTOCOL_VERSIONS", "1").split(","):
            sys.stderr.write("plughost plugin: the host does not speak protocol version 1\n")
            sys.exit(1)
        host_token()  # read and close the token pipe before any plugin code runs again
        _undumpable()
        sock_dir = os.environ.get("PLUGIN_UNIX_SOCKET_DIR") or tempfile.mkdtemp()
        path = os.path.join(sock_dir, f"plugin-{os.getpid()}.sock")
        if os.path.exists(path):
            os.unlink(path)

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16,
                                                        thread_name_prefix="plugin"),
                             options=CHANNEL_OPTIONS)
        pb_grpc.add_PluginServicer_to_server(_Servicer(self), server)
        health_servicer = health.HealthServicer()
        health_servicer.set("plugin", health_pb2.HealthCheckResponse.SERVING)
        health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        server.add_insecure_port(f"unix:{path}")
        server.start()

        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        _watch_parent(self._stop)
        sys.stdout.write(f"1|1|unix|{path}|grpc\n")
        sys.stdout.flush()

        self._stop.wait()
        for fn in self._on_shutdown:
            try:
                fn()
            except Exception as exc:
                sys.stderr.write(f"on_shutdown failed: {exc}\n")
        server.stop(grace=1.0).wait(2.0)
        if os.path.exists(path):
            os.unlink(path)
        sys.stdout.flush()
        os._exit(0)  # grpc's threads must not keep a stopped plugin alive


def _undumpable() -> None:
    """Keep other processes of this user (a sibling plugin, say) out of this one's memory,
    where its host token lives (Linux; elsewhere a no-op)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0


def _watch_parent(stop: threading.Event) -> None:
    """Exit when the host goes away, however it went (belt to the host's PDEATHSIG)."""
    parent = os.getppid()

    def watch() -> None:
        while not stop.is_set():
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class _Servicer(pb_grpc.PluginServicer):
    def __init__(self, plugin: Plugin) -> None:
        self._p = plugin

    def Register(self, request: pb.Empty, context: grpc.ServicerContext
                 ) -> pb.RegisterResponse:
        return pb.RegisterResponse(registration=json.dumps(self._p.registration).encode())

    def Init(self, request: pb.InitRequest, context: grpc.ServicerContext) -> pb.Empty:
        config = json.loads(request.config_json) if request.config_json else dict(
            request.config)
        self._p.config = config
        # Init carries a call id too: host calls made from on_init belong to the load.
        call_id = dict(context.invocation_metadata()).get(CALL_ID_METADATA)
        _current_call.id = call_id if isinstance(call_id, str) else None
        for fn in self._p._on_init:
            fn(config)
        return pb.Empty()

    def Call(self, request: pb.CallRequest, context: grpc.ServicerContext) -> pb.CallResponse:
        call_id = dict(context.invocation_metadata()).get(CALL_ID_METADATA)
        _current_call.id = call_id if isinstance(call_id, str) else None
        fn = self._p.functions.get(request.function)
        if fn is None:
            return pb.CallResponse(error=f"unknown function: {request.function}")
        try:
            args = json.loads(request.args) if request.args else {}
            result = fn(args)
        except PluginError as exc:
            return pb.CallResponse(error=str(exc))
        except Exception as exc:
            return pb.CallResponse(error=f"{type(exc).__name__}: {exc}")
        return pb.CallResponse(result=b"" if result is None else json.dumps(result).encode())

    def Shutdown(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.Empty:
        self._p._stop.set()
        return pb.Empty()
