"""Typed errors. Every error names the plugin and, where there is one, the path and the cause.

Callers catch `PlughostError` for "anything plughost refused", or a subclass to act on one cause.
"""

from __future__ import annotations

from pathlib import Path


class PlughostError(Exception):
    """Base class: `plugin` and `path` say which plugin, `message` says what went wrong."""

    def __init__(
        self,
        message: str,
        *,
        plugin: str | None = None,
        path: str | Path | None = None,
    ) -> None:
        self.message = message
        self.plugin = plugin
        self.path = str(path) if path is not None else None
        super().__init__(message)

    def __str__(self) -> str:
        where = []
        if self.plugin:
            where.append(f"plugin {self.plugin!r}")
        if self.path:
            where.append(f"({self.path})")
        return f"{' '.join(where)}: {self.message}" if where else self.message


class ManifestError(PlughostError):
    """plugin.yaml (or a registration) breaks a rule; `field` names the offending key."""

    def __init__(
        self,
        message: str,
        *,
        plugin: str | None = None,
        path: str | Path | None = None,
        field: str | None = None,
    ) -> None:
        self.field = field
        if field:
            message = f"{field}: {message}"
        super().__init__(message, plugin=plugin, path=path)


class PluginNotFound(PlughostError):
    """No plugin of that name is registered or discovered."""


class PluginLoadError(PlughostError):
    """The plugin could not be loaded: bad module, missing export, failed init, ..."""


class NameChanged(PluginLoadError):
    """A reload's new version registers under another name: refused, the running version
    keeps serving (a bare module is named by its registration, once)."""


class SignatureError(PluginLoadError):
    """Signature verification is on and the plugin is unsigned, tampered or wrongly signed."""


class PluginUnavailable(PlughostError):
    """The plugin exists but cannot take calls right now (loading, crashed, shutting down)."""


class CallCycle(PluginUnavailable):
    """The plugin is already on this call path (a `plugin_call` cycle, a plugin calling
    itself, or a call into a plugin while it loads): entering it again is refused."""


class PluginDisabled(PluginUnavailable):
    """The plugin is loaded but disabled with `Manager.disable`."""


class PluginCallError(PlughostError):
    """A call failed inside the plugin: it reported an error, trapped, or broke the ABI."""

    def __init__(
        self,
        message: str,
        *,
        plugin: str | None = None,
        path: str | Path | None = None,
        function: str | None = None,
    ) -> None:
        self.function = function
        if function:
            message = f"{function}: {message}"
        super().__init__(message, plugin=plugin, path=path)


class PluginTrap(PluginCallError):
    """The wasm instance trapped (unreachable, out-of-bounds access, stack overflow...)."""


class PluginABIError(PluginCallError):
    """The plugin broke the ABI: a bad pointer/length, malformed JSON, a missing export."""


class PluginTimeout(PluginCallError):
    """The call ran past its deadline (`resources.call_timeout_ms` or the caller's timeout)."""


class PluginResourceError(PluginCallError):
    """The plugin hit a resource cap, such as `resources.memory_mb`."""


class HostCallError(PlughostError):
    """A host function refused or failed a plugin's request."""


class PermissionDenied(HostCallError):
    """The plugin asked for a host function its manifest does not grant."""


class AdminStateError(PlughostError):
    """The operator's admin state (adminstate.py) cannot be used, or one row of it is
    broken; names the file (and the plugin, for a row)."""

