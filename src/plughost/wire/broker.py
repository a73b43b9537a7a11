"""go-plugin's MuxBroker over a yamux session: more net/rpc connections beside the control
one, each named by a uint32 id (docs/protocol.md, "net/rpc plugins").

A broker connection is a yamux stream whose first 4 bytes are its id, little-endian; the
side that accepts it echoes the id back as the acknowledgement. Ids are handed out by
`next_id` and travel in an RPC (GoatFlow's `HostAPIID`, the id `Dispense` answers). An id
nobody dials within 5 s is `timeout waiting for accept`, as in go-plugin; streams that
arrive for an id nobody waits for are kept 5 s, then closed.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress

from .yamux import Session, Stream, YamuxError

logger = logging.getLogger(__name__)

_ID = struct.Struct("<I")
#: go-plugin's wait for a broker connection, and for its id to arrive.
ACCEPT_TIMEOUT = 5.0


class BrokerError(Exception):
    """A broker connection could not be made (timeout, wrong id, a closed session)."""


class MuxBroker:
    """The broker of one session; `start()` runs its accept thread, `close()` ends it."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._lock = threading.Lock()
        self._next = 0
        self._waiting: dict[int, Future[Stream]] = {}
        self._arrived: dict[int, tuple[Stream, float]] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="yamux-broker", daemon=True)
        self._thread.start()

    def next_id(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def _run(self) -> None:
        while True:
            try:
                stream = self._session.accept_stream()
            except YamuxError:
                break
            threading.Thread(target=self._identify, args=(stream,), daemon=True,
                             name="yamux-broker-id").start()
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(BrokerError("the session closed"))

    def _identify(self, stream: Stream) -> None:
        try:
            stream.settimeout(ACCEPT_TIMEOUT)
            (ident,) = _ID.unpack(stream.read_exactly(4))
            stream.settimeout(None)
        except (YamuxError, EOFError):
            with suppress(YamuxError):
                stream.reset()
            return
        with self._lock:
            now = time.monotonic()
            for old, (s, at) in list(self._arrived.items()):  # nobody came for these
                if now - at > ACCEPT_TIMEOUT:
                    del self._arrived[old]
                    with suppress(YamuxError):
                        s.close()
            fut = self._waiting.pop(ident, None)
            if fut is None:
                self._arrived[ident] = (stream, now)
                return
        fut.set_result(stream)

    def accept(self, ident: int, timeout: float = ACCEPT_TIMEOUT) -> Stream:
        """The connection the peer dials for `ident` (acknowledged)."""
        with self._lock:
            got = self._arrived.pop(ident, None)
            fut: Future[Stream] = Future()
            if got is None:
                self._waiting[ident] = fut
        if got is not None:
            stream = got[0]
        else:
            try:
                stream = fut.result(timeout)
            except FutureTimeout:
                with self._lock:
                    self._waiting.pop(ident, None)
                raise BrokerError(f"timeout waiting for accept (id {ident})") from None
            except BrokerError:
                raise
        try:
            stream.sendall(_ID.pack(ident))
        except YamuxError as exc:
            raise BrokerError(f"cannot acknowledge broker id {ident}: {exc}") from None
        return stream

    def dial(self, ident: int, timeout: float = ACCEPT_TIMEOUT) -> Stream:
        """A connection to the peer's `ident` (it must be accepting it)."""
        try:
            stream = self._session.open_stream()
            stream.settimeout(timeout)
            stream.sendall(_ID.pack(ident))
            (echo,) = _ID.unpack(stream.read_exactly(4))
            stream.settimeout(None)
        except (YamuxError, EOFError) as exc:
            raise BrokerError(f"cannot dial broker id {ident}: {exc}") from None
        if echo != ident:
            stream.reset()
            raise BrokerError(f"broker id {ident} acknowledged as {echo}")
        return stream
