"""The grpc runtime: plugins as supervised child processes serving gRPC (docs/protocol.md).

A `GrpcPlugin` owns a private 0700 directory (short path: Unix socket paths are limited to
~107 bytes), the `Host` service for this plugin in that directory, and the current
connection (process + channel). When the process dies unexpectedly the plugin fails calls
fast with `PluginUnavailable`, restarts it with exponential backoff, and opens a circuit
(state "failed") after repeated crashes, until an explicit reload.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..deadline import Deadline
from ..errors import (
    PlughostError,
    PluginCallError,
    PluginLoadError,
    PluginResourceError,
    PluginTimeout,
    PluginUnavailable,
)
from ..host import HostFunctions, PluginCaller, chain
from ..host.service import HostServer
from ..leftovers import owned_dir
from ..lifecycle import EventKind, PluginState
from ..logs import PluginLog
from ..plugin import Kind, PluginSource, Staged, StartContext
from ..proto import CHANNEL_OPTIONS
from ..proto.plughost.v1 import plugin_pb2 as pb
from ..proto.plughost.v1 import plugin_pb2_grpc as pb_grpc
from ..registration import parse_registration
from ..signing import list_directory
from .base import PluginBase, owning_private_copy
from .process import ChildProcess, Handshake
from .sandbox import Sandbox
from .supervisor import RestartPolicy, Supervisor, Verdict

logger = logging.getLogger(__name__)

EventSink = Callable[[EventKind, str], None]  # (kind, detail)


@dataclass
class _Connection:
    proc: ChildProcess
    channel: grpc.Channel
    stub: pb_grpc.PluginStub


def _socket_root() -> str:
    tmp = tempfile.gettempdir()
    return tmp if len(tmp) <= 40 else "/tmp"


class GrpcPlugin(PluginBase):
    """A loaded out-of-process plugin. Thread-safe; calls run concurrently."""

    kind: Kind = "grpc"

    def __init__(self, source: PluginSource, host: HostFunctions, log: PluginLog, *,
                 policy: RestartPolicy | None = None, on_event: EventSink | None = None,
                 sandbox: Sandbox | None = None, caller: PluginCaller | None = None) -> None:
        super().__init__(source, log, caller)
        self._supervisor = Supervisor(policy)
        self._sandbox = sandbox or Sandbox()
        self._on_event = on_event or (lambda kind, detail: None)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._state: PluginState = "starting"
        self._gen = 0
        self._conn: _Connection | None = None
        self._host = host
        self._dir = ""  # made by start()
        self._token = ""  # replaced on every start of the process
        self._host_server: HostServer | None = None

    def start(self) -> None:
        """Make the private directory and the Host service, then start the process and
        bring it to a registered, initialised plugin (the constructor starts nothing)."""
        if self._dir:
            raise RuntimeError(f"{self.name} was started already")
        # named after this host, so the next host removes it if we die uncleanly
        self._dir = str(owned_dir("ph", _socket_root()))
        os.chmod(self._dir, 0o700)
        try:
            self._host_server = HostServer(os.path.join(self._dir, "host.sock"), self._host,
                                           lambda: self.host_context, lambda: self._token)
            self._conn = self._start()
        except BaseException:
            self._closing.set()
            self._cleanup()
            raise
        self._state = "running"

    # -- Plugin protocol ---------------------------------------------------------------

    @property
    def state(self) -> PluginState:
        return self._state

    @property
    def pid(self) -> int | None:
        conn = self._conn
        return conn.proc.pid if conn else None

    def call(self, function: str, args: bytes, *, deadline: Deadline | None = None) -> bytes:
        conn = self._conn
        if conn is None or self._state != "running":
            why = {"failed": "crashed repeatedly; the circuit is open until it is reloaded",
                   "restarting": "its process crashed and is being restarted",
                   "stopped": "it has been shut down"}.get(self._state, self._state)
            raise PluginUnavailable(why, plugin=self.name)
        dl = self._deadline(deadline)
        try:
            # The call id lets this plugin's host calls find their call chain (plugin_call).
            with chain.remote_call() as call_id:
                resp = conn.stub.Call(pb.CallRequest(function=function, args=args),
                                      timeout=dl.left(),
                                      metadata=((chain.CALL_ID_METADATA, call_id),))
        except grpc.RpcError as exc:
            raise self._rpc_error(exc, function, dl) from None
        except ValueError:  # the channel was closed under us: the process just crashed
            raise PluginUnavailable(f"{function}: the plugin process went away during the "
                                    "call", plugin=self.name) from None
        if resp.error:
            raise PluginCallError(resp.error, plugin=self.name, function=function)
        return bytes(resp.result)

    def shutdown(self) -> None:
        with self._lock:
            self._closing.set()
            conn, self._conn = self._conn, None
            self._state = "stopped"
        if conn is not None:
            self._stop_connection(conn, polite=True)
        self._cleanup()
        self._release_private_copy()

    # -- start / stop ------------------------------------------------------------------

    def _command(self) -> list[str]:
        entry = str(self._source.entry)
        if entry.endswith(".py"):
            # A Python plugin runs on the host's interpreter, so it finds the same SDK.
            cmd = [sys.executable, entry]
        elif not os.access(entry, os.X_OK):
            raise PluginLoadError(f"{entry} is not executable (chmod +x it)",
                                  plugin=self.name, path=entry)
        else:
            cmd = [entry]
        return self._sandbox.wrap(cmd, plugin=self.name, run_dir=self._source.plugin_dir,
                                  writable=Path(self._dir),
                                  network=self._source.manifest.sandbox.network)

    def _environment(self, token_fd: int) -> dict[str, str]:
        assert self._host_server is not None, "start() makes the Host service first"
        m = self._source.manifest
        env = {"PATH": os.environ.get("PATH", os.defpath)}
        env.update({k: os.environ[k] for k in m.env if k in os.environ})
        env.update({
            m.handshake.magic_cookie_key: m.handshake.magic_cookie_value,
            "PLUGIN_PROTOCOL_VERSIONS": "1",
            "PLUGIN_UNIX_SOCKET_DIR": self._dir,
            # go-plugin before 1.5 makes its socket under TMPDIR: there it is private too,
            # and reachable by the host from outside a sandbox.
            "TMPDIR": self._dir,
            "PLUGHOST_HOST_ADDR": self._host_server.address,
            # The token itself is in no environment (a same-user process can read those
            # through /proc): it waits in a pipe the plugin reads once and closes.
            "PLUGHOST_HOST_TOKEN_FD": str(token_fd),
            "PYTHONUNBUFFERED": "1",
            # a Python plugin must not write __pycache__ into its pinned, read-only copy
            "PYTHONDONTWRITEBYTECODE": "1",
        })
        return env

    def _check_pinned(self) -> None:
        """A private copy runs only while it still holds the bytes staged (and verified):
        a restart after someone rewrote it refuses to start."""
        pinned = self._source.pinned_digest
        if pinned is None:
            return
        try:
            now = list_directory(self._source.plugin_dir).digest
        except PlughostError as exc:
            now, why = None, exc.message
        else:
            why = "its files differ"
        if now != pinned:
            raise PluginLoadError(
                f"refusing to start: its private copy changed since it was verified "
                f"({why}); reload the plugin to stage and verify it again",
                plugin=self.name, path=self._source.path)

    def _start(self) -> _Connection:
        """Start a process and bring it to a registered, initialised plugin."""
        res = self._source.manifest.resources
        deadline = time.monotonic() + res.start_timeout_ms / 1000
        with self._lock:
            self._gen += 1
            gen = self._gen
        self._check_pinned()
        cmd = self._command()
        self._token = token = secrets.token_hex(16)
        token_fd = _token_pipe(token)
        try:
            proc = ChildProcess(cmd, str(self._source.plugin_dir),
                                self._environment(token_fd), self._log, self.name,
                                on_exit=lambda code: self._exited(gen, code),
                                pass_fds=(token_fd,))
        except OSError as exc:  # ENOEXEC (no shebang), EACCES, a vanished directory...
            raise PluginLoadError(f"cannot start {self._source.entry}: {exc.strerror or exc}",
                                  plugin=self.name, path=self._source.entry) from None
        finally:
            os.close(token_fd)
        channel: grpc.Channel | None = None
        stage = "start"
        try:
            stage = "handshake"
            hs = proc.wait_handshake(max(0.0, deadline - time.monotonic()),
                                     res.start_timeout_ms)
            self._check_reachable(hs)
            stage = "connect"
            channel = grpc.insecure_channel(hs.target, options=CHANNEL_OPTIONS)
            try:
                grpc.channel_ready_future(channel).result(
                    timeout=max(0.05, deadline - time.monotonic()))
            except grpc.FutureTimeoutError:
                raise PluginLoadError(f"could not connect to {hs.target}{proc.stderr_tail()}",
                                      plugin=self.name) from None
            remaining = max(0.05, deadline - time.monotonic())
            stage = "Health.Check"
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="plugin"), timeout=remaining)
            if health.status != health_pb2.HealthCheckResponse.SERVING:
                raise PluginLoadError("health check: service 'plugin' is not SERVING",
                                      plugin=self.name)
            stub = pb_grpc.PluginStub(channel)
            stage = "Register"
            reg = parse_registration(
                stub.Register(pb.Empty(), timeout=max(0.05, deadline - time.monotonic()))
                .registration, expected_name=self.name, path=str(self._source.path))
            if self._registration is not None and reg.name != self._registration.name:
                raise PluginLoadError("registration changed across a restart", plugin=self.name)
            self._registration = reg
            self.host_context = self._context(reg)
            config = self._source.manifest.config
            stage = "Init"
            stub.Init(pb.InitRequest(
                config_json=json.dumps(config).encode(),
                config={k: v if isinstance(v, str) else json.dumps(v)
                        for k, v in config.items()}),
                timeout=max(0.05, deadline - time.monotonic()))
            return _Connection(proc, channel, stub)
        except BaseException as exc:
            if channel is not None:
                channel.close()
            proc.kill()
            if isinstance(exc, grpc.RpcError):
                raise PluginLoadError(
                    f"start-up {stage} RPC failed: {exc.code().name}: {exc.details()}"
                    f"{proc.stderr_tail()}", plugin=self.name) from None
            if isinstance(exc, PlughostError):
                if exc.plugin is None:
                    exc.plugin = self.name
                raise
            raise

    def _check_reachable(self, hs: Handshake) -> None:
        """A confined plugin can announce an address the host cannot reach from outside
        its namespaces; say so instead of timing out on the connect."""
        if not self._sandbox.active:
            return
        if hs.network == "tcp" and not self._source.manifest.sandbox.network:
            raise PluginLoadError(
                f"announced tcp address {hs.address}, but it runs in a sandbox without "
                "network, where that address is its own: listen on a Unix socket in "
                "PLUGIN_UNIX_SOCKET_DIR, or allow it `sandbox: {network: true}`",
                plugin=self.name)
        if hs.network == "unix" and not os.path.abspath(hs.address).startswith(self._dir + "/"):
            raise PluginLoadError(
                f"announced socket {hs.address}, outside PLUGIN_UNIX_SOCKET_DIR "
                f"({self._dir}), the only directory the host shares with its sandbox",
                plugin=self.name)

    def _stop_connection(self, conn: _Connection, *, polite: bool) -> None:
        # One budget for the whole stop: asking, waiting, then SIGTERM; SIGKILL after it.
        grace = self._source.manifest.resources.shutdown_timeout_ms / 1000
        deadline = time.monotonic() + grace

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        if polite and not conn.proc.exited.is_set():
            with contextlib.suppress(grpc.RpcError, ValueError):
                conn.stub.Shutdown(pb.Empty(), timeout=max(0.05, left() / 2))
            with contextlib.suppress(grpc.RpcError, ValueError):  # go-plugin's controller
                conn.channel.unary_unary(
                    "/plugin.GRPCController/Shutdown",
                    request_serializer=lambda _: b"",
                    response_deserializer=lambda b: b,
                )(None, timeout=max(0.05, min(0.5, left() / 2)))
            conn.proc.exited.wait(left() * 0.8)
        conn.proc.stop(grace=left() if polite else 0.0)
        conn.channel.close()

    def _cleanup(self) -> None:
        if self._host_server is not None:
            self._host_server.stop(0.5)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    # -- supervision ---------------------------------------------------------------------

    def _exited(self, gen: int, code: int) -> None:
        with self._lock:
            if self._closing.is_set() or gen != self._gen or self._state != "running":
                return  # an expected exit, or a process we already replaced
            conn, self._conn = self._conn, None
            self._state = "restarting"
        verdict = self._supervisor.crashed()
        self._log.error(f"process exited unexpectedly with code {code}", source="host")
        self._on_event("crash", f"exit code {code}")
        if conn is not None:
            conn.channel.close()
            conn.proc.stop(grace=0.0)  # anything it left in its process group
        self._schedule_restart(verdict)

    def _schedule_restart(self, verdict: Verdict) -> None:
        if verdict.give_up:
            with self._lock:
                self._state = "failed"
            msg = verdict.reason(self._supervisor.policy)
            self._log.error(msg, source="host")
            self._on_event("failed", msg)
            return
        threading.Thread(target=self._restart, args=(verdict.delay,),
                         name=f"{self.name}-restart", daemon=True).start()

    def _restart(self, delay: float) -> None:
        if self._closing.wait(delay):
            return
        try:
            conn = self._start()
        except Exception as exc:  # any failure counts as a crash; the supervisor lives on
            self._log.error(f"restart failed: {exc}", source="host")
            if self._closing.is_set():
                return
            self._schedule_restart(self._supervisor.crashed())
            return
        with self._lock:
            if not self._closing.is_set():
                self._conn, self._state = conn, "running"
                conn = None  # type: ignore[assignment]
        if conn is not None:  # shut down while we were starting
            self._stop_connection(conn, polite=False)
            return
        self._log.info("restarted", source="host")
        self._on_event("restart", "")

    def _rpc_error(self, exc: grpc.RpcError, function: str, deadline: Deadline
                   ) -> PlughostError:
        code = exc.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return PluginTimeout(f"call exceeded its deadline of {deadline.text()}",
                                 plugin=self.name, function=function)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return PluginResourceError(f"message too large or plugin overloaded: "
                                       f"{exc.details()}", plugin=self.name, function=function)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            return PluginUnavailable(f"{function}: the plugin process is not answering "
                                     f"({code.name}: {exc.details()})", plugin=self.name)
        return PluginCallError(f"RPC failed: {code.name}: {exc.details()}", plugin=self.name,
                               function=function)


def _token_pipe(token: str) -> int:
    """A pipe holding `token` and then EOF; returns its read end (close it once passed)."""
    r, w = os.pipe()
    try:
        os.write(w, token.encode())  # 32 bytes: far below any pipe buffer, never blocks
    finally:
        os.close(w)
    return r


def load_grpc_plugin(source: PluginSource, host: HostFunctions, log: PluginLog, *,
                     policy: RestartPolicy | None = None, on_event: EventSink | None = None,
                     sandbox: Sandbox | None = None, caller: PluginCaller | None = None
                     ) -> GrpcPlugin:
    """Start, handshake, register and initialise one version of a grpc plugin."""
    plugin = GrpcPlugin(source, host, log, policy=policy, on_event=on_event,
                        sandbox=sandbox, caller=caller)
    plugin.start()
    return plugin


class GrpcRuntime:
    """Starts gRPC plugins as supervised, confined child processes."""

    kind = "grpc"

    def __init__(self, policy: RestartPolicy | None = None,
                 sandbox: Sandbox | None = None) -> None:
        self.policy = policy or RestartPolicy()
        self.sandbox = sandbox or Sandbox()

    def start(self, staged: Staged, context: StartContext) -> GrpcPlugin:
        return owning_private_copy(staged.source, lambda: load_grpc_plugin(
            staged.source, context.host, context.log, policy=self.policy,
            on_event=context.on_event, sandbox=self.sandbox, caller=context.caller))

    def close(self) -> None:
        pass  # each plugin owns its process, directory and Host service
