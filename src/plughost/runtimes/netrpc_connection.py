"""The net/rpc transport: one started process of a go-plugin plugin that speaks go-plugin's
`netrpc` protocol, as GoatFlow's "gRPC" plugins do (docs/protocol.md, "net/rpc plugins").

After the handshake line (`1|1|unix|<socket>|netrpc`) the host dials the socket and opens a
yamux client session on it. As go-plugin's RPC client does, it opens stream 1 for the
control net/rpc (`Control.Ping`, `Control.Quit`, `Dispenser.Dispense`) and two streams for
the plugin's stdout and stderr (read into its log), and runs the broker. Then, as GoatFlow
does: `Dispenser.Dispense("gkplugin")` answers a broker id, which the host dials for the
plugin's `Plugin` service; the host takes the next broker id, accepts it and serves its host
API there (`Plugin.Call` with `HostAPIRequest`), and sends that id in `Init`. A call is
`Plugin.Call(CallRequest{Function, Args, CallToken})`, the token naming the call's context for
the plugin's host calls. The process, its supervision, sandbox, limits and logs are the gRPC
transport's (`grpc.GrpcPlugin`); only the wire differs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import HostCallError, PluginLoadError
from ..host import chain
from ..host.dispatch import HostContext, HostFunctions
from ..host.grants import wire_text
from ..logs import LineWriter
from ..registration import Registration, parse_registration
from ..wire import netrpc
from ..wire.broker import BrokerError, MuxBroker
from ..wire.gobtypes import INTERFACE, UINT32
from ..wire.messages import CallRequest, CallResponse, HostAPIRequest, HostAPIResponse, InitRequest
from ..wire.yamux import Session, Stream, YamuxError
from . import hclog
from .process import ChildProcess, Handshake

logger = logging.getLogger(__name__)

#: The name GoatFlow's plugins are dispensed under.
DISPENSE_NAME = "gkplugin"
#: The host version GoatFlow sends in `Init` (`host_version`).
HOST_VERSION = "0.10.0"


@dataclass
class NetRpcConnection:
    """A started net/rpc plugin: its process, session and `Plugin` client."""

    proc: ChildProcess
    session: Session
    control: netrpc.Client
    plugin: netrpc.Client
    registration: Registration
    socket: str | None = None

    def call(self, function: str, args: bytes, *, timeout: float, token: str) -> bytes:
        """`Plugin.Call`; the plugin's error is netrpc.ServerError's kin: raises
        netrpc.RPCError (CallTimeout, ShutdownError, ServerError) or `CallFailed`."""
        resp = self.plugin.call("Plugin.Call", CallRequest(function, args, token),
                                CallResponse, timeout=timeout)
        if resp.Error:
            raise CallFailed(resp.Error)
        return bytes(resp.Result)

    def stop(self, grace: float, *, polite: bool) -> None:
        """`Plugin.Shutdown`, then go-plugin's `Control.Quit`, then SIGTERM and SIGKILL: all
        within `grace` seconds."""
        deadline = time.monotonic() + grace

        def left() -> float:
            return max(0.05, deadline - time.monotonic())

        if polite and not self.proc.exited.is_set():
            with contextlib.suppress(netrpc.RPCError):
                self.plugin.call("Plugin.Shutdown", None, INTERFACE, timeout=left() / 2)
            with contextlib.suppress(netrpc.RPCError):
                self.control.call("Control.Quit", True, INTERFACE,
                                  timeout=min(0.5, left() / 2))
            self.proc.exited.wait(max(0.0, deadline - time.monotonic()) * 0.8)
        self.proc.stop(grace=max(0.0, deadline - time.monotonic()) if polite else 0.0)
        self._close()

    def drop(self) -> None:
        """After the process died: close the session, kill what is left of its group."""
        self._close()
        self.proc.stop(grace=0.0)

    def _close(self) -> None:
        self.plugin.close()
        self.control.close()
        self.session.close()
        if self.socket is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.socket)


class CallFailed(Exception):
    """`CallResponse.Error`: the plugin's own failure text."""


def _pump(stream: Stream, writer: LineWriter) -> None:
    with contextlib.suppress(YamuxError):
        while chunk := stream.recv(64 * 1024):
            writer.write(chunk)
    writer.flush()


def init_config(name: str, plugin_dir: str, work_dir: str, config: dict[str, object]
                ) -> dict[str, str]:
    """GoatFlow's `Init` config: the manifest's config as strings, the host's keys, and each
    `GOATFLOW_PLUGIN_<NAME>_<KEY>` of the host's environment as `<key>`."""
    out = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    prefix = "GOATFLOW_PLUGIN_" + name.upper().replace("-", "_") + "_"
    for key, value in os.environ.items():
        if key.startswith(prefix) and len(key) > len(prefix):
            out[key[len(prefix):].lower()] = value
    out.update(host_version=HOST_VERSION, plugin_name=name, plugin_dir=plugin_dir,
               work_dir=work_dir)
    return out


class HostAPI:
    """The host API GoatFlow serves a net/rpc plugin on a broker stream: its host
    functions, with the context of the call the token names."""

    def __init__(self, host: HostFunctions, context: Callable[[], HostContext]) -> None:
        self._host = host
        self._context = context

    def call(self, req: HostAPIRequest) -> HostAPIResponse:
        ctx = self._context()  # who is calling is the process we started, not CallerPlugin
        token = req.CallToken
        if token and not chain.live(token, ctx.plugin):
            return HostAPIResponse(Error="unknown or finished call context")
        try:
            with chain.using(chain.lookup(token or None, ctx.plugin)):
                result = self._host.dispatch(ctx, req.Method, bytes(req.Args))
        except HostCallError as exc:
            return HostAPIResponse(Error=wire_text(exc))
        except Exception as exc:  # never let a host bug look like a broken connection
            logger.exception("host API %s from %s failed", req.Method, ctx.plugin)
            return HostAPIResponse(Error=f"{req.Method}: host error: {exc}")
        return HostAPIResponse(Result=result)


def open_netrpc(proc: ChildProcess, hs: Handshake, *, name: str, source_path: str,
                plugin_dir: str, work_dir: str, config: dict[str, object],
                host_api: HostAPI, left: Callable[[], float],
                on_registered: Callable[[Registration], None]) -> NetRpcConnection:
    """Bring a net/rpc plugin whose handshake has arrived to a registered, initialised one."""
    stage = "connect"
    family = socket.AF_UNIX if hs.network == "unix" else socket.AF_INET6 \
        if hs.address.startswith("[") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    session: Session | None = None
    clients: list[netrpc.Client] = []
    try:
        sock.settimeout(left())
        if hs.network == "unix":
            sock.connect(hs.address)
        else:
            host, _, port = hs.address.rpartition(":")
            sock.connect((host.strip("[]"), int(port)))
        session = Session(sock, client=True)
        control = netrpc.Client(session.open_stream(), name=f"{name}-control")
        clients.append(control)
        log = proc.log
        for source, level in (("stdout", logging.INFO), ("stderr", logging.WARNING)):
            writer = LineWriter(log, source, level, parse=hclog.parse)
            threading.Thread(target=_pump, args=(session.open_stream(), writer), daemon=True,
                             name=f"{name}-{source}").start()
        broker = MuxBroker(session)
        broker.start()
        stage = "Dispenser.Dispense"
        ident = control.call("Dispenser.Dispense", DISPENSE_NAME, UINT32, timeout=left())
        if not isinstance(ident, int):
            raise netrpc.RPCError(f"Dispenser.Dispense answered {ident!r}, not a broker id")
        plugin = netrpc.Client(broker.dial(ident), name=f"{name}-plugin")
        clients.append(plugin)
        stage = "Plugin.GKRegister"
        raw = plugin.call("Plugin.GKRegister", None, bytes, timeout=left())
        reg = parse_registration(bytes(raw), expected_name=name, path=source_path)
        on_registered(reg)
        host_id = broker.next_id()
        server = netrpc.Server()
        server.register("Plugin.Call", host_api.call, HostAPIRequest, HostAPIResponse)

        def serve_host() -> None:
            try:
                stream = broker.accept(host_id)
            except BrokerError as exc:
                log.warning(f"the plugin did not connect to the host API: {exc}",
                            source="host")
                return
            server.serve(stream)

        threading.Thread(target=serve_host, daemon=True, name=f"{name}-hostapi").start()
        stage = "Plugin.Init"
        with chain.remote_call():  # its Init's host calls belong to the load
            plugin.call("Plugin.Init",
                        InitRequest(init_config(name, plugin_dir, work_dir, config), host_id),
                        INTERFACE, timeout=left())
        announced = os.path.abspath(hs.address) if hs.network == "unix" else None
        return NetRpcConnection(proc, session, control, plugin, reg, socket=announced)
    except BaseException as exc:
        for c in clients:
            c.close()
        if session is not None:
            session.close()
        else:
            sock.close()
        if isinstance(exc, netrpc.RPCError | BrokerError | YamuxError | OSError):
            raise PluginLoadError(f"start-up (net/rpc) {stage} failed: {exc}"
                                  f"{proc.stderr_tail()}", plugin=name) from None
        raise
