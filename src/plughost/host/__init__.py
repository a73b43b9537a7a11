"""Host functions: what a plugin may ask of the host, behind its permissions
(docs/plugin-authors.md, "Host functions").

One table serves both runtimes: wasm's `gk.host_call` and grpc's `Host.HostCall` both end in
`HostFunctions.dispatch`.
"""

from .api import DefaultHostAPI, HostAPI, HostSettings
from .dispatch import (
    HostContext,
    HostFunction,
    HostFunctions,
    PluginCaller,
    context_for,
    default_host_functions,
)

__all__ = [
    "DefaultHostAPI",
    "HostAPI",
    "HostContext",
    "HostFunction",
    "HostFunctions",
    "HostSettings",
    "PluginCaller",
    "context_for",
    "default_host_functions",
]
