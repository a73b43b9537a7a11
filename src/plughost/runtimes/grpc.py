"""The grpc runtime: plugins as supervised child processes serving gRPC (docs/protocol.md).

Split as go-plugin splits its client: `grpc_connection` starts one process and brings it to
an initialised connection; `supervisor` decides what a crash means (backoff, circuit);
`GrpcPlugin` here holds the state and routes calls. A `GrpcPlugin` owns a private 0700
directory (short path: Unix socket paths are limited to ~107 bytes), the `Host` service for
this plugin in that directory, and the current connection. When the process dies
unexpectedly the plugin fails calls fast with `PluginUnavailable`, restarts it with
exponential backoff, and opens a circuit (state "failed") after repeated crashes, until an
explicit reload.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable

import grpc

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
from ..registration import Registration
from ..wire import netrpc
from .base import PluginBase, owning_private_copy
from .grpc_connection import Connection, Launch, open_connection
from .netrpc_connection import CallFailed, HostAPI, NetRpcConnection
from .sandbox import Sandbox
from .supervisor import RestartPolicy, Supervisor, Verdict

logger = logging.getLogger(__name__)

EventSink = Callable[[EventKind, str], None]  # (kind, detail)


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
        self._conn: Connection | NetRpcConnection | None = None
        self._launch: Launch | None = None  # made by start()
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
            self._launch = Launch(self._source, self._log, self._sandbox, self._dir,
                                  self._host_server.address,
                                  HostAPI(self._host, lambda: self.host_context))
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
            # The call id (net/rpc: the call token) lets this plugin's host calls find
            # their call chain (plugin_call, the caller's language and organisation).
            with chain.remote_call() as call_id:
                return conn.call(function, args, timeout=dl.left(), token=call_id)
        except CallFailed as exc:
            raise PluginCallError(str(exc), plugin=self.name, function=function) from None
        except grpc.RpcError as exc:
            raise self._rpc_error(exc, function, dl) from None
        except netrpc.RPCError as exc:
            raise self._netrpc_error(exc, function, dl) from None
        except ValueError:  # the channel was closed under us: the process just crashed
            raise PluginUnavailable(f"{function}: the plugin process went away during the "
                                    "call", plugin=self.name) from None

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

    def _start(self) -> Connection | NetRpcConnection:
        """Start a process (a new token, a new generation) and bring it to a registered,
        initialised plugin."""
        assert self._launch is not None, "start() makes the directory and Host service"
        with self._lock:
            self._gen += 1
            gen = self._gen
        self._token = token = secrets.token_hex(16)
        return open_connection(self._launch, token,
                               on_exit=lambda code: self._exited(gen, code),
                               on_registered=self._registered)

    def _registered(self, reg: Registration) -> None:
        """Who the plugin says it is, before its Init makes host calls; a restart must not
        change it."""
        if self._registration is not None and reg.name != self._registration.name:
            raise PluginLoadError("registration changed across a restart", plugin=self.name)
        self._registration = reg
        self.host_context = self._context(reg)

    def _stop_connection(self, conn: Connection | NetRpcConnection, *, polite: bool) -> None:
        conn.stop(self._source.manifest.resources.shutdown_timeout_ms / 1000, polite=polite)

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
            conn.drop()  # and anything it left in its process group
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
            closed = self._closing.is_set()
            if not closed:
                self._conn, self._state = conn, "running"
        if closed:  # shut down while we were starting
            self._stop_connection(conn, polite=False)
            return
        self._log.info("restarted", source="host")
        self._on_event("restart", "")

    def _netrpc_error(self, exc: netrpc.RPCError, function: str, deadline: Deadline
                      ) -> PlughostError:
        if isinstance(exc, netrpc.CallTimeout) or deadline.left() <= _DEADLINE_SLACK:
            # net/rpc cannot cancel: the plugin's handler runs on, its late answer dropped
            return PluginTimeout(f"call exceeded its deadline of {deadline.text()}",
                                 plugin=self.name, function=function)
        if isinstance(exc, netrpc.ServerError):  # e.g. rpc: can't find method
            return PluginCallError(f"RPC failed: {exc.message}", plugin=self.name,
                                   function=function)
        return PluginUnavailable(f"{function}: the plugin process is not answering ({exc})",
                                 plugin=self.name)

    def _rpc_error(self, exc: grpc.RpcError, function: str, deadline: Deadline
                   ) -> PlughostError:
        code = exc.code()
        # Classified by the call's own deadline, not by the code: a Go handler that returns
        # ctx.Err() answers UNKNOWN "context deadline exceeded" (or CANCELLED) when the
        # host's deadline fired, and DEADLINE_EXCEEDED for a deadline of its own.
        if deadline.left() <= _DEADLINE_SLACK:
            return PluginTimeout(f"call exceeded its deadline of {deadline.text()}",
                                 plugin=self.name, function=function)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return PluginCallError(f"the plugin's own deadline passed: {exc.details()}",
                                   plugin=self.name, function=function)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return PluginResourceError(f"message too large or plugin overloaded: "
                                       f"{exc.details()}", plugin=self.name, function=function)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            return PluginUnavailable(f"{function}: the plugin process is not answering "
                                     f"({code.name}: {exc.details()})", plugin=self.name)
        return PluginCallError(f"RPC failed: {code.name}: {exc.details()}", plugin=self.name,
                               function=function)


#: An error this close to the call's deadline is the deadline's (clocks and the wire).
_DEADLINE_SLACK = 0.005


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
