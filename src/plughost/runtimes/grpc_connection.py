"""One process of a gRPC plugin, from spawn to an initialised connection, and its stop.

This is go-plugin's client side of one start: spawn the executable (confined), read the
handshake line, dial the announced address, check health, `Register`, `Init`. It knows
nothing of crashes, restarts or calls; `grpc.GrpcPlugin` decides when to open one and what
an exit means (with `supervisor.Supervisor`). Every failure is a `PluginLoadError` naming
the plugin, the stage that failed and the tail of its stderr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..errors import PlughostError, PluginLoadError
from ..host import chain
from ..logs import PluginLog
from ..plugin import PluginSource
from ..proto import CHANNEL_OPTIONS
from ..proto.plughost.v1 import plugin_pb2 as pb
from ..proto.plughost.v1 import plugin_pb2_grpc as pb_grpc
from ..registration import Registration, parse_registration
from ..signing import list_directory
from .netrpc_connection import CallFailed, HostAPI, NetRpcConnection, open_netrpc
from .process import ChildProcess, Handshake
from .sandbox import Sandbox

logger = logging.getLogger(__name__)

__all__ = ["Connection", "Launch", "open_connection"]


@dataclass(frozen=True)
class Launch:
    """Where and how one plugin's processes start (the same for every restart)."""

    source: PluginSource
    log: PluginLog
    sandbox: Sandbox
    run_dir: str  # the plugin's private 0700 directory: sockets, TMPDIR, the only writable
    host_address: str  # its Host service
    host_api: HostAPI | None = None  # the host API a net/rpc plugin gets over its broker

    @property
    def name(self) -> str:
        return self.source.name


@dataclass
class Connection:
    """A started process and the channel to its `Plugin` service."""

    proc: ChildProcess
    channel: grpc.Channel
    stub: pb_grpc.PluginStub
    registration: Registration
    #: the Unix socket it announced inside its private directory (go-plugin before 1.5
    #: makes it under TMPDIR, there too), removed once the process is gone
    socket: str | None = None

    def _remove_socket(self) -> None:
        if self.socket is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.socket)

    def call(self, function: str, args: bytes, *, timeout: float, token: str) -> bytes:
        """`Plugin.Call`; raises grpc.RpcError, or CallFailed with the plugin's error."""
        resp = self.stub.Call(pb.CallRequest(function=function, args=args), timeout=timeout,
                              metadata=((chain.CALL_ID_METADATA, token),))
        if resp.error:
            raise CallFailed(resp.error)
        return bytes(resp.result)

    def stop(self, grace: float, *, polite: bool) -> None:
        """Ask it to stop (plughost's Shutdown, then go-plugin's controller), wait, then
        SIGTERM and SIGKILL: all within `grace` seconds."""
        deadline = time.monotonic() + grace

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        if polite and not self.proc.exited.is_set():
            with contextlib.suppress(grpc.RpcError, ValueError):
                self.stub.Shutdown(pb.Empty(), timeout=max(0.05, left() / 2))
            with contextlib.suppress(grpc.RpcError, ValueError):  # go-plugin's controller
                self.channel.unary_unary(
                    "/plugin.GRPCController/Shutdown",
                    request_serializer=lambda _: b"",
                    response_deserializer=lambda b: b,
                )(None, timeout=max(0.05, min(0.5, left() / 2)))
            self.proc.exited.wait(left() * 0.8)
        self.proc.stop(grace=left() if polite else 0.0)
        self.channel.close()
        self._remove_socket()

    def drop(self) -> None:
        """After the process died: close the channel, kill what it left in its group,
        remove its socket (a restart announces a new one)."""
        self.channel.close()
        self.proc.stop(grace=0.0)
        self._remove_socket()


def open_connection(launch: Launch, token: str, *, on_exit: Callable[[int], None],
                    on_registered: Callable[[Registration], None]
                    ) -> Connection | NetRpcConnection:
    """Start one process and bring it to a registered, initialised plugin.

    `on_registered` runs between `Register` and `Init`, so the host knows who the plugin is
    before its `Init` makes host calls (it may refuse by raising). `on_exit(code)` is called
    from the process's reaper thread when it exits, whenever that is.
    """
    res = launch.source.manifest.resources
    deadline = time.monotonic() + res.start_timeout_ms / 1000

    def left(floor: float = 0.05) -> float:
        return max(floor, deadline - time.monotonic())

    _check_pinned(launch)
    cmd = _command(launch)
    token_fd = _token_pipe(token)
    try:
        proc = ChildProcess(cmd, str(launch.source.plugin_dir), _environment(launch, token_fd),
                            launch.log, launch.name, on_exit=on_exit, pass_fds=(token_fd,),
                            versions=launch.source.manifest.handshake.versions)
    except OSError as exc:  # ENOEXEC (no shebang), EACCES, a vanished directory...
        raise PluginLoadError(f"cannot start {launch.source.entry}: {exc.strerror or exc}",
                              plugin=launch.name, path=launch.source.entry) from None
    finally:
        os.close(token_fd)
    channel: grpc.Channel | None = None
    announced: str | None = None
    stage = "handshake"
    try:
        hs = proc.wait_handshake(left(0.0), res.start_timeout_ms)
        if hs.network == "unix" and os.path.abspath(hs.address).startswith(
                launch.run_dir + "/"):
            announced = os.path.abspath(hs.address)
        _check_reachable(launch, hs)
        if hs.protocol == "netrpc":  # go-plugin's net/rpc, as GoatFlow's plugins speak it
            assert launch.host_api is not None
            conn = open_netrpc(proc, hs, name=launch.name, source_path=str(launch.source.path),
                               plugin_dir=str(launch.source.plugin_dir),
                               work_dir=launch.run_dir, config=launch.source.manifest.config,
                               host_api=launch.host_api, left=left,
                               on_registered=on_registered)
            announced = None  # the connection owns its socket now
            return conn
        stage = "connect"
        channel = grpc.insecure_channel(hs.target, options=CHANNEL_OPTIONS)
        try:
            grpc.channel_ready_future(channel).result(timeout=left())
        except grpc.FutureTimeoutError:
            raise PluginLoadError(f"could not connect to {hs.target}{proc.stderr_tail()}",
                                  plugin=launch.name) from None
        stage = "Health.Check"
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="plugin"), timeout=left())
        if health.status != health_pb2.HealthCheckResponse.SERVING:
            raise PluginLoadError("health check: service 'plugin' is not SERVING",
                                  plugin=launch.name)
        stub = pb_grpc.PluginStub(channel)
        stage = "Register"
        reg = parse_registration(stub.Register(pb.Empty(), timeout=left()).registration,
                                 expected_name=launch.name, path=str(launch.source.path))
        on_registered(reg)
        config = launch.source.manifest.config
        stage = "Init"
        # Init runs on the call path that loads the plugin: host calls it makes carry the
        # id, so a cycle back into a plugin that is loading is refused (host/chain.py).
        with chain.remote_call() as call_id:
            stub.Init(pb.InitRequest(
                config_json=json.dumps(config).encode(),
                config={k: v if isinstance(v, str) else json.dumps(v)
                        for k, v in config.items()}),
                timeout=left(), metadata=((chain.CALL_ID_METADATA, call_id),))
        return Connection(proc, channel, stub, reg, socket=announced)
    except BaseException as exc:
        if channel is not None:
            channel.close()
        proc.kill()
        if announced is not None:  # a start that failed leaves no socket behind
            with contextlib.suppress(OSError):
                os.unlink(announced)
        if isinstance(exc, grpc.RpcError):
            hint = ""
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED and stage in ("Register", "Init",
                                                                          "Health.Check"):
                hint = ("; not a plughost.v1 plugin: it serves no plughost.v1.Plugin service "
                        "(a go-plugin plugin must implement plugin.proto's Plugin service)")
            raise PluginLoadError(
                f"start-up {stage} RPC failed: {exc.code().name}: {exc.details()}{hint}"
                f"{proc.stderr_tail()}", plugin=launch.name) from None
        if isinstance(exc, PlughostError) and exc.plugin is None:
            exc.plugin = launch.name
        raise


def _command(launch: Launch) -> list[str]:
    entry = str(launch.source.entry)
    if entry.endswith(".py"):
        # A Python plugin runs on the host's interpreter, so it finds the same SDK.
        cmd = [sys.executable, entry]
    elif not os.access(entry, os.X_OK):
        raise PluginLoadError(f"{entry} is not executable (chmod +x it)",
                              plugin=launch.name, path=entry)
    else:
        cmd = [entry]
    return launch.sandbox.wrap(cmd, plugin=launch.name, run_dir=launch.source.plugin_dir,
                               writable=Path(launch.run_dir),
                               network=launch.source.manifest.sandbox.network)


def _environment(launch: Launch, token_fd: int) -> dict[str, str]:
    m = launch.source.manifest
    env = {"PATH": os.environ.get("PATH", os.defpath)}
    env.update({k: os.environ[k] for k in m.env if k in os.environ})
    if m.handshake.magic_cookie_key == "PLUGHOST_PLUGIN":
        # GoatFlow's cookie too, so its plugins start unchanged (each checks only its own)
        env["GOATKIT_PLUGIN"] = "goatkit-v1"
    own = "GOATFLOW_PLUGIN_" + launch.name.upper().replace("-", "_") + "_"
    for key, value in os.environ.items():  # GoatFlow passes them as they are, and bare
        if key.startswith(own):
            env[key] = value
            env[key[len("GOATFLOW_PLUGIN_"):]] = value
    env.update({
        "HOME": launch.run_dir,
        m.handshake.magic_cookie_key: m.handshake.magic_cookie_value,
        # go-plugin's negotiation: the plugin serves the newest of these it speaks
        "PLUGIN_PROTOCOL_VERSIONS": ",".join(map(str, m.handshake.versions)),
        "PLUGIN_UNIX_SOCKET_DIR": launch.run_dir,
        # go-plugin before 1.5 makes its socket under TMPDIR: there it is private too,
        # and reachable by the host from outside a sandbox.
        "TMPDIR": launch.run_dir,
        "PLUGHOST_HOST_ADDR": launch.host_address,
        # The token itself is in no environment (a same-user process can read those
        # through /proc): it waits in a pipe the plugin reads once and closes.
        "PLUGHOST_HOST_TOKEN_FD": str(token_fd),
        "PYTHONUNBUFFERED": "1",
        # a Python plugin must not write __pycache__ into its pinned, read-only copy
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    return env


def _check_pinned(launch: Launch) -> None:
    """A private copy runs only while it still holds the bytes staged (and verified): a
    restart after someone rewrote it refuses to start."""
    pinned = launch.source.pinned_digest
    if pinned is None:
        return
    try:
        now = list_directory(launch.source.plugin_dir).digest
    except PlughostError as exc:
        now, why = None, exc.message
    else:
        why = "its files differ"
    if now != pinned:
        raise PluginLoadError(
            f"refusing to start: its private copy changed since it was verified ({why}); "
            "reload the plugin to stage and verify it again",
            plugin=launch.name, path=launch.source.path)


def _check_reachable(launch: Launch, hs: Handshake) -> None:
    """A confined plugin can announce an address the host cannot reach from outside its
    namespaces; say so instead of timing out on the connect."""
    if not launch.sandbox.active:
        return
    if hs.network == "tcp" and not launch.source.manifest.sandbox.network:
        raise PluginLoadError(
            f"announced tcp address {hs.address}, but it runs in a sandbox without network, "
            "where that address is its own: listen on a Unix socket in "
            "PLUGIN_UNIX_SOCKET_DIR, or allow it `sandbox: {network: true}`",
            plugin=launch.name)
    if hs.network == "unix" and not os.path.abspath(hs.address).startswith(
            launch.run_dir + "/"):
        raise PluginLoadError(
            f"announced socket {hs.address}, outside PLUGIN_UNIX_SOCKET_DIR "
            f"({launch.run_dir}), the only directory the host shares with its sandbox",
            plugin=launch.name)


def _token_pipe(token: str) -> int:
    """A pipe holding `token` and then EOF; returns its read end (close it once passed)."""
    r, w = os.pipe()
    try:
        os.write(w, token.encode())  # 32 bytes: far below any pipe buffer, never blocks
    finally:
        os.close(w)
    return r
