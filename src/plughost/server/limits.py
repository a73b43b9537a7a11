"""Connection limits for `plughost serve`: slow or idle clients cannot exhaust the server.

uvicorn bounds the idle time between requests on a kept-alive connection
(`timeout_keep_alive`), but not the time a client takes to send a request's headers: 300
clients that each dripped a header byte now and then held 300 file descriptors, and the
API stopped at the process's fd limit. This protocol adds:

- a header timeout: a connection whose request headers are not complete within
  `header_timeout` seconds of connecting (or of its previous response) is closed;
- a connection cap: past `max_connections` open connections, the connection that has
  waited longest for its request headers is closed to make room (a slow client loses its
  place to a new one); when every connection is busy with a request, the new one is
  closed instead. Either way file descriptors never run out and requests that arrive
  whole keep being served.

The body has its own timeout in the app (`create_app(body_timeout=...)`, a 408).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)


class _LimitedH11(H11Protocol):
    header_timeout = 10.0
    max_connections = 200

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0  # when it began waiting for headers (while armed)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()
        if len(self.connections) > self.max_connections:
            waiting = [c for c in self.connections if isinstance(c, _LimitedH11)
                       and c is not self and c._header_timer is not None]
            victim = min(waiting, key=lambda c: c._waiting_since) if waiting else self
            logger.warning("%d open connections (cap %d): closing %s", len(self.connections),
                           self.max_connections, "the slowest one waiting for headers"
                           if victim is not self else "the new one")
            victim._disarm()
            victim.transport.abort()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request's headers are complete
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request's headers get the same time

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._waiting_since = self.loop.time()
        self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def limited_protocol(header_timeout: float = 10.0, max_connections: int = 200
                     ) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header timeout and a connection cap (`Config(http=)`)."""
    return type("LimitedH11", (_LimitedH11,), {"header_timeout": header_timeout,
                                               "max_connections": max_connections})


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-file limit toward `wanted` (within the hard limit); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft
