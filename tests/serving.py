"""Helpers for the server tests: the app served by real uvicorn on a free loopback port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from plughost.server import PlughostServer
from plughost.server.state import ServerState


@dataclass
class Served:
    server: PlughostServer
    thread: threading.Thread
    url: str
    app: Starlette

    @property
    def state(self) -> ServerState:
        st = self.app.state.plughost
        assert isinstance(st, ServerState)
        return st

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the server did not shut down"


@contextmanager
def serve_in_thread(app: Starlette, start_timeout: float = 60.0) -> Iterator[Served]:
    """Run `app` with uvicorn in a background thread (port 0: the kernel picks a free one);
    yields once it listens (the app's start-up, which loads the plugins, has run)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_config=None,
                            proxy_headers=False)  # as plughost serve runs it
    server = PlughostServer(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    end = time.monotonic() + start_timeout
    while not server.started:  # uvicorn offers no event for "listening"
        if not thread.is_alive():
            raise AssertionError("the server failed to start")
        if time.monotonic() > end:
            raise AssertionError("the server did not start in time")
        time.sleep(0.01)
    served = Served(server, thread, f"http://127.0.0.1:{server.port}", app)
    try:
        yield served
    finally:
        if thread.is_alive():
            served.stop()


def gone(pid: int) -> bool:
    """True once /proc/<pid> is gone or a zombie nobody will run again."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    state = next((line.split()[1] for line in status.splitlines()
                  if line.startswith("State:")), "")
    return state in ("Z", "X")


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children, grandchildren, ...), read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found
