"""The host-function table and its single entry point, `dispatch`."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import HostCallError, PermissionDenied
from ..logs import PluginLog
from ..plugin import PluginSource
from ..registration import Registration
from . import chain
from .api import DefaultHostAPI, HostAPI, HostSettings

logger = logging.getLogger(__name__)


class PluginCaller(Protocol):
    """What `plugin_call` needs from the layer above: calling a plugin by name (the
    manager that registered the calling plugin implements it)."""

    def call_raw(self, name: str, function: str, args: bytes, *,
                 timeout: float | None = None) -> bytes: ...


@dataclass(frozen=True)
class HostContext:
    """Who is calling. Built by the host from the manifest, never from the plugin's word."""

    plugin: str
    permissions: frozenset[str]
    log: PluginLog
    config: Mapping[str, Any] = field(default_factory=dict)
    allowed_hosts: tuple[str, ...] = ()
    i18n: Mapping[str, Any] = field(default_factory=dict)
    #: the registry the plugin runs in, for `plugin_call`: each plugin's own, so two
    #: managers sharing one table of host functions never route each other's calls
    caller: PluginCaller | None = None


def context_for(source: PluginSource, log: PluginLog, registration: Registration,
                caller: PluginCaller | None = None) -> HostContext:
    """The host's view of a plugin, for both runtimes.

    The grant is the manifest's `permissions` (the operator's word). A bare `<name>.wasm`
    has no manifest, so there the registration's own list is the grant.
    """
    m = source.manifest
    granted = m.permissions if source.has_manifest else registration.permissions
    return HostContext(plugin=source.name, permissions=frozenset(granted), log=log,
                       config=dict(m.config), allowed_hosts=tuple(m.allowed_hosts),
                       i18n=dict(registration.i18n), caller=caller)


Handler = Callable[[HostContext, Any], Any]


@dataclass(frozen=True)
class HostFunction:
    name: str
    permission: str | None  # None: available to every plugin
    handler: Handler  # decoded JSON args -> JSON-able result


class HostFunctions:
    """The table of host functions. Applications may register their own."""

    def __init__(self, api: HostAPI | None = None) -> None:
        self.api = api
        self._table: dict[str, HostFunction] = {}
        self._lock = threading.Lock()

    def register(self, name: str, handler: Handler, *, permission: str | None) -> None:
        with self._lock:
            self._table[name] = HostFunction(name, permission, handler)

    def names(self) -> list[str]:
        return sorted(self._table)

    def dispatch(self, ctx: HostContext, name: str, args: bytes) -> bytes:
        """Run host function `name` for `ctx.plugin`; JSON in, JSON out.

        Every refusal raises `HostCallError` (or `PermissionDenied`) and is logged in the
        plugin's log, so an author can see why a call came back empty.
        """
        try:
            fn = self._table.get(name)
            if fn is None:
                raise HostCallError(f"unknown host function {name!r}", plugin=ctx.plugin)
            if fn.permission is not None and fn.permission not in ctx.permissions:
                raise PermissionDenied(
                    f"host function {name!r} needs permission {fn.permission!r}, which the "
                    f"manifest does not grant", plugin=ctx.plugin)
            # The deadline rule for host functions: nothing starts once the call's time is
            # up (the runtime then ends the call as a PluginTimeout). Backends that wait
            # (SQLite, HTTP, SMTP) bound their waits by `chain.path().left()`.
            if chain.path().left() == 0:
                raise HostCallError(f"{name}: the call's deadline has passed",
                                    plugin=ctx.plugin)
            try:
                decoded = json.loads(args) if args.strip() else {}
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise HostCallError(f"{name}: arguments are not valid JSON: {exc}",
                                    plugin=ctx.plugin) from None
            try:
                result = fn.handler(ctx, decoded)
            except HostCallError:
                raise
            except Exception as exc:  # a backend failure is the plugin's error, not ours
                logger.debug("host function %s failed for %s", name, ctx.plugin, exc_info=True)
                raise HostCallError(f"{name} failed: {exc}", plugin=ctx.plugin) from exc
            try:  # strict JSON: what a Go or Rust plugin can parse
                return json.dumps(result, separators=(",", ":"), allow_nan=False).encode()
            except (TypeError, ValueError) as exc:
                raise HostCallError(f"{name}: result cannot be sent as JSON: {exc}",
                                    plugin=ctx.plugin) from None
        except HostCallError as exc:
            ctx.log.warning(f"host call refused: {exc.message}", source="host")
            raise


def default_host_functions(api: HostAPI | None = None,
                           settings: HostSettings | None = None) -> HostFunctions:
    """The built-in host functions (docs/plugin-authors.md), on `api`
    (default: `DefaultHostAPI(settings)`)."""
    from . import functions as f

    backend: HostAPI = api if api is not None else DefaultHostAPI(settings)
    resolved = settings or getattr(backend, "settings", None) or HostSettings()
    depth = resolved.max_call_depth
    table = HostFunctions(backend)
    table.register("log", f.log, permission="log")
    table.register("config_get", f.config_get, permission="config")
    table.register("translate", f.translate, permission=None)
    table.register("time_now", f.time_now, permission=None)
    for name, (permission, handler) in f.make_backend_functions(backend, resolved).items():
        table.register(name, handler, permission=permission)
    table.register("plugin_call", f.make_plugin_call(table, depth), permission="plugin.call")
    return table
