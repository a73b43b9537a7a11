"""The `Host` gRPC service: one server per out-of-process plugin, on a private socket.

Identity comes from the socket, not from the request: each plugin gets its own server on a
socket inside its private 0700 directory, so the host knows which plugin calls. Requests go
through the same `HostFunctions.dispatch` as wasm's `gk.host_call`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from concurrent import futures

import grpc

from ..errors import HostCallError
from ..logs import GK_LEVELS
from ..proto import CHANNEL_OPTIONS, HOST_TOKEN_METADATA
from ..proto.plughost.v1 import plugin_pb2 as pb
from ..proto.plughost.v1 import plugin_pb2_grpc as pb_grpc
from . import chain
from .dispatch import HostContext, HostFunctions
from .grants import wire_text

logger = logging.getLogger(__name__)


class _HostServicer(pb_grpc.HostServicer):
    def __init__(self, host: HostFunctions, context: Callable[[], HostContext],
                 token: Callable[[], str]) -> None:
        self._host = host
        self._context = context  # read per request: it changes when the plugin registers
        self._token = token  # read per request too: each start of the plugin gets a new one

    def _check(self, context: grpc.ServicerContext) -> None:
        # Same-user processes may reach this socket; only the process we started has the
        # token (read once from a pipe, never in an environment), so nobody else speaks
        # as this plugin, and a leftover of an earlier start cannot either.
        sent = dict(context.invocation_metadata()).get(HOST_TOKEN_METADATA, "")
        expected = self._token()  # "" while no process has been started: refuse all
        if not expected or not hmac.compare_digest(str(sent).encode(), expected.encode()):
            self._context().log.warning("refused a host call without this plugin's token",
                                        source="host")
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          "missing or wrong plughost-host-token")

    def HostCall(self, request: pb.HostCallRequest, context: grpc.ServicerContext
                 ) -> pb.HostCallResponse:
        self._check(context)
        ctx = self._context()
        call_id = dict(context.invocation_metadata()).get(chain.CALL_ID_METADATA)
        try:
            with chain.using(chain.lookup(call_id if isinstance(call_id, str) else None,
                                          ctx.plugin)):  # its plugins and its deadline
                result = self._host.dispatch(ctx, request.function, request.args)
        except HostCallError as exc:
            return pb.HostCallResponse(error=wire_text(exc))  # GoatFlow's words
        except Exception as exc:  # never let a host bug look like a network failure
            logger.exception("HostCall %s from %s failed", request.function, ctx.plugin)
            return pb.HostCallResponse(error=f"{request.function}: host error: {exc}")
        return pb.HostCallResponse(result=result)

    def Log(self, request: pb.LogRequest, context: grpc.ServicerContext) -> pb.Empty:
        self._check(context)
        self._context().log.log(GK_LEVELS.get(request.level, logging.ERROR), request.message,
                                source="plugin")
        return pb.Empty()


class HostServer:
    """A started Host service bound to `unix:<socket_path>`."""

    def __init__(self, socket_path: str, host: HostFunctions,
                 context: Callable[[], HostContext], token: Callable[[], str]) -> None:
        self.address = f"unix://{socket_path}"
        self._server = grpc.server(futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="plughost-hostsvc"), options=CHANNEL_OPTIONS)
        pb_grpc.add_HostServicer_to_server(_HostServicer(host, context, token), self._server)
        self._server.add_insecure_port(f"unix:{socket_path}")
        self._server.start()

    def stop(self, grace: float = 1.0) -> None:
        self._server.stop(grace).wait(grace + 1.0)
