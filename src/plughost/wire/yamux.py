"""yamux, the stream multiplexer under hashicorp/go-plugin's net/rpc protocol.

go-plugin runs net/rpc over yamux streams on the plugin's one unix socket, so the host
needs yamux, and no maintained Python implementation exists. This one follows the
protocol as hashicorp/yamux (Go) speaks it: 12-byte big-endian frame headers (version 0;
types Data, WindowUpdate, Ping, GoAway; flags SYN, ACK, FIN, RST), 256 KiB initial
per-stream windows, client streams odd and server streams even.

Threads, not asyncio, because the runtime around it is threaded: each Session owns one
reader thread that parses frames and hands data to Streams; writers (any thread) put whole
frames on the socket under one write lock. Nothing is buffered beyond the windows: a peer
may hold at most `window` unread bytes per stream in our memory, and our senders block
until the peer grants credit. A peer that breaks the protocol gets the session closed with
a ProtocolError subclass, and every thread blocked on the session wakes with that error.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import struct
import threading
import time
from collections import deque
from contextlib import suppress
from typing import NoReturn, Self

log = logging.getLogger(__name__)

VERSION = 0
TYPE_DATA, TYPE_WINDOW_UPDATE, TYPE_PING, TYPE_GO_AWAY = 0, 1, 2, 3
FLAG_SYN, FLAG_ACK, FLAG_FIN, FLAG_RST = 1, 2, 4, 8
GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR, GO_AWAY_INTERNAL_ERROR = 0, 1, 2
INITIAL_WINDOW = 256 * 1024  # fixed by the protocol: both sides assume it for a new stream
HEADER = struct.Struct(">BBHII")  # version, type, flags, stream id, length
MAX_CHUNK = 64 * 1024  # data frames are cut this small so that streams share the socket fairly
_U32 = 0xFFFFFFFF
_GOAWAY_WAIT = 1.0  # close() waits this long for the write lock to say GoAway, then skips it


class YamuxError(Exception):
    """Base of every error this module raises."""


class SessionClosedError(YamuxError):
    """The session is closed: by close(), or because the connection ended."""


class ConnectionLostError(SessionClosedError):
    """The connection failed: EOF from the peer, a socket error or a write timeout."""


class RemoteGoAwayError(SessionClosedError):
    """The peer sent GoAway: no new streams (code 0), or it closed on an error (code > 0)."""

    def __init__(self, message: str, code: int = GO_AWAY_NORMAL) -> None:
        super().__init__(message)
        self.code = code


class ProtocolError(YamuxError):
    """The peer broke the protocol; the session has been closed."""


class InvalidFrameError(ProtocolError):
    """A header that makes no sense: bad version, unknown type, wrong stream id, ..."""


class FrameTooLargeError(ProtocolError):
    """A data frame longer than any window we could ever have granted."""


class WindowExceededError(ProtocolError):
    """The peer sent more data on a stream than the credit we gave it."""


class StreamLimitError(ProtocolError):
    """Too many live streams (opened by the peer: the session is closed; by us: it is not)."""


class StreamResetError(YamuxError):
    """The stream was reset (RST) by either side."""


class StreamClosedError(YamuxError):
    """The stream was closed locally: no more writes (close_write) or reads (close)."""


class StreamEOFError(YamuxError, EOFError):
    """read_exactly() met the end of the stream; `partial` holds what did arrive."""

    def __init__(self, message: str, partial: bytes = b"") -> None:
        super().__init__(message)
        self.partial = partial


class YamuxTimeoutError(YamuxError, TimeoutError):
    """A read, write, accept or ping deadline passed."""


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _wait(cond: threading.Condition, deadline: float | None, what: str) -> None:
    """One wait on `cond` (held by the caller); the caller re-checks its condition."""
    if deadline is None:
        cond.wait()
        return
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise YamuxTimeoutError(f"{what} timed out")
    cond.wait(remaining)


class Stream:
    """One bidirectional byte stream of a Session (a net.Conn on the Go side).

    One reader and one writer thread at a time. State lives under the session's lock;
    the stream's condition is signalled whenever data, credit or state changes."""

    def __init__(self, session: Session, stream_id: int, inbound: bool) -> None:
        self._session = session
        self.stream_id = stream_id
        self.inbound = inbound
        self._cond = threading.Condition(session._lock)
        self._send_lock = threading.Lock()  # whole sendall()s, and FIN after the last chunk
        self._buf = bytearray()
        self._recv_window = INITIAL_WINDOW  # credit the peer has left on this stream
        self._send_window = INITIAL_WINDOW  # credit we have left
        self._local_closed = False  # FIN sent or about to be: no more writes
        self._read_closed = False  # close(): incoming data is dropped (and credited back)
        self._remote_closed = False  # FIN received: EOF once the buffer is drained
        self._reset = False
        self._timeout: float | None = None

    def settimeout(self, timeout: float | None) -> None:
        """Deadline, in seconds, for each later recv/read_exactly/sendall (None: block)."""
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read: never more than the session's window."""
        with self._cond:
            return len(self._buf)

    @property
    def send_window(self) -> int:
        """Bytes we may still send before the peer grants more credit."""
        with self._cond:
            return self._send_window

    def recv(self, bufsize: int) -> bytes:
        """Up to `bufsize` bytes; b"" once the peer has closed its side (FIN)."""
        return self._recv(bufsize, _deadline(self._timeout))

    def read_exactly(self, n: int) -> bytes:
        """Exactly n bytes, or StreamEOFError. After a timeout the stream is out of step."""
        deadline = _deadline(self._timeout)
        parts: list[bytes] = []
        got = 0
        while got < n:
            chunk = self._recv(n - got, deadline)
            if not chunk:
                raise StreamEOFError(f"stream {self.stream_id}: EOF after {got} of {n} bytes",
                                     b"".join(parts))
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def _recv(self, bufsize: int, deadline: float | None) -> bytes:
        s = self._session
        with self._cond:
            while True:
                if self._read_closed:
                    raise StreamClosedError(f"stream {self.stream_id} is closed")
                if self._reset:
                    raise StreamResetError(f"stream {self.stream_id} was reset")
                if self._buf or bufsize <= 0:
                    break
                if self._remote_closed:
                    return b""
                s._check()
                _wait(self._cond, deadline, f"read on stream {self.stream_id}")
            data = bytes(self._buf[:bufsize])
            del self._buf[:bufsize]
            credit = self._credit(force=False)
        if credit:
            # The data is good even if the session just died: the next call reports that.
            with suppress(YamuxError):
                s._send_frame(TYPE_WINDOW_UPDATE, 0, self.stream_id, credit)
        return data

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of `data`, blocking while the peer's window is exhausted. On an error
        or timeout a prefix may have been sent: reset() the stream then."""
        view = memoryview(data).cast("B")
        deadline = _deadline(self._timeout)
        s = self._session
        wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._send_lock.acquire(timeout=wait):
            raise YamuxTimeoutError(f"write on stream {self.stream_id} timed out")
        try:
            while view:
                with self._cond:
                    while True:
                        if self._local_closed:
                            raise StreamClosedError(f"stream {self.stream_id} is closed")
                        if self._reset:
                            raise StreamResetError(f"stream {self.stream_id} was reset")
                        s._check()
                        if self._send_window > 0:
                            break
                        _wait(self._cond, deadline, f"write on stream {self.stream_id}")
                    n = min(len(view), self._send_window, MAX_CHUNK)
                    self._send_window -= n
                s._send_frame(TYPE_DATA, 0, self.stream_id, n, view[:n])
                view = view[n:]
        finally:
            self._send_lock.release()

    def close_write(self) -> None:
        """Half-close: send FIN. The peer reads EOF; we may still read until its FIN."""
        self._shutdown(read=False)

    def close(self) -> None:
        """Send FIN (if not yet sent) and stop reading: unread and later data is dropped,
        and credited back so that a peer still writing is not left blocked."""
        self._shutdown(read=True)

    def _shutdown(self, read: bool) -> None:
        with self._cond:
            if read:
                self._read_closed = True
                self._buf.clear()
            fin = not (self._local_closed or self._reset or self._session._error)
            self._local_closed = True
            self._cond.notify_all()  # a sendall() waiting for credit must give up first
        if fin or read:
            with self._send_lock:  # the FIN must follow the chunk a sendall() may be writing
                with self._cond:
                    credit = self._credit(force=False)  # for the data just dropped
                if fin or credit:
                    with suppress(YamuxError):
                        self._session._send_frame(TYPE_WINDOW_UPDATE, FLAG_FIN if fin else 0,
                                                  self.stream_id, credit)
        with self._cond:
            self._maybe_forget()

    def reset(self) -> None:
        """Abort the stream (RST): both sides' pending reads and writes fail."""
        with self._cond:
            if self._reset:
                return
            rst = not (self._session._error or (self._local_closed and self._remote_closed))
            self._reset = True
            self._buf.clear()
            self._maybe_forget()
            self._cond.notify_all()
        if rst:
            with suppress(YamuxError):
                self._session._send_frame(TYPE_WINDOW_UPDATE, FLAG_RST, self.stream_id, 0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _credit(self, force: bool) -> int:
        """Window to give back (lock held). Go's rule: top the peer's credit up to
        `window - unread` once that adds at least half a window, so updates stay rare and
        unread + credit never exceeds the window. `force` for SYN/ACK frames."""
        if self._remote_closed or self._reset:
            return 0
        window = self._session._window
        delta = window - len(self._buf) - self._recv_window
        if delta <= 0 or (delta < window // 2 and not force):
            return 0
        self._recv_window += delta
        return delta

    def _maybe_forget(self) -> None:
        if self._reset or (self._local_closed and self._remote_closed):
            self._session._forget(self)


class Session:
    """A yamux session over a connected stream socket, which it owns from now on (it
    sets the socket's timeout to `write_timeout` and closes it when the session ends).

    `client=True` is the side that opens odd stream ids (the go-plugin host);
    `max_streams` caps live streams per direction; `window` (>= 256 KiB) is the receive
    window per stream. Call close() when done: the reader thread runs until then, or until
    the connection fails."""

    def __init__(self, sock: socket.socket, *, client: bool, max_streams: int = 256,
                 window: int = INITIAL_WINDOW, write_timeout: float = 10.0) -> None:
        if not INITIAL_WINDOW <= window <= _U32:
            raise ValueError(f"window must be between {INITIAL_WINDOW} and {_U32}")
        self._sock = sock
        self._client = client
        self._max_streams = max_streams
        self._window = window
        # Lock order: Stream._send_lock -> _wlock -> _lock, _fd_lock. Never take _wlock
        # while holding _lock: a write may block on the socket, state changes must not.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # accept backlog and ping answers
        self._wlock = threading.Lock()  # one whole frame at a time on the socket
        self._fd_lock = threading.Lock()  # shutdown() must never meet close()
        self._streams: dict[int, Stream] = {}
        self._live = {True: 0, False: 0}  # live streams by `inbound`
        self._backlog: deque[Stream] = deque()
        self._next_id = 1 if client else 2
        self._pings: dict[int, bool] = {}
        self._next_ping = 0
        self._remote_goaway = False
        self._error: YamuxError | None = None
        self._sock_closed = False
        self._peak_buffered = 0
        self._rbuf = bytearray()
        # The timeout bounds writes to a peer that stopped reading (Go's
        # ConnectionWriteTimeout); the reader just retries when it fires on an idle socket.
        sock.settimeout(write_timeout)
        role = "client" if client else "server"
        self._reader = threading.Thread(target=self._run, daemon=True,
                                        name=f"yamux-{role}-fd{sock.fileno()}")
        self._reader.start()

    @property
    def closed(self) -> bool:
        return self._error is not None

    @property
    def error(self) -> YamuxError | None:
        """Why the session ended (SessionClosedError after a plain close())."""
        return self._error

    @property
    def peak_buffered(self) -> int:
        """The most unread bytes any one stream has held: bounded by the window."""
        return self._peak_buffered

    @property
    def num_streams(self) -> int:
        with self._lock:
            return len(self._streams)

    def open_stream(self) -> Stream:
        """Open a stream; the SYN goes out at once, the peer need not accept it first."""
        with self._lock:
            self._check()
            if self._remote_goaway:
                raise RemoteGoAwayError("the peer sent GoAway: it accepts no new streams")
            if self._live[False] >= self._max_streams:
                raise StreamLimitError(f"{self._max_streams} streams already open")
            if self._next_id > _U32:
                raise YamuxError("stream ids exhausted")
            stream = Stream(self, self._next_id, inbound=False)
            self._next_id += 2
            self._streams[stream.stream_id] = stream
            self._live[False] += 1
            credit = stream._credit(force=True)
        self._send_frame(TYPE_WINDOW_UPDATE, FLAG_SYN, stream.stream_id, credit)
        return stream

    def accept_stream(self, timeout: float | None = None) -> Stream:
        """The next stream the peer opened; YamuxTimeoutError after `timeout` seconds."""
        deadline = _deadline(timeout)
        with self._lock:
            while True:
                self._check()
                if self._backlog:
                    break
                _wait(self._cond, deadline, "accept")
            stream = self._backlog.popleft()
            credit = stream._credit(force=True)
            ack = not stream._reset
        if ack:
            self._send_frame(TYPE_WINDOW_UPDATE, FLAG_ACK, stream.stream_id, credit)
        return stream

    def ping(self, timeout: float = 10.0) -> float:
        """Round-trip time to the peer, in seconds."""
        with self._lock:
            self._check()
            ping_id = self._next_ping
            self._next_ping = (ping_id + 1) & _U32
            self._pings[ping_id] = False
        start = time.monotonic()
        deadline = start + timeout
        try:
            self._send_frame(TYPE_PING, FLAG_SYN, 0, ping_id)
            with self._lock:
                while not self._pings[ping_id]:
                    self._check()
                    _wait(self._cond, deadline, "ping")
        finally:
            with self._lock:
                self._pings.pop(ping_id, None)
        return time.monotonic() - start

    def close(self) -> None:
        """Say GoAway, close the connection and wake every blocked caller. Idempotent."""
        self._goaway(GO_AWAY_NORMAL)
        self._fail(SessionClosedError("session closed"))
        if threading.current_thread() is not self._reader:
            self._reader.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------

    def _check(self) -> None:
        if self._error is not None:
            self._raise()

    def _raise(self) -> NoReturn:
        # A copy per raise: one exception object raised in many threads would pile up
        # their tracebacks.
        assert self._error is not None
        raise copy.copy(self._error)

    def _forget(self, stream: Stream) -> None:
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
            self._live[stream.inbound] -= 1

    def _send_frame(self, ftype: int, flags: int, stream_id: int, length: int,
                    payload: bytes | memoryview = b"") -> None:
        frame = HEADER.pack(VERSION, ftype, flags, stream_id, length) + payload
        with self._wlock:
            if self._error is not None or self._sock_closed:
                self._raise()
            try:
                self._sock.sendall(frame)
            except TimeoutError:
                self._fail(ConnectionLostError("write timed out: the peer is not reading"))
                self._raise()
            except OSError as exc:
                self._fail(ConnectionLostError(f"write failed: {exc}"))
                self._raise()

    def _goaway(self, code: int) -> None:
        """Best effort and never blocking: the session is ending, and a peer that does not
        read (or a writer stuck on it) must not hold that up."""
        if not self._wlock.acquire(timeout=_GOAWAY_WAIT):
            return
        try:
            if self._error is None:  # else a failed write may have left half a frame
                # os.write, not sock.send: with a timeout set, the socket's fd is
                # non-blocking, but sock.send would still wait up to write_timeout.
                with suppress(OSError):
                    os.write(self._sock.fileno(), HEADER.pack(VERSION, TYPE_GO_AWAY, 0, 0, code))
        finally:
            self._wlock.release()

    def _fail(self, err: YamuxError) -> None:
        """End the session with `err` (the first one wins) and wake every waiter."""
        with self._lock:
            if self._error is not None:
                return
            self._error = err
            for stream in self._streams.values():
                stream._cond.notify_all()
            self._cond.notify_all()
        if type(err) is not SessionClosedError:  # a plain close() is not news
            log.info("yamux session ended: %s", err)
        # shutdown() wakes the reader and any writer blocked in the kernel; the reader
        # thread closes the socket once no writer can be using it.
        with self._fd_lock:
            if not self._sock_closed:
                with suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def _run(self) -> None:
        err: YamuxError
        try:
            while True:
                self._dispatch(self._read_exact(HEADER.size))
        except YamuxError as exc:
            err = exc
        except OSError as exc:
            err = ConnectionLostError(f"read failed: {exc}")
        except Exception as exc:  # a bug here must not leave every caller hanging
            log.exception("yamux reader failed")
            err = YamuxError(f"internal error: {exc!r}")
        if self._error is None and not isinstance(err, SessionClosedError):
            log.warning("yamux: closing session: %s", err)
            self._goaway(GO_AWAY_PROTOCOL_ERROR if isinstance(err, ProtocolError)
                         else GO_AWAY_INTERNAL_ERROR)
        self._fail(err)
        with self._wlock, self._fd_lock:
            self._sock.close()
            self._sock_closed = True

    def _read_exact(self, n: int) -> bytes:
        buf = self._rbuf
        while len(buf) < n:
            try:
                chunk = self._sock.recv(max(n - len(buf), MAX_CHUNK))
            except TimeoutError:  # idle: only writes are bounded
                self._check()
                continue
            if not chunk:
                self._check()
                where = " in the middle of a frame" if buf or n != HEADER.size else ""
                raise ConnectionLostError(f"connection closed by the peer{where}")
            buf += chunk
        data = bytes(buf[:n])
        del buf[:n]
        return data

    def _dispatch(self, header: bytes) -> None:
        version, ftype, flags, stream_id, length = HEADER.unpack(header)
        if version != VERSION:
            raise InvalidFrameError(f"unsupported protocol version {version} "
                                    f"(header {header.hex()})")
        if ftype in (TYPE_DATA, TYPE_WINDOW_UPDATE):
            self._stream_frame(ftype, flags, stream_id, length)
        elif ftype == TYPE_PING:
            if flags & FLAG_SYN:  # the length field is an opaque ping id: echo it
                self._send_frame(TYPE_PING, FLAG_ACK, 0, length)
            elif flags & FLAG_ACK:
                with self._lock:
                    if length in self._pings:
                        self._pings[length] = True
                        self._cond.notify_all()
        elif ftype == TYPE_GO_AWAY:
            if length != GO_AWAY_NORMAL:
                raise RemoteGoAwayError(f"the peer closed the session (GoAway code {length})",
                                        length)
            with self._lock:
                self._remote_goaway = True
        else:
            raise InvalidFrameError(f"unknown frame type {ftype} (header {header.hex()})")

    def _stream_frame(self, ftype: int, flags: int, stream_id: int, length: int) -> None:
        if stream_id == 0:
            raise InvalidFrameError("data or window update on stream 0")
        payload = b""
        if ftype == TYPE_DATA:
            # Checked before reading: nothing legitimate is longer than our window.
            if length > self._window:
                raise FrameTooLargeError(f"data frame of {length} bytes on stream {stream_id}"
                                         f" exceeds the {self._window}-byte window")
            payload = self._read_exact(length)
        credit = 0
        with self._lock:
            stream = self._streams.get(stream_id)
            if flags & FLAG_SYN:
                if stream is not None:
                    raise InvalidFrameError(f"duplicate SYN for stream {stream_id}")
                if (stream_id % 2 == 1) == self._client:
                    raise InvalidFrameError(f"the peer opened stream {stream_id}, an id of "
                                            "our own parity")
                if self._live[True] >= self._max_streams:
                    raise StreamLimitError(f"the peer opened more than {self._max_streams} "
                                           "streams")
                stream = Stream(self, stream_id, inbound=True)
                self._streams[stream_id] = stream
                self._live[True] += 1
                self._backlog.append(stream)
                self._cond.notify_all()
            if stream is None:  # closed or reset here already: late frames are harmless
                log.debug("yamux: dropping frame type %d for unknown stream %d", ftype,
                          stream_id)
                return
            if ftype == TYPE_WINDOW_UPDATE:
                if stream._send_window + length > _U32:
                    raise InvalidFrameError(f"window update overflows stream {stream_id}")
                stream._send_window += length
            elif length and (stream._remote_closed or stream._reset):
                log.warning("yamux: dropping data after FIN/RST on stream %d", stream_id)
            elif length:
                if length > stream._recv_window:
                    raise WindowExceededError(f"{length} bytes on stream {stream_id} with "
                                              f"{stream._recv_window} bytes of window left")
                stream._recv_window -= length
                if stream._read_closed:
                    credit = stream._credit(force=False)
                else:
                    stream._buf += payload
                    self._peak_buffered = max(self._peak_buffered, len(stream._buf))
            if flags & FLAG_FIN:
                stream._remote_closed = True
            if flags & FLAG_RST:
                stream._reset = True
                stream._buf.clear()
            stream._maybe_forget()
            stream._cond.notify_all()
        if credit:
            self._send_frame(TYPE_WINDOW_UPDATE, 0, stream_id, credit)
