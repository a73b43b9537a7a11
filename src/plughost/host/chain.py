"""The chain of plugins a call passes through, for `plugin_call` depth and cycle checks.

In-process (wasm) the chain is a context variable: a host call runs on the thread of the
call that made it. Out-of-process (grpc) the host call arrives on another thread, so each
`Call` RPC carries a call id in its metadata; the SDK forwards it on `HostCall`, and the
host looks the chain up by id. A plugin that does not forward it gets the longest chain
among its in-flight calls: conservative, never more permissive than the truth.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ..proto import CALL_ID_METADATA

__all__ = ["CALL_ID_METADATA", "current", "entered", "lookup", "remote_call", "using"]

_chain: ContextVar[tuple[str, ...]] = ContextVar("plughost_call_chain", default=())
_calls: dict[str, tuple[str, ...]] = {}
_lock = threading.Lock()
_ids = itertools.count(1)


def current() -> tuple[str, ...]:
    """Plugins on the current call path, outermost first."""
    return _chain.get()


@contextmanager
def entered(name: str) -> Iterator[tuple[str, ...]]:
    """Mark that the current path now runs inside plugin `name`."""
    token = _chain.set((*_chain.get(), name))
    try:
        yield _chain.get()
    finally:
        _chain.reset(token)


@contextmanager
def using(chain: tuple[str, ...]) -> Iterator[None]:
    """Run with an explicit chain (a host call that arrived from another process)."""
    token = _chain.set(chain)
    try:
        yield
    finally:
        _chain.reset(token)


@contextmanager
def remote_call() -> Iterator[str]:
    """Register the current chain under a fresh id for the duration of an RPC."""
    call_id = str(next(_ids))
    with _lock:
        _calls[call_id] = _chain.get()
    try:
        yield call_id
    finally:
        with _lock:
            _calls.pop(call_id, None)


def lookup(call_id: str | None, plugin: str) -> tuple[str, ...]:
    """The chain of an in-flight RPC into `plugin` (see module docstring)."""
    with _lock:
        if call_id is not None and call_id in _calls and _calls[call_id][-1:] == (plugin,):
            return _calls[call_id]
        mine = [c for c in _calls.values() if c[-1:] == (plugin,)]
    return max(mine, key=len) if mine else (plugin,)
