"""The seam between the loader and the runtimes: what the loader hands a runtime to
start (`Staged`, `StartContext`), the `Runtime` that starts it, and the `Plugin` it gives
back. The loader knows runtimes only through this module."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from .deadline import Deadline
from .lifecycle import EventKind, PluginState
from .logs import PluginLog
from .manifest import LoadedManifest, Manifest
from .registration import Registration

if TYPE_CHECKING:
    from .host import HostFunctions, PluginCaller

Kind = Literal["wasm", "grpc", "template"]


@dataclass(frozen=True)
class PluginSource:
    """Everything a runtime needs to start one version of a plugin."""

    name: str
    kind: Kind
    path: Path  # what was discovered: the .wasm/.zip file or the plugin directory
    plugin_dir: Path  # where this version runs from (a private copy when verified/unpacked)
    entry: Path  # the module or executable
    manifest: Manifest
    loaded_manifest: LoadedManifest | None  # None for a bare <name>.wasm
    private_dir: Path | None = None  # owned by this version; removed when it is retired
    #: The canonical listing digest of `plugin_dir` when it was staged (private copies
    #: only): a process is started from it only while it still matches.
    pinned_digest: bytes | None = None

    @property
    def has_manifest(self) -> bool:
        return self.loaded_manifest is not None


class Plugin(Protocol):
    """A loaded, initialised plugin. Calls may come from many threads at once."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> Kind: ...

    @property
    def source(self) -> PluginSource: ...

    @property
    def registration(self) -> Registration: ...

    @property
    def log(self) -> PluginLog: ...

    @property
    def state(self) -> PluginState:
        """See `plughost.lifecycle.PluginState` (a wasm plugin runs until shut down)."""
        ...

    def call(self, function: str, args: bytes, *, deadline: Deadline | None = None) -> bytes:
        """Run `function` with JSON `args`; return the JSON result (b"" for none).

        `deadline` is made once per call by the manager, already capped by the
        manifest's `call_timeout_ms`, and is honoured as given; a direct call without one
        gets `call_timeout_ms`.
        Raises a `PluginCallError` subclass or `PluginUnavailable`.
        """
        ...

    def shutdown(self) -> None:
        """Release everything, its private copy included; bounded by
        `resources.shutdown_timeout_ms`."""
        ...


@dataclass(frozen=True)
class Staged:
    """One version, verified and ready to start."""

    source: PluginSource
    module: bytes | None  # a wasm module's verified bytes (None for grpc)
    note: str | None = None  # e.g. "unsigned", for the plugin's log once it has loaded


def _no_events(kind: EventKind, detail: str) -> None:
    pass


@dataclass(frozen=True)
class StartContext:
    """What a runtime needs from the host to start one version of a plugin."""

    host: HostFunctions  # the table its host calls dispatch to
    log: PluginLog  # its log (it outlives versions)
    #: where `plugin_call` goes: the manager the plugin will be registered in
    caller: PluginCaller | None = None
    #: lifecycle events a runtime reports by itself (a gRPC crash, restart, open circuit)
    on_event: Callable[[EventKind, str], None] = _no_events
    verified: bool = False  # the bytes passed a signature check


@runtime_checkable
class Identifying(Protocol):
    """A runtime that can start a file with no manifest (a bare `.wasm`), which is named by
    its registration: `identify` says the name it registers with, before it is started
    for real under that name."""

    def identify(self, staged: Staged, context: StartContext) -> str: ...


class Runtime(Protocol):
    """Starts plugins of one kind. The loader holds one per kind (`Loader(runtimes=...)`);
    the constructor must not start anything."""

    @property
    def kind(self) -> str: ...

    def start(self, staged: Staged, context: StartContext) -> Plugin:
        """Start one version. On failure it raises a PlughostError naming the plugin and
        leaves nothing behind (its private copy removed); on success the plugin owns the
        copy and removes it in `shutdown()`."""
        ...

    def close(self) -> None:
        """Release what the runtime itself holds (an engine, threads); after every plugin
        it started has shut down."""
        ...
