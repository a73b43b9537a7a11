"""The one protocol both runtimes implement, and what the loader hands them to load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from .deadline import Deadline
from .lifecycle import PluginState
from .logs import PluginLog
from .manifest import LoadedManifest, Manifest
from .registration import Registration

Kind = Literal["wasm", "grpc"]


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

        `timeout` (seconds) can only shorten the manifest's `call_timeout_ms`.
        Raises a `PluginCallError` subclass or `PluginUnavailable`.
        """
        ...

    def shutdown(self) -> None:
        """Release everything; bounded by `resources.shutdown_timeout_ms`."""
        ...
