"""The host-function table and its single entry point, `dispatch`."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import HostCallError
from ..logs import PluginLog
from ..plugin import PluginSource
from ..registration import Registration
from . import chain, gojson
from .api import DefaultHostAPI, HostAPI, HostSettings
from .grants import Grants, wire_text
from .i18n import Translations
from .policy import Limits, Policy, RateLimits, effective

logger = logging.getLogger(__name__)


class PluginCaller(Protocol):
    """What the host functions need from the registry a plugin runs in (the manager that
    loads it implements it): calling a plugin by name, the operator's policy for a plugin,
    and publishing a plugin's event to the application's listeners."""

    def call_raw(self, name: str, function: str, args: bytes, *,
                 timeout: float | None = None) -> bytes: ...

    def policy_for(self, name: str) -> Policy | None: ...

    def publish(self, plugin: str, channel: str, event_type: str, data: str) -> None: ...


@dataclass(frozen=True)
class HostContext:
    """Who is calling and what they may do. Built by the host from the manifest, the
    registration and the operator's policy, never from the plugin's word at call time."""

    plugin: str
    log: PluginLog
    #: what the plugin may do (host/grants.py); none until it has registered
    grants: Grants | None = None
    limits: Limits = field(default_factory=Limits)
    #: its rate windows, per load
    rates: RateLimits = field(default_factory=RateLimits)
    config: Mapping[str, Any] = field(default_factory=dict)
    #: the registration's i18n, for its own keys while it is not yet in the registry
    i18n: Mapping[str, Any] = field(default_factory=dict)
    #: the registry the plugin runs in, for `plugin_call` and `publish_event`: each
    #: plugin's own, so two managers sharing one table never route each other's calls
    caller: PluginCaller | None = None

    @property
    def granted(self) -> Grants:
        return self.grants if self.grants is not None else Grants(self.plugin, ())


def context_for(source: PluginSource, log: PluginLog, registration: Registration,
                caller: PluginCaller | None = None,
                rates: RateLimits | None = None) -> HostContext:
    """The host's view of a plugin once it has registered, for both runtimes: its declared
    permissions under the operator's policy (host/policy.py)."""
    policy = caller.policy_for(source.name) if caller is not None else None
    grants, limits = effective(source, registration, policy)
    return HostContext(plugin=source.name, log=log, grants=grants, limits=limits,
                       rates=rates or RateLimits(), config=dict(source.manifest.config),
                       i18n=dict(registration.i18n), caller=caller)


Handler = Callable[[HostContext, Any], Any]


@dataclass(frozen=True)
class Raw:
    """A handler's result that is already the bytes to answer with (plugin_call passes
    the target's answer through untouched)."""

    data: bytes


_raw: ContextVar[bytes] = ContextVar("plughost_host_call_args", default=b"")


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def raw_args() -> bytes:
    """The undecoded arguments of the host call being handled (for a handler that passes
    part of them on unchanged, as `plugin_call` does)."""
    return _raw.get()


#: plughost's older permission names for an application's host functions
_FLAT = {"db.read": ("db", "read"), "db.write": ("db", "write"), "plugin.call":
         ("plugin_call", ""), "file.read": ("file", "read"), "file.write": ("file", "write")}


@dataclass(frozen=True)
class HostFunction:
    name: str
    #: the permission type it needs (GoatFlow's `db`, `http`, ... or the application's
    #: own, such as `ticket`); None: open to every plugin
    permission: str | None
    handler: Handler  # decoded JSON args -> JSON-able result (or `Raw`)
    #: the access it needs: "read", "write", another word, or "" (any entry of the type)
    access: str = ""
    #: the handler checks the grant itself, with the scope (http hosts, email recipients,
    #: config keys, plugin_call targets), so it words the refusal with what was asked
    scoped: bool = False


class HostFunctions:
    """The table of host functions. Applications may register their own."""

    def __init__(self, api: HostAPI | None = None) -> None:
        self.api = api
        self._table: dict[str, HostFunction] = {}
        self._lock = threading.Lock()
        self.translations = Translations()

    def register(self, name: str, handler: Handler, *, permission: str | None,
                 access: str = "", scoped: bool = False) -> None:
        """Add (or replace) host function `name`. `permission` is the type a plugin must be
        granted (`{type: <permission>, access: <access>}` in its manifest); an older flat
        name (`db.read`) is read as its type and access."""
        if permission in _FLAT and not access:
            permission, access = _FLAT[permission]
        with self._lock:
            self._table[name] = HostFunction(name, permission, handler, access, scoped)

    def names(self) -> list[str]:
        return sorted(self._table)

    def get(self, name: str) -> HostFunction | None:
        return self._table.get(name)

    def dispatch(self, ctx: HostContext, name: str, args: bytes) -> bytes:
        """Run host function `name` for `ctx.plugin`; JSON in, JSON out (as Go writes it).

        Every refusal raises `HostCallError` (or `PermissionDenied`) and is a line in the
        plugin's log, `host_call <fn> failed: <why>`, so an author can see why a call came
        back empty (a wasm guest gets 0, a gRPC plugin the text).
        """
        try:
            fn = self._table.get(name)
            if fn is None:
                raise HostCallError(f"unknown host API method: {name}", plugin=ctx.plugin)
            if fn.permission is not None and not fn.scoped:
                ctx.granted.require(fn.permission, fn.access)
            # The deadline rule for host functions: nothing starts once the call's time is
            # up (the runtime then ends the call as a PluginTimeout). Backends that wait
            # (SQLite, HTTP, SMTP) bound their waits by `chain.path().left()`.
            if chain.path().left() == 0:
                raise HostCallError(f"{name}: the call's deadline has passed",
                                    plugin=ctx.plugin)
            try:
                decoded = json.loads(args, parse_constant=_not_json) if args.strip() else {}
            except RecursionError:
                raise HostCallError(f"{name}: arguments are not valid JSON: they nest too "
                                    "deeply",
                                    plugin=ctx.plugin) from None
            except ValueError as exc:  # bad JSON or UTF-8, NaN, a number of 4,300+ digits
                raise HostCallError(f"{name}: arguments are not valid JSON: "
                                    f"{str(exc)[:200]}", plugin=ctx.plugin) from None
            token = _raw.set(args)
            try:
                result = fn.handler(ctx, decoded)
            except HostCallError:
                raise
            except Exception as exc:  # a backend failure is the plugin's error, not ours
                logger.debug("host function %s failed for %s", name, ctx.plugin, exc_info=True)
                # an OSError's text names host paths: the plugin gets its cause only
                why = exc.strerror or type(exc).__name__ if isinstance(exc, OSError) else exc
                raise HostCallError(f"{name} failed: {why}", plugin=ctx.plugin) from exc
            finally:
                _raw.reset(token)
            if isinstance(result, Raw):
                return result.data
            try:  # strict JSON, Go's bytes: what a Go plugin gets from GoatFlow
                return gojson.dumps(result)
            except (TypeError, ValueError) as exc:
                raise HostCallError(f"{name}: result cannot be sent as JSON: {exc}",
                                    plugin=ctx.plugin) from None
        except HostCallError as exc:
            ctx.log.error(f"host_call {name} failed: {wire_text(exc)}", source="host")
            raise


def default_host_functions(api: HostAPI | None = None,
                           settings: HostSettings | None = None) -> HostFunctions:
    """The built-in host functions (docs/plugin-authors.md), on `api`
    (default: `DefaultHostAPI(settings)`)."""
    from functools import partial

    from . import functions as f
    from .io_functions import PERMISSIONS, make_io_functions

    backend: HostAPI = api if api is not None else DefaultHostAPI(settings)
    resolved = settings or getattr(backend, "settings", None) or HostSettings()
    table = HostFunctions(backend)
    for name, handler in (("log", f.log), ("time_now", f.time_now), ("org_id", f.org_id),
                          ("translate", f.make_translate(table)),
                          ("publish_event", f.publish_event),
                          *f.make_secure_config(backend).items()):
        table.register(name, handler, permission=None)
    table.register("config_get", partial(f.config_get, app_config=dict(resolved.app_config)),
                   permission="config", access="read", scoped=True)
    for name, handler in make_io_functions(backend, resolved).items():
        type_, access, scoped = PERMISSIONS[name]
        table.register(name, handler, permission=type_, access=access, scoped=scoped)
    table.register("plugin_call", f.make_plugin_call(resolved.max_call_depth),
                   permission="plugin_call", scoped=True)
    return table
