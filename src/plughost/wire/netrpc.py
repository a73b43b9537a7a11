"""Go's net/rpc over one byte stream, with its default gob codec (as go-plugin's netrpc uses it).

Each call is two gob values: the client sends `Request{ServiceMethod, Seq}` then the args; the
server answers `Response{ServiceMethod, Seq, Error}` then the reply. Replies may come in any
order (the server runs calls concurrently) and are matched to calls by Seq. A failed call still
carries a body, an empty struct (Go's `invalidRequest`), which is read and dropped. Each
direction of a stream is one gob stream: type definitions are sent once, so encoding and
writing happen together under one lock, or a definition could reach the wire after its use.

A stream is anything with sendall(bytes), recv(n) (b"" at end) and close(): a socket, a yamux
Stream, or PipeStream over read/write callables.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol, Self, TypeVar, overload

from plughost.errors import PlughostError
from plughost.wire.gob import (
    DEFAULT_MAX_MESSAGE,
    Decoder,
    Encoder,
    GobEOF,
    GobError,
    GoType,
    Uint64,
    go_type,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class Stream(Protocol):
    def sendall(self, data: bytes, /) -> Any: ...
    def recv(self, bufsize: int, /) -> bytes: ...
    def close(self) -> Any: ...


class RPCError(PlughostError):
    """The call did not complete: protocol error, or the connection failed."""


class ServerError(RPCError):
    """The server answered the call with an error (Go's rpc.ServerError); `message` is its text."""


class ShutdownError(RPCError):
    """The connection is shut down (closed by us, or lost); pending and later calls fail."""


class CallTimeout(RPCError, TimeoutError):
    """No reply within the timeout. The call may still run on the server (as in Go, abandoning
    the wait does not cancel it); a late reply is read and dropped."""


@dataclass
class Request:
    ServiceMethod: str = ""
    Seq: Uint64 = 0


@dataclass
class Response:
    ServiceMethod: str = ""
    Seq: Uint64 = 0
    Error: str = ""


@dataclass
class Empty:
    """Go's struct{}: the body of an error response, and go-plugin's Control.Ping/Quit reply."""

    __gob_name__ = ""  # an unnamed Go type at top level is described with no name


class PipeStream:
    """A Stream over callables: read(n) returns up to n bytes (b"" at end); write writes all."""

    def __init__(self, read: Callable[[int], bytes], write: Callable[[bytes], object],
                 close: Callable[[], object] | None = None) -> None:
        self._read, self._write, self._close = read, write, close

    def recv(self, bufsize: int, /) -> bytes:
        return self._read(bufsize)

    def sendall(self, data: bytes, /) -> None:
        self._write(data)

    def close(self) -> None:
        if self._close is not None:
            self._close()


class _Reader:
    """Exact reads over recv(): the gob Decoder asks for a length byte, then a message."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._buf = bytearray()

    def read(self, n: int) -> bytes:
        while len(self._buf) < n:
            data = self._stream.recv(max(65536, n - len(self._buf)))
            if not data:
                break
            self._buf += data
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


def _close(stream: Stream) -> None:
    # A socket's close() does not wake a thread blocked in recv() on it; shutdown() does.
    shutdown = getattr(stream, "shutdown", None)
    if callable(shutdown):
        with suppress(Exception):
            shutdown(socket.SHUT_RDWR)
    with suppress(Exception):
        stream.close()


def _codec(stream: Stream, max_message: int, interfaces: Mapping[str, object] | None
           ) -> tuple[Encoder, Decoder]:
    dec = Decoder(_Reader(stream).read, max_message=max_message)
    for name, t in (interfaces or {}).items():
        dec.register(name, t)
    return Encoder(max_message=max_message), dec


@dataclass
class _Pending:
    future: Future[Any]
    method: str
    reply_type: GoType | None


class Client:
    """The calling side. One reader thread reads replies and completes the matching calls;
    call() and go() may be used from any number of threads at once."""

    def __init__(self, stream: Stream, *, max_message: int = DEFAULT_MAX_MESSAGE,
                 interfaces: Mapping[str, object] | None = None, name: str = "netrpc") -> None:
        self._stream = stream
        self._enc, self._dec = _codec(stream, max_message, interfaces)
        self._send_lock = threading.Lock()  # Go's reqMutex: encode+write of one request
        self._lock = threading.Lock()  # pending, seq and state
        self._pending: dict[int, _Pending] = {}
        self._seq = 0
        self._closing = False
        self._error: RPCError | None = None
        self._thread = threading.Thread(target=self._input, name=f"{name}-client", daemon=True)
        self._thread.start()

    @overload
    def call(self, method: str, args: object, reply_type: type[T], *,
             args_type: object = None, timeout: float | None = None) -> T: ...
    @overload
    def call(self, method: str, args: object, reply_type: object = None, *,
             args_type: object = None, timeout: float | None = None) -> object: ...

    def call(self, method: str, args: object, reply_type: object = None, *,
             args_type: object = None, timeout: float | None = None) -> object:
        """Call "Service.Method" and wait for the reply (decoded as `reply_type`; with None, as
        plain values). Raises ServerError, CallTimeout, ShutdownError, RPCError or GobError."""
        seq, future = self._send(method, args, reply_type, args_type)
        try:
            return future.result(timeout)
        except FutureTimeout:
            with self._lock:
                self._pending.pop(seq, None)
            raise CallTimeout(f"{method}: no reply within {timeout}s") from None

    def go(self, method: str, args: object, reply_type: object = None, *,
           args_type: object = None) -> Future[Any]:
        """Start a call; the future gets the reply or the error."""
        return self._send(method, args, reply_type, args_type)[1]

    def _send(self, method: str, args: object, reply_type: object, args_type: object
              ) -> tuple[int, Future[Any]]:
        future: Future[Any] = Future()
        rt = None if reply_type is None else go_type(reply_type)
        with self._send_lock:
            with self._lock:
                if self._error is not None or self._closing:
                    raise self._error or ShutdownError("connection is shut down")
                seq = self._seq
                self._seq += 1
                self._pending[seq] = _Pending(future, method, rt)
            try:
                data = self._enc.encode_all([(Request(method, seq), None), (args, args_type)])
            except GobError:
                with self._lock:
                    self._pending.pop(seq, None)
                raise
            try:
                self._stream.sendall(data)
            except Exception as e:
                # Part of the request may be on the wire: the stream is out of step for good.
                self._fail(ShutdownError(f"{method}: writing the request failed: {e}"))
                _close(self._stream)
        return seq, future

    def _input(self) -> None:
        err: RPCError
        p: _Pending | None = None  # the call whose reply is being read, if any
        try:
            while True:
                p = None
                resp = self._dec.decode(Response)
                with self._lock:
                    p = self._pending.pop(resp.Seq, None)
                if p is None or resp.Error:
                    if p is not None:
                        _settle(p, error=ServerError(resp.Error))
                    self._dec.decode(None)  # abandoned call, or error body: read and drop
                    continue
                try:
                    reply = self._dec.decode(p.reply_type)
                except GobError as e:
                    _settle(p, error=RPCError(f"{p.method}: reading the reply: {e}"))
                    if self._dec.broken is not None:
                        raise
                    continue  # a type mismatch: the stream is still in step
                _settle(p, reply)
        except GobEOF:
            err = ShutdownError("connection is shut down" if self._closing
                                else "connection closed by the server (unexpected EOF)")
        except GobError as e:
            err = RPCError(f"net/rpc protocol error: {e}")
        except Exception as e:  # the stream itself failed (reset, closed under us, OSError)
            err = ShutdownError("connection is shut down" if self._closing
                                else f"connection lost: {e}")
        if not self._closing:
            log.debug("net/rpc client stops reading: %s", err)
        if p is not None:
            _settle(p, error=err)  # no-op if it was settled already
        self._fail(err)

    def _fail(self, err: RPCError) -> None:
        with self._lock:
            if self._error is None:
                self._error = err
            pending, self._pending = list(self._pending.values()), {}
        for p in pending:
            _settle(p, error=err)

    def close(self) -> None:
        """Close the stream; pending calls fail with ShutdownError."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        _close(self._stream)
        if threading.current_thread() is not self._thread:
            self._thread.join(5)
        self._fail(ShutdownError("connection is shut down"))

    @property
    def error(self) -> RPCError | None:
        """Why the client stopped, once it has."""
        return self._error

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _settle(p: _Pending, value: object = None, error: BaseException | None = None) -> None:
    with suppress(Exception):  # the caller may have cancelled the future
        if error is not None:
            p.future.set_exception(error)
        else:
            p.future.set_result(value)


Handler = Callable[[Any], object]


@dataclass(frozen=True)
class _Method:
    handler: Handler
    args_type: GoType
    reply_type: GoType | None


class Server:
    """The serving side: handlers registered by "Service.Method"; serve() runs one stream.
    A handler gets the decoded args and returns the reply; an exception it raises becomes
    Response.Error (its text). Calls run concurrently, each in its own thread as in Go, at
    most `max_inflight` at once (reading waits when that many are running)."""

    def __init__(self, *, max_message: int = DEFAULT_MAX_MESSAGE, max_inflight: int = 64,
                 interfaces: Mapping[str, object] | None = None) -> None:
        self._methods: dict[str, _Method] = {}
        self._max_message, self._max_inflight = max_message, max_inflight
        self._interfaces = dict(interfaces or {})

    def register(self, service_method: str, handler: Handler, args_type: object,
                 reply_type: object = None) -> None:
        """`reply_type` None: inferred from the reply (fine for dataclasses, str, bytes...)."""
        if "." not in service_method:
            raise ValueError(f"{service_method!r} is not Service.Method")
        self._methods[service_method] = _Method(
            handler, go_type(args_type), None if reply_type is None else go_type(reply_type))

    def _lookup(self, service_method: str) -> _Method | str:
        # Go's messages, since a Go client may show them to a user.
        service, dot, _ = service_method.rpartition(".")
        if not dot:
            return f"rpc: service/method request ill-formed: {service_method}"
        m = self._methods.get(service_method)
        if m is not None:
            return m
        if not any(k.rpartition(".")[0] == service for k in self._methods):
            return f"rpc: can't find service {service_method}"
        return f"rpc: can't find method {service_method}"

    def serve(self, stream: Stream) -> None:
        """Serve until the client hangs up or breaks the protocol; then wait for running calls
        and close the stream."""
        enc, dec = _codec(stream, self._max_message, self._interfaces)
        send_lock = threading.Lock()
        slots = threading.BoundedSemaphore(self._max_inflight)
        workers: list[threading.Thread] = []

        def respond(req: Request, reply: object, reply_type: GoType | None, error: str) -> None:
            head = Response(req.ServiceMethod, req.Seq, error)
            with send_lock:
                try:
                    data = enc.encode_all([(head, None), (Empty(), None)] if error else
                                          [(head, None), (reply, reply_type)])
                except GobError as e:  # Go would drop the connection; telling the caller is kinder
                    head.Error = f"rpc: cannot encode the reply: {e}"
                    data = enc.encode_all([(head, None), (Empty(), None)])
                try:
                    stream.sendall(data)
                except Exception as e:
                    log.debug("net/rpc server: writing a response failed: %s", e)
                    _close(stream)  # out of step: stop reading too

        def run(req: Request, m: _Method, args: object) -> None:
            try:
                try:
                    reply, error = m.handler(args), ""
                except Exception as e:
                    reply, error = None, str(e) or type(e).__name__
                    log.debug("net/rpc %s failed: %s", req.ServiceMethod, error)
                respond(req, reply, m.reply_type, error)
            finally:
                slots.release()

        try:
            while True:
                try:
                    req = dec.decode(Request)
                except GobEOF:
                    break
                m = self._lookup(req.ServiceMethod)
                try:
                    args = dec.decode(None if isinstance(m, str) else m.args_type)
                except GobEOF:
                    break  # hung up between a request's header and its body
                except GobError as e:  # a mismatched body: say so, as Go does
                    respond(req, None, None, str(m) if isinstance(m, str) else
                            f"rpc: cannot decode the args: {e}")
                    if dec.broken is not None:
                        break
                    continue
                if isinstance(m, str):
                    respond(req, None, None, m)
                    continue
                slots.acquire()
                t = threading.Thread(target=run, args=(req, m, args), daemon=True,
                                     name=f"netrpc-{req.ServiceMethod}")
                workers = [w for w in workers if w.is_alive()] + [t]
                t.start()
        except GobError as e:
            log.warning("net/rpc server: dropping the connection: %s", e)
        except Exception as e:  # the stream failed
            log.debug("net/rpc server: connection lost: %s", e)
        finally:
            for w in workers:
                w.join()
            _close(stream)
