"""The chain of plugins a call passes through, and the one re-entrancy rule.

**A plugin is entered at most once on one call path.** A call (`Manager.call_raw`) and a
load (the loader starting a version, whose init may call out) both enter the plugin on the
current path; entering a plugin that is already on it is refused with `CallCycle` before
anything of the target is touched. This one rule covers `plugin_call` cycles (a -> b -> a),
a plugin calling itself (whose only instance is busy), and a plugin called while it loads
(whose load lock this very path holds): each would otherwise deadlock until its deadline.
`plugin_call`'s depth limit is that host function's own setting and stays with it.

In-process (wasm) the chain is a context variable: a host call runs on the thread of the
call that made it. Out-of-process (grpc) the host call arrives on another thread, so each
`Call` RPC carries a call id in its metadata; the SDK forwards it on `HostCall`, and the
host looks the chain up by id. A plugin that does not forward it gets the longest chain
among its in-flight calls: conservative, never more permissive than the truth.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from ..deadline import Deadline, within
from ..errors import CallCycle
from ..proto import CALL_ID_METADATA

__all__ = ["CALL_ID_METADATA", "CallPath", "admit", "current", "entered", "envelope",
           "lookup", "path",
           "remote_call", "using"]

@dataclass(frozen=True)
class CallPath:
    """Plugins on the current call path (outermost first) and the path's deadline."""

    plugins: tuple[str, ...] = ()
    deadline: Deadline | None = None  # by which the innermost call on the path must end
    #: the call's language and organisation (GoatFlow's `_lang`, `_org_id` in the args of
    #: the outermost call that gave them); host functions answer in them
    lang: str = ""
    org_id: int = 0

    def left(self) -> float | None:
        """Seconds until the deadline (None: no deadline on this path)."""
        return None if self.deadline is None else self.deadline.left()


_NO_PATH = CallPath()  # frozen: safe to share as the default
_path: ContextVar[CallPath] = ContextVar("plughost_call_path", default=_NO_PATH)
_calls: dict[str, CallPath] = {}
_lock = threading.Lock()


def current() -> tuple[str, ...]:
    """Plugins on the current call path, outermost first."""
    return _path.get().plugins


def path() -> CallPath:
    return _path.get()


def admit(name: str) -> None:
    """The re-entrancy rule (module docstring): raise `CallCycle` if `name` is already on
    the current path. `entered` applies it; a caller that must check before it acquires
    the plugin (the manager, whose acquire may load it) calls it first."""
    plugins = _path.get().plugins
    if name in plugins:
        raise CallCycle(f"cycle refused ({' -> '.join((*plugins, name))}): a plugin is "
                        "entered at most once on one call path", plugin=name)


def envelope(args: bytes) -> tuple[str, int] | None:
    """`(_lang, _org_id)` from a call's JSON args when it carries them (None: it does not,
    and the path keeps what it has). Only args that mention them are parsed at all."""
    if b'"_lang"' not in args and b'"_org_id"' not in args:
        return None
    try:
        data = json.loads(args)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    lang, org = data.get("_lang"), data.get("_org_id")
    org_id = int(org) if isinstance(org, int | float) and not isinstance(org, bool) and \
        0 <= org < 2**63 else 0
    return (lang if isinstance(lang, str) else "", org_id)


@contextmanager
def entered(name: str, timeout: float | None, args: bytes = b""
            ) -> Iterator[Deadline | None]:
    """Mark that the current path now runs inside plugin `name`, for at most `timeout`
    seconds and never past the path's deadline (None: the path's). Yields this call's
    deadline. Refused with `CallCycle` if `name` is already on the path. `args`, the
    call's, set the path's language and organisation (`envelope`) when the path is
    empty."""
    admit(name)
    outer = _path.get()
    deadline = within(outer.deadline, timeout)
    # Only the application's call (the first on a path) sets the language and the
    # organisation; a nested call (plugin_call) keeps its caller's, whatever its args say,
    # so no plugin can choose another's organisation.
    given = envelope(args) if args and not outer.plugins else None
    lang, org_id = given if given is not None else (outer.lang, outer.org_id)
    token = _path.set(CallPath((*outer.plugins, name), deadline, lang, org_id))
    try:
        yield deadline
    finally:
        _path.reset(token)


@contextmanager
def using(call_path: CallPath) -> Iterator[None]:
    """Run with an explicit path (a host call that arrived from another process)."""
    token = _path.set(call_path)
    try:
        yield
    finally:
        _path.reset(token)


@contextmanager
def remote_call() -> Iterator[str]:
    """Register the current path under a fresh id for the duration of an RPC."""
    call_id = secrets.token_hex(16)  # GoatFlow's call token: unguessable, 16 random bytes
    with _lock:
        _calls[call_id] = _path.get()
    try:
        yield call_id
    finally:
        with _lock:
            _calls.pop(call_id, None)


def live(call_id: str, plugin: str) -> bool:
    """Is `call_id` an RPC into `plugin` in flight now (GoatFlow's call token: valid until
    its call returns, and only for the plugin it was sent to)?"""
    with _lock:
        known = _calls.get(call_id)
    return known is not None and known.plugins[-1:] == (plugin,)


def lookup(call_id: str | None, plugin: str) -> CallPath:
    """The path of an in-flight RPC into `plugin` (see module docstring)."""
    with _lock:
        known = _calls.get(call_id) if call_id is not None else None
        if known is not None and known.plugins[-1:] == (plugin,):
            return known
        mine = [c for c in _calls.values() if c.plugins[-1:] == (plugin,)]
    return max(mine, key=lambda c: len(c.plugins)) if mine else CallPath((plugin,))
