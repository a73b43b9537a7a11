"""The Manager: a thread-safe registry of loaded plugins and the router of calls to them.

Invariants:
- The registry lock only guards the dict; plugin code (init, call, shutdown) never runs
  under it, so a plugin calling another plugin, or itself, cannot deadlock the registry.
- Each entry counts its in-flight calls. `replace` swaps the entry first, then waits (bounded)
  for the old entry's calls to drain, then shuts the old plugin down: calls that started on
  the old version finish on it, new calls go to the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ParamSpec, Protocol, TypeVar

from .adminstate import ADMIN_DB, AdminState, SqliteAdminState
from .errors import (
    AdminStateError,
    PlughostError,
    PluginCallError,
    PluginDisabled,
    PluginLoadError,
    PluginNotFound,
    PluginTimeout,
    PluginUnavailable,
)
from .host import HostAPI, HostFunctions, HostSettings, chain, default_host_functions
from .host.dispatch import HostContext
from .host.grants import Grants
from .host.policy import POLICY_FILE, Policy, PolicyBook
from .lifecycle import Event, EventKind, PluginState
from .logs import PluginLog
from .plugin import Plugin
from .routing import RouteTable

_P = ParamSpec("_P")
_R = TypeVar("_R")
logger = logging.getLogger(__name__)


class LazyLoader(Protocol):
    """What the manager needs from a loader when a call names a plugin it has not loaded."""

    def knows(self, name: str) -> bool: ...

    def load_for_call(self, name: str) -> None:
        """Load `name` (lazy loading) or raise why it cannot serve (its load failed)."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    kind: str
    version: str
    path: str
    loaded_at: float
    enabled: bool
    inflight: int
    state: PluginState


class _Entry:
    __slots__ = ("cond", "enabled", "inflight", "loaded_at", "plugin")

    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin
        self.loaded_at = time.time()
        self.enabled = True
        self.inflight = 0
        self.cond = threading.Condition(threading.Lock())

    def done(self) -> None:
        with self.cond:
            self.inflight -= 1
            if self.inflight == 0:
                self.cond.notify_all()

    def drain(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.inflight == 0, timeout)


def _limit_of(plugin: Plugin, timeout: float | None) -> float:
    """The one place a call's budget is capped: the caller's timeout, never more than the
    plugin's `call_timeout_ms` (the nested-call cap is `chain.entered`'s)."""
    own = plugin.source.manifest.resources.call_timeout_ms / 1000
    return own if timeout is None else min(timeout, own)


def encode_args(args: Any, name: str = "", function: str = "") -> bytes:
    """Arguments as JSON bytes; bytes/bytearray pass through untouched."""
    if args is None:
        return b"{}"
    if isinstance(args, bytes | bytearray | memoryview):
        return bytes(args)
    try:
        return json.dumps(args, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise PluginCallError(f"arguments are not JSON: {exc}", plugin=name or None,
                              function=function or None) from None


def decode_result(name: str, function: str, raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PluginCallError(f"result is not valid JSON: {exc}", plugin=name,
                              function=function) from None


class Manager:
    """Registry + call routing. Safe to use from many threads; `a*` methods for asyncio."""

    def __init__(self, host: HostFunctions | HostAPI | None = None, *,
                 settings: HostSettings | None = None, drain_timeout: float = 30.0,
                 max_workers: int = 32, log_capacity: int = 1000,
                 policies: Mapping[str, Policy | Mapping[str, Any]] | None = None,
                 admin_state: AdminState | None = None) -> None:
        """`host`: a full table of host functions, or just the backends (`HostAPI`) behind
        the built-in ones; default: SQLite/memory/httpx/smtplib (`settings` tunes them).
        `policies`: the application's policy per plugin name (host/policy.py), over those
        the operator saved (`save_policy`), over those in `<data dir>/policies.yaml`.
        `admin_state`: where the operator's enable/disable and saved policies survive a
        restart; default `<data dir>/admin.db` (adminstate.py), opened on first use."""
        self.host = host if isinstance(host, HostFunctions) else default_host_functions(
            host, settings)
        resolved = settings or getattr(self.host.api, "settings", None)
        data_dir = resolved.data_dir if isinstance(resolved, HostSettings) else \
            HostSettings().data_dir
        self.admin: AdminState = admin_state if admin_state is not None else \
            SqliteAdminState(data_dir / ADMIN_DB)
        self.policies = PolicyBook(policies, data_dir / POLICY_FILE, operator=self.admin)
        self.drain_timeout = drain_timeout
        #: every registered plugin's routes, checked for collisions as it registers
        self.routes = RouteTable()
        self._entries: dict[str, _Entry] = {}
        self._logs: dict[str, PluginLog] = {}
        self._lock = threading.Lock()
        self._lazy: LazyLoader | None = None
        self._listeners: list[Callable[[Event], None]] = []
        self._log_capacity = log_capacity
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="plughost")
        self._closed = False

    # -- registry ------------------------------------------------------------------------

    def log_for(self, name: str) -> PluginLog:
        """The plugin's log buffer; it outlives reloads of the plugin."""
        with self._lock:
            log = self._logs.get(name)
            if log is None:
                log = self._logs[name] = PluginLog(name, self._log_capacity)
            return log

    def logs(self) -> dict[str, PluginLog]:
        """Every plugin log buffer kept now, by plugin name."""
        with self._lock:
            return dict(self._logs)

    def _refuse_if_closed(self, plugin: Plugin) -> None:
        # lock held. The caller shuts the refused plugin down (a late load leaves nothing).
        if self._closed:
            raise PluginUnavailable("the manager is closed", plugin=plugin.name)

    def _saved_enabled(self, name: str) -> bool:
        """Whether the operator left `name` enabled (file I/O: never under the lock). A
        state that cannot be read refuses the plugin: loading it enabled could undo the
        operator's disable."""
        try:
            return self.admin.enabled(name) is not False
        except AdminStateError as exc:
            raise PluginLoadError(str(exc), plugin=name) from None

    def register(self, plugin: Plugin) -> None:
        enabled = self._saved_enabled(plugin.name)
        with self._lock:
            self._refuse_if_closed(plugin)
            if plugin.name in self._entries:
                raise PluginLoadError("a plugin of this name is already registered",
                                      plugin=plugin.name)
            warnings = self.routes.install(plugin.name, plugin.registration.routes)
            entry = self._entries[plugin.name] = _Entry(plugin)
            entry.enabled = enabled
        self._route_warnings(plugin, warnings)
        self.host.translations.install(plugin.name, plugin.registration.i18n)
        self._emit(Event("load", plugin.name, detail=plugin.registration.version))

    @staticmethod
    def _route_warnings(plugin: Plugin, warnings: list[str]) -> None:
        for text in warnings:  # e.g. an unknown middleware: that route is not mounted
            plugin.log.warning(text, source="host")

    def get(self, name: str) -> Plugin | None:
        with self._lock:
            entry = self._entries.get(name)
        return entry.plugin if entry else None

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._entries

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def list(self) -> list[PluginInfo]:
        with self._lock:
            entries = list(self._entries.values())
        return sorted((PluginInfo(e.plugin.name, e.plugin.kind, e.plugin.registration.version,
                                  str(e.plugin.source.path), e.loaded_at, e.enabled, e.inflight,
                                  e.plugin.state)
                       for e in entries), key=lambda i: i.name)

    def info(self, name: str) -> PluginInfo | None:
        return next((i for i in self.list() if i.name == name), None)

    def replace(self, plugin: Plugin, *, drain_timeout: float | None = None) -> Plugin | None:
        """Atomically make `plugin` serve its name; drain and shut down the one it replaces.

        Returns the old plugin (already shut down), or None if there was none.
        """
        saved = None if plugin.name in self else self._saved_enabled(plugin.name)
        with self._lock:
            self._refuse_if_closed(plugin)
            old = self._entries.get(plugin.name)
            new = _Entry(plugin)
            if old is not None:
                new.enabled = old.enabled
            elif saved is not None:
                new.enabled = saved
            # A route that collides refuses the new version; the old one keeps serving.
            warnings = self.routes.install(plugin.name, plugin.registration.routes)
            self._entries[plugin.name] = new
        self._route_warnings(plugin, warnings)
        self.host.translations.install(plugin.name, plugin.registration.i18n)
        if old is None:
            self._emit(Event("load", plugin.name, detail=plugin.registration.version))
            return None
        self._retire(old, drain_timeout)
        self._emit(Event("reload", plugin.name, detail=plugin.registration.version))
        return old.plugin

    def unregister(self, name: str, *, drain_timeout: float | None = None) -> Plugin:
        """Remove `name` from the registry, drain its calls and shut it down."""
        with self._lock:
            entry = self._entries.pop(name, None)
            self.routes.remove(name)
        if entry is None:
            raise PluginNotFound("not loaded", plugin=name)
        self.host.translations.remove(name)
        self._retire(entry, drain_timeout)
        self._emit(Event("unload", name))
        return entry.plugin

    def _retire(self, entry: _Entry, drain_timeout: float | None) -> None:
        wait = self.drain_timeout if drain_timeout is None else drain_timeout
        if not entry.drain(wait):
            entry.plugin.log.warning(
                f"{entry.inflight} call(s) still running after {wait:.1f}s; shutting down "
                "anyway", source="host")
        try:
            entry.plugin.shutdown()
        except Exception as exc:  # a bad shutdown must not break the swap that retired it
            entry.plugin.log.error(f"shutdown failed: {exc}", source="host")

    def enable(self, name: str) -> None:
        self._set_enabled(name, True)

    def disable(self, name: str) -> None:
        self._set_enabled(name, False)

    def _set_enabled(self, name: str, enabled: bool) -> None:
        if name not in self:
            raise PluginNotFound("not loaded", plugin=name)
        # Saved first: if it cannot be kept, the change fails rather than being lost at
        # the next restart.
        self.admin.set_enabled(name, enabled)
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise PluginNotFound("not loaded", plugin=name)
            entry.enabled = enabled
        self._emit(Event("enable" if enabled else "disable", name))

    def shutdown_all(self, timeout: float | None = None) -> None:
        """Unload every plugin, in parallel; returns within about `timeout` seconds."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        wait = self.drain_timeout if timeout is None else timeout
        threads = [threading.Thread(target=self._retire, args=(e, wait), daemon=True)
                   for e in entries]
        for t in threads:
            t.start()
        end = time.monotonic() + wait + 1.0
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        for e in entries:
            self.routes.remove(e.plugin.name)
            self.host.translations.remove(e.plugin.name)
            self._emit(Event("unload", e.plugin.name))

    # -- what the host functions need (host.PluginCaller) ---------------------------------

    def policy_for(self, name: str) -> Policy | None:
        """The operator's policy for `name` (None: its declared grants stand)."""
        return self.policies.get(name)

    def set_policy(self, name: str, policy: Policy | Mapping[str, Any] | None) -> None:
        """Set (None: drop) `name`'s policy; a running plugin gets it at once."""
        self.policies.set(name, policy)
        self._refresh_grants(name)

    def save_policy(self, name: str, policy: Policy | Mapping[str, Any] | None) -> None:
        """The operator's policy for `name`, kept in the admin state (it survives a
        restart; None: drop it); a running plugin gets it at once, unless the
        application's own policy for it (`set_policy`) stands over it."""
        self.policies.save(name, policy)
        self._refresh_grants(name)

    def _refresh_grants(self, name: str) -> None:
        refresh = getattr(self.get(name), "refresh_grants", None)
        if callable(refresh):
            refresh()

    def grants(self, name: str) -> Grants | None:
        """The effective grants of loaded plugin `name` (None: not loaded)."""
        plugin = self.get(name)
        context = getattr(plugin, "host_context", None)
        return context.granted if isinstance(context, HostContext) else None

    def publish(self, plugin: str, channel: str, event_type: str, data: str) -> None:
        """A plugin's `publish_event`: a `plugin_event` to every listener."""
        self._emit(Event("plugin_event", plugin, detail=data, channel=channel,
                         event_type=event_type))

    # -- calls ---------------------------------------------------------------------------

    def set_lazy_loader(self, loader: LazyLoader | None) -> None:
        """The loader asked when a call names a plugin that is not loaded: it loads it
        (lazy mode) or says why it cannot serve."""
        self._lazy = loader

    def _acquire(self, name: str) -> _Entry:
        for attempt in (0, 1):
            with self._lock:
                if self._closed:
                    raise PluginUnavailable("the manager is closed", plugin=name)
                entry = self._entries.get(name)
                if entry is not None:
                    if not entry.enabled:
                        raise PluginDisabled("plugin is disabled", plugin=name)
                    with entry.cond:
                        entry.inflight += 1
                    return entry
            lazy = self._lazy
            if attempt == 0 and lazy is not None and lazy.knows(name):
                lazy.load_for_call(name)  # outside the lock: loading runs plugin code
                continue
            break
        raise PluginNotFound("no such plugin is loaded or discovered", plugin=name)

    def call_raw(self, name: str, function: str, args: bytes, *,
                 timeout: float | None = None) -> bytes:
        """Call with JSON bytes in and out (no decoding)."""
        chain.admit(name)  # before acquiring: a plugin on this path may be mid-load
        entry = self._acquire(name)
        try:
            # A nested call (plugin_call) inherits what is left of its caller's deadline.
            with chain.entered(name, _limit_of(entry.plugin, timeout), args) as deadline:
                return entry.plugin.call(function, args, deadline=deadline)
        except PlughostError as exc:
            self._call_failed(name, exc)
            raise
        except Exception as exc:  # a runtime bug still reaches the caller as a typed error
            logger.exception("unexpected error calling %s.%s", name, function)
            typed = PluginCallError(f"unexpected error: {exc!r}", plugin=name,
                                    function=function)
            self._call_failed(name, typed)
            raise typed from exc
        finally:
            entry.done()

    def ping(self, name: str, function: str = "__health_ping__", *,
             timeout: float = 5.0) -> bytes:
        """A health probe: call `function` with no arguments, enabled or not, without the
        failed-call log line and event a real call gets (a probe of a plugin that does not
        implement it would otherwise fill the log every minute). Raises as `call_raw`."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or self._closed:
                raise PluginNotFound("not loaded", plugin=name)
            with entry.cond:
                entry.inflight += 1
        try:
            with chain.entered(name, _limit_of(entry.plugin, timeout), b"") as deadline:
                return entry.plugin.call(function, b"", deadline=deadline)
        finally:
            entry.done()

    def _call_failed(self, name: str, exc: PlughostError) -> None:
        """A failed call is a line in the plugin's log and a `call_error` event, so the
        operator sees it where they look for the plugin's health, not only the caller."""
        reason = f"{type(exc).__name__}: {exc.message}"
        self.log_for(name).error(f"call failed: {reason}", source="host")
        self._emit(Event("call_error", name, detail=reason))

    def call(self, name: str, function: str, args: Any = None, *,
             timeout: float | None = None) -> Any:
        """Call `function` of plugin `name` with JSON-able `args`; returns the decoded result.

        Loads a discovered-but-unloaded plugin first (lazy loading). `timeout` (seconds) can
        shorten, never extend, the plugin's `resources.call_timeout_ms`.
        """
        raw = self.call_raw(name, function, encode_args(args, name, function), timeout=timeout)
        return decode_result(name, function, raw)

    # -- asyncio twins: blocking work runs on the manager's pool, never on the loop ------

    async def _run(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return await self._run_within(None, None, functools.partial(fn, *args, **kwargs))

    async def _run_within(self, timeout: float | None, plugin: str | None,
                          fn: Callable[[], _R]) -> _R:
        fut = asyncio.get_running_loop().run_in_executor(self._executor, fn)
        if timeout is None:
            return await fut
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise PluginTimeout(f"no answer within {timeout:.3f}s", plugin=plugin) from None

    async def acall(self, name: str, function: str, args: Any = None, *,
                    timeout: float | None = None) -> Any:
        """`call` for asyncio. The deadline also bounds the plugin call itself; on
        cancellation the awaiting task stops at once and the call ends by its deadline."""
        # A little slack so the runtime's own, more precise timeout error wins the race.
        outer = None if timeout is None else timeout + 0.5
        return await self._run_within(
            outer, name, lambda: self.call(name, function, args, timeout=timeout))

    async def acall_raw(self, name: str, function: str, args: bytes, *,
                        timeout: float | None = None) -> bytes:
        """`call_raw` for asyncio (JSON bytes in and out, e.g. a route's envelope)."""
        outer = None if timeout is None else timeout + 0.5
        return await self._run_within(
            outer, name, lambda: self.call_raw(name, function, args, timeout=timeout))

    async def run_blocking(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs
                           ) -> _R:
        """Run any blocking plughost call on the manager's pool (used by the loader)."""
        return await self._run(fn, *args, **kwargs)

    # -- events --------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Event], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    @property
    def listeners(self) -> tuple[Callable[[Event], None], ...]:
        """The listeners registered now (a client that went away must not leave one)."""
        return tuple(self._listeners)

    def _emit(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("event listener failed for %s", event)

    def emit(self, kind: EventKind, plugin: str, detail: str = "") -> None:
        """Publish a lifecycle event (used by the loader for errors)."""
        self._emit(Event(kind, plugin, detail=detail))

    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Unload everything and refuse new plugins and calls from now on."""
        with self._lock:
            self._closed = True
        self.shutdown_all()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.admin.close()
