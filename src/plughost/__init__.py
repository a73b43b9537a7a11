"""plughost: a plugin host for Python applications.

Discover, verify, load (eagerly or lazily), call, hot-reload atomically and unload plugins:
sandboxed WebAssembly modules (wasmtime, in-process) and out-of-process gRPC executables.
Start with `Manager` (registry and calls) and `Loader` (a plugin directory); `plughost.sdk`
is for authors of Python grpc plugins; `plughost.server` serves it all over HTTP.

Names are imported on first use, so a grpc plugin importing `plughost.sdk` does not pay
for the host's imports (wasmtime, pydantic, ...) at every start.
"""

import importlib
import logging
import os
from typing import TYPE_CHECKING, Any

# plughost forks only to exec plugin processes at once; gRPC's fork handlers (meant for
# children that keep using gRPC) would only print warnings. Must be set before gRPC loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

if TYPE_CHECKING:
    from .errors import (
        HostCallError,
        ManifestError,
        PermissionDenied,
        PlughostError,
        PluginABIError,
        PluginCallError,
        PluginDisabled,
        PluginLoadError,
        PluginNotFound,
        PluginResourceError,
        PluginTimeout,
        PluginTrap,
        PluginUnavailable,
        SignatureError,
    )
    from .host import (
        DefaultHostAPI,
        HostAPI,
        HostContext,
        HostFunctions,
        HostSettings,
        default_host_functions,
    )
    from .loader import DiscoveredPlugin, Loader
    from .logs import LogRecord, PluginLog
    from .manager import Event, Manager, PluginInfo
    from .manifest import LoadedManifest, Manifest, Resources, load_manifest
    from .plugin import Plugin, PluginSource
    from .registration import Registration
    from .runtimes.wasm import WasmEngine

_EXPORTS = {
    "DefaultHostAPI": ".host",
    "DiscoveredPlugin": ".loader",
    "Event": ".manager",
    "HostAPI": ".host",
    "HostCallError": ".errors",
    "HostContext": ".host",
    "HostFunctions": ".host",
    "HostSettings": ".host",
    "LoadedManifest": ".manifest",
    "Loader": ".loader",
    "LogRecord": ".logs",
    "Manager": ".manager",
    "Manifest": ".manifest",
    "ManifestError": ".errors",
    "PermissionDenied": ".errors",
    "PlughostError": ".errors",
    "Plugin": ".plugin",
    "PluginABIError": ".errors",
    "PluginCallError": ".errors",
    "PluginDisabled": ".errors",
    "PluginInfo": ".manager",
    "PluginLoadError": ".errors",
    "PluginLog": ".logs",
    "PluginNotFound": ".errors",
    "PluginResourceError": ".errors",
    "PluginSource": ".plugin",
    "PluginTimeout": ".errors",
    "PluginTrap": ".errors",
    "PluginUnavailable": ".errors",
    "Registration": ".registration",
    "Resources": ".manifest",
    "SignatureError": ".errors",
    "WasmEngine": ".runtimes.wasm",
    "default_host_functions": ".host",
    "load_manifest": ".manifest",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'plughost' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

# A library logs; the application decides where logs go.
logging.getLogger("plughost").addHandler(logging.NullHandler())

__all__ = [
    "DefaultHostAPI",
    "DiscoveredPlugin",
    "Event",
    "HostAPI",
    "HostCallError",
    "HostContext",
    "HostFunctions",
    "HostSettings",
    "LoadedManifest",
    "Loader",
    "LogRecord",
    "Manager",
    "Manifest",
    "ManifestError",
    "PermissionDenied",
    "PlughostError",
    "Plugin",
    "PluginABIError",
    "PluginCallError",
    "PluginDisabled",
    "PluginInfo",
    "PluginLoadError",
    "PluginLog",
    "PluginNotFound",
    "PluginResourceError",
    "PluginSource",
    "PluginTimeout",
    "PluginTrap",
    "PluginUnavailable",
    "Registration",
    "Resources",
    "SignatureError",
    "WasmEngine",
    "__version__",
    "default_host_functions",
    "load_manifest",
]
