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

if TYPE_CHECKING:  # the same names, for type checkers (`X as X` re-exports them)
    from .callers import Caller as Caller
    from .discovery import DiscoveredPlugin as DiscoveredPlugin
    from .errors import CallCycle as CallCycle
    from .errors import HostCallError as HostCallError
    from .errors import ManifestError as ManifestError
    from .errors import NameChanged as NameChanged
    from .errors import PermissionDenied as PermissionDenied
    from .errors import PlughostError as PlughostError
    from .errors import PluginABIError as PluginABIError
    from .errors import PluginCallError as PluginCallError
    from .errors import PluginDisabled as PluginDisabled
    from .errors import PluginLoadError as PluginLoadError
    from .errors import PluginNotFound as PluginNotFound
    from .errors import PluginResourceError as PluginResourceError
    from .errors import PluginTimeout as PluginTimeout
    from .errors import PluginTrap as PluginTrap
    from .errors import PluginUnavailable as PluginUnavailable
    from .errors import SignatureError as SignatureError
    from .host import DefaultHostAPI as DefaultHostAPI
    from .host import HostAPI as HostAPI
    from .host import HostContext as HostContext
    from .host import HostFunctions as HostFunctions
    from .host import HostSettings as HostSettings
    from .host import default_host_functions as default_host_functions
    from .lifecycle import Event as Event
    from .loader import Loader as Loader
    from .logs import LogRecord as LogRecord
    from .logs import PluginLog as PluginLog
    from .manager import Manager as Manager
    from .manager import PluginInfo as PluginInfo
    from .manifest import LoadedManifest as LoadedManifest
    from .manifest import Manifest as Manifest
    from .manifest import Resources as Resources
    from .manifest import load_manifest as load_manifest
    from .plugin import Plugin as Plugin
    from .plugin import PluginSource as PluginSource
    from .plugin import Runtime as Runtime
    from .plugin import StartContext as StartContext
    from .registration import Registration as Registration
    from .runtimes.sandbox import Sandbox as Sandbox
    from .runtimes.supervisor import RestartPolicy as RestartPolicy
    from .runtimes.wasm import WasmEngine as WasmEngine

_EXPORTS = {
    "Caller": ".callers",
    "DefaultHostAPI": ".host",
    "DiscoveredPlugin": ".discovery",
    "Event": ".lifecycle",
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
    "NameChanged": ".errors",
    "PermissionDenied": ".errors",
    "PlughostError": ".errors",
    "Plugin": ".plugin",
    "PluginABIError": ".errors",
    "PluginCallError": ".errors",
    "CallCycle": ".errors",
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
    "RestartPolicy": ".runtimes.supervisor",
    "Runtime": ".plugin",
    "Sandbox": ".runtimes.sandbox",
    "StartContext": ".plugin",
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

# One list: the lazy exports are the public surface.
__all__ = sorted(_EXPORTS)
