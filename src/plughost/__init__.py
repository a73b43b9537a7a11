"""plughost: a plugin host for Python applications.

Discover, verify, load (eagerly or lazily), call, hot-reload atomically and unload plugins:
sandboxed WebAssembly modules (wasmtime, in-process) and, later, out-of-process gRPC
executables. Start with `Manager` (registry and calls) and `Loader` (a plugin directory).
"""

import logging

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
from .host import HostContext, HostFunctions, default_host_functions
from .loader import DiscoveredPlugin, Loader
from .logs import LogRecord, PluginLog
from .manager import Event, Manager, PluginInfo
from .manifest import LoadedManifest, Manifest, Resources, load_manifest
from .plugin import Plugin, PluginSource
from .registration import Registration
from .runtimes.wasm import WasmEngine

__version__ = "0.1.0"

# A library logs; the application decides where logs go.
logging.getLogger("plughost").addHandler(logging.NullHandler())

__all__ = [
    "DiscoveredPlugin",
    "Event",
    "HostCallError",
    "HostContext",
    "HostFunctions",
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
