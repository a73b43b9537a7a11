"""The plugin's side of the `Host` service: host functions and logging."""

from __future__ import annotations

import base64
import json
import os
import threading
from typing import Any

import grpc

from ..proto import CALL_ID_METADATA, CHANNEL_OPTIONS, HOST_TOKEN_METADATA
from ..proto.plughost.v1 import plugin_pb2 as pb
from ..proto.plughost.v1 import plugin_pb2_grpc as pb_grpc

_LEVELS = {"debug": 0, "info": 1, "warn": 2, "warning": 2, "error": 3}

# The host's id of the call this thread is serving; forwarded on host calls so that the
# host can check plugin_call chains (depth, cycles) across processes.
_current_call = threading.local()


_token_lock = threading.Lock()
_token: str | None = None


def host_token() -> str:
    """This start's host token, read once from the pipe named by PLUGHOST_HOST_TOKEN_FD.

    The host hands the token over a pipe, not the environment (which other processes of
    the same user can read), and the pipe is closed as soon as it is read. `serve()` reads
    it before the plugin announces itself; "" when not started by a host."""
    global _token
    with _token_lock:
        if _token is None:
            fd = os.environ.pop("PLUGHOST_HOST_TOKEN_FD", "")
            data = b""
            if fd.isdigit():
                try:
                    while len(data) < 1024:
                        chunk = os.read(int(fd), 1024)
                        if not chunk:
                            break
                        data += chunk
                    os.close(int(fd))
                except OSError:
                    data = b""
            _token = data.decode("ascii", "replace").strip()
        return _token


class HostError(Exception):
    """The host refused or failed a host call (the message says why)."""


class HostClient:
    """Calls the host functions (docs/plugin-authors.md). Connects on first use to
    PLUGHOST_HOST_ADDR."""

    def __init__(self, address: str | None = None, timeout: float = 30.0) -> None:
        self._address = address
        self._timeout = timeout
        self._stub: pb_grpc.HostStub | None = None
        self._lock = threading.Lock()

    def _host(self) -> pb_grpc.HostStub:
        if self._stub is None:
            with self._lock:
                if self._stub is None:
                    addr = self._address or os.environ.get("PLUGHOST_HOST_ADDR")
                    if not addr:
                        raise HostError("PLUGHOST_HOST_ADDR is not set: not started by a host")
                    target = addr.replace("unix://", "unix:", 1)
                    self._stub = pb_grpc.HostStub(grpc.insecure_channel(target,
                                                                        options=CHANNEL_OPTIONS))
        return self._stub

    @staticmethod
    def _metadata() -> tuple[tuple[str, str], ...]:
        return ((HOST_TOKEN_METADATA, host_token()),)

    def call(self, function: str, args: Any = None) -> Any:
        """Run host function `function` with JSON-able `args`; return its decoded result."""
        payload = json.dumps({} if args is None else args).encode()
        try:
            call_id = getattr(_current_call, "id", None)
            metadata = self._metadata()
            if call_id:
                metadata += ((CALL_ID_METADATA, call_id),)
            resp = self._host().HostCall(pb.HostCallRequest(function=function, args=payload),
                                         timeout=self._timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise HostError(f"{function}: host unreachable: {exc.code().name}") from None
        if resp.error:
            raise HostError(resp.error)
        return json.loads(resp.result) if resp.result else None

    def log(self, level: str | int, message: str) -> None:
        """Write to this plugin's log on the host (no permission needed)."""
        lvl = level if isinstance(level, int) else _LEVELS.get(level.lower(), 3)
        try:
            self._host().Log(pb.LogRequest(level=lvl, message=message), timeout=self._timeout,
                             metadata=self._metadata())
        except grpc.RpcError as exc:
            raise HostError(f"log: host unreachable: {exc.code().name}") from None

    # Typed helpers over `call`, one per built-in host function whose shape needs
    # unwrapping (GoatFlow's shapes: base64 bytes, {"value": ...} wrappers). `call` is
    # always there for the rest and for an application's own functions.

    def config_get(self, key: str) -> Any:
        """`config[key]` from the manifest, or the host's `app.*` keys (needs a `config`
        grant covering the key)."""
        return self.call("config_get", {"key": key})["value"]

    def cache_get(self, key: str) -> bytes | None:
        """The cached bytes, or None on a miss."""
        got = self.call("cache_get", {"key": key})
        return base64.b64decode(got["value"]) if got["found"] else None

    def cache_set(self, key: str, value: bytes, ttl: float = 0) -> None:
        self.call("cache_set", {"key": key, "value": base64.b64encode(value).decode(),
                                "ttl": ttl})

    def db_query(self, query: str, *args: Any) -> list[dict[str, Any]]:
        return self.call("db_query", {"query": query, "args": list(args)}) or []

    def db_exec(self, query: str, *args: Any) -> int:
        """Rows affected."""
        return int(self.call("db_exec", {"query": query, "args": list(args)})["affected"])

    def http_request(self, method: str, url: str, headers: dict[str, str] | None = None,
                     body: bytes | None = None) -> tuple[int, bytes]:
        """`(status, body)`."""
        got = self.call("http_request", {
            "method": method, "url": url, "headers": headers or {},
            "body": None if body is None else base64.b64encode(body).decode()})
        return int(got["status"]), base64.b64decode(got["body"] or "")

    def translate(self, key: str, *args: Any) -> str:
        return str(self.call("translate", {"key": key, "args": list(args)})["value"])

    def publish_event(self, channel: str, event_type: str, data: str) -> None:
        self.call("publish_event", {"channel": channel, "event_type": event_type,
                                    "data": data})


#: The host of the running plugin.
host = HostClient()
