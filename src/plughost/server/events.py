"""Manager events for HTTP clients: server-sent events, a bounded history of them, and
each plugin's last error.

The manager calls listeners from whatever thread changed something (a loader thread, the
watcher, a grpc supervisor). The hub is one listener: under its lock it appends the event
to the history and hands it to every client, which only passes it to the client's event
loop with `call_soon_threadsafe`; the loop puts it on the client's bounded queue, dropping
the oldest event when a slow client lets the queue fill up. A new client is added under the
same lock as it copies the history, so it gets every event once: the last `history` ones,
then each live one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..lifecycle import ERROR_KINDS, Event, EventKind
from ..manager import Manager

# ERROR_KINDS (from lifecycle): event kinds whose detail is remembered as the last error.
#: Event kinds after which the plugin's last error is forgotten (a new version serves).
RECOVERY_KINDS: frozenset[EventKind] = frozenset({"load", "reload"})


def event_json(event: Event) -> dict[str, Any]:
    data = dataclasses.asdict(event)
    if event.kind != "plugin_event":  # only a plugin's own event has a channel and type
        del data["channel"], data["event_type"]
    return data


class _Client:
    """One SSE connection: a bounded queue fed from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int,
                 want: Callable[[Event], bool] | None = None) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(size)
        self.want = want
        self.dropped = 0  # events lost since the last report; touched on the loop only

    def listener(self, event: Event) -> None:
        """Called by the hub, from any thread."""
        if self.want is None or self.want(event):
            self._threadsafe(event)

    def close(self) -> None:
        self._threadsafe(None)

    def _threadsafe(self, item: Event | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed: nobody listens
            self.loop.call_soon_threadsafe(self._push, item)

    def _push(self, item: Event | None) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(item)


class EventHub:
    """The SSE clients of one app, and the last error seen for each plugin."""

    def __init__(self, manager: Manager, *, queue_size: int = 256,
                 keepalive: float = 15.0, history: int = 100,
                 channel_keepalive: float = 30.0) -> None:
        self.manager = manager
        self.queue_size = queue_size
        self.keepalive = keepalive
        self.channel_keepalive = channel_keepalive
        self._history: deque[Event] = deque(maxlen=history)
        self._lock = threading.Lock()
        self._clients: set[_Client] = set()
        self._errors: dict[str, str] = {}
        self._seen: set[str] = set()
        self._closed = False

    # -- last errors ---------------------------------------------------------------------

    def start(self) -> None:
        self.manager.add_listener(self._track)

    def stop(self) -> None:
        self.manager.remove_listener(self._track)
        self.close()

    def _track(self, event: Event) -> None:
        with self._lock:
            self._history.append(event)
            for client in self._clients:
                client.listener(event)
            self._seen.add(event.plugin)
            if event.kind in ERROR_KINDS:
                self._errors[event.plugin] = (event.detail if event.kind == "error"
                                              else f"{event.kind}: {event.detail}")
            elif event.kind in RECOVERY_KINDS:
                self._errors.pop(event.plugin, None)

    def record_error(self, plugin: str, message: str) -> None:
        """Remember a load error the server caught itself (a failed first load emits no
        event; only failed reloads do)."""
        with self._lock:
            self._seen.add(plugin)
            self._errors[plugin] = message

    def last_error(self, plugin: str) -> str | None:
        with self._lock:
            return self._errors.get(plugin)

    def has_seen(self, plugin: str) -> bool:
        with self._lock:
            return plugin in self._seen

    # -- SSE clients ---------------------------------------------------------------------

    def connect(self, *, size: int | None = None, want: Callable[[Event], bool] | None = None
                ) -> tuple[_Client, list[Event]] | None:
        """A new client on the running loop and the history it starts with (the events
        after those reach its queue), or None once the hub is closed. `want` filters
        the events it gets (the history included); `size` bounds its queue."""
        client = _Client(asyncio.get_running_loop(), size or self.queue_size, want)
        with self._lock:
            if self._closed:
                return None
            self._clients.add(client)
            return client, [e for e in self._history if want is None or want(e)]

    def history(self) -> list[Event]:
        with self._lock:
            return list(self._history)

    def disconnect(self, client: _Client) -> None:
        with self._lock:
            self._clients.discard(client)

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def close(self) -> None:
        """End every stream (server shutdown); new streams end at once."""
        with self._lock:
            self._closed = True
            clients = list(self._clients)
        for c in clients:
            c.close()


class _HubStream(Response):
    """A `text/event-stream` fed by one hub client until the client leaves or the hub
    closes; subclasses say which events (`_connect`) and how they are written (`_frames`)."""

    media_type = "text/event-stream"

    def __init__(self, hub: EventHub, headers: dict[str, str]) -> None:  # no content-length
        self.hub = hub
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    def _connect(self) -> tuple[_Client, list[Event]] | None:
        return self.hub.connect()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        joined = self._connect()
        client, past = joined if joined is not None else (None, [])
        try:
            async with anyio.create_task_group() as tg:

                async def pump() -> None:
                    await self._pump(client, past, send)
                    tg.cancel_scope.cancel()

                tg.start_soon(pump)
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()
        finally:
            if client is not None:
                self.hub.disconnect(client)

    async def _pump(self, client: _Client | None, past: list[Event], send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})

        async def chunk(text: str) -> None:
            await send({"type": "http.response.body", "body": text.encode(),
                        "more_body": True})

        try:
            await chunk(self._opening())
            for old in past:
                await chunk(self._frame(old, history=True))
            while client is not None:
                try:
                    event = await asyncio.wait_for(client.queue.get(), self._keepalive())
                except TimeoutError:
                    await chunk(self._idle())
                    continue
                if client.dropped:
                    await chunk(f"event: dropped\ndata: {{\"dropped\": {client.dropped}}}\n\n")
                    client.dropped = 0
                if event is None:
                    break
                await chunk(self._frame(event, history=False))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away mid-write
            return

    def _keepalive(self) -> float:
        return self.hub.keepalive

    def _opening(self) -> str:
        return "retry: 2000\n: connected\n\n"

    def _idle(self) -> str:
        return ": keep-alive\n\n"

    def _frame(self, event: Event, *, history: bool) -> str:
        data = {**event_json(event), "history": True} if history else event_json(event)
        return f"data: {json.dumps(data)}\n\n"


class EventStream(_HubStream):
    """Every manager event until the client leaves or the hub closes.

    Each event is one `data: {"kind", "plugin", "time", "detail"}` message (a
    `plugin_event` adds `channel` and `event_type`; its data is `detail`), the hub's
    history first (each with `"history": true`), then live ones; a comment line every
    `keepalive` seconds keeps proxies from closing an idle stream; `event: dropped` tells a
    slow client how many events it lost (it should re-read /api/v1/plugins).
    """

    def __init__(self, hub: EventHub) -> None:
        super().__init__(hub, {"cache-control": "no-cache", "x-accel-buffering": "no"})


_LINE_BREAK = re.compile(r"\r\n|\r|\n")
#: GoatFlow's per-subscriber buffer and keep-alive for a plugin's channel stream.
CHANNEL_QUEUE = 16
CHANNEL_KEEPALIVE = 30.0


class ChannelStream(_HubStream):
    """GoatFlow's stream of one plugin's events on one channel
    (`/api/v1/plugins/<name>/events/<channel>`): `event: connected` with
    `{"status":"ok"}`, then each `publish_event` of that plugin and channel as
    `event: <event type>` and its data (a line break, CR, LF or CRLF, continues on another
    `data:` line, so the client reads the data back whole, with LF), `: keepalive` every
    30 s. No history: GoatFlow's subscriber starts from now."""

    def __init__(self, hub: EventHub, plugin: str, channel: str,
                 keepalive: float = CHANNEL_KEEPALIVE) -> None:
        super().__init__(hub, {"cache-control": "no-cache", "connection": "keep-alive",
                               "x-accel-buffering": "no"})
        self.plugin, self.channel, self.keepalive = plugin, channel, keepalive

    def _wanted(self, e: Event) -> bool:
        return e.kind == "plugin_event" and e.plugin == self.plugin \
            and e.channel == self.channel

    def _connect(self) -> tuple[_Client, list[Event]] | None:
        joined = self.hub.connect(size=CHANNEL_QUEUE, want=self._wanted)
        return None if joined is None else (joined[0], [])

    def _keepalive(self) -> float:
        return self.keepalive

    def _opening(self) -> str:
        return 'event: connected\ndata: {"status":"ok"}\n\n'

    def _idle(self) -> str:
        return ": keepalive\n\n"

    def _frame(self, event: Event, *, history: bool) -> str:
        kind = _LINE_BREAK.sub(" ", event.event_type or "message")
        # SSE ends a line at CR, LF or CRLF: each is a new data line, so the data cannot
        # add a field (`id:`, `retry:`, `event:`) of its own
        lines = "".join(f"data: {line}\n" for line in _LINE_BREAK.split(event.detail))
        return f"event: {kind}\n{lines}\n"
