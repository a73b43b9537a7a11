"""Discovery: walk a plugin tree and say what is there, without loading anything
(the layout rules are in docs/plugin-authors.md).

- A directory holding plugin.yaml is one plugin and owns its whole subtree.
- Any other `<name>.wasm` is a wasm plugin named by its file; `<name>.zip` a package.
- Hidden entries and editors' temp files are skipped.
- Problems (a broken manifest, a bad name, two plugins with one name, a FIFO where a file
  belongs) are recorded on the entry, never skipped silently. Whatever goes wrong with one
  entry, even an exception nobody foresaw, is that entry's error: the scan goes on.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ManifestError, PlughostError, PluginLoadError, PluginNotFound
from .inputs import MANIFEST_MAX_BYTES, MODULE_MAX_BYTES, check_regular, describe, read_regular
from .manifest import MANIFEST_FILE, LoadedManifest, Manifest, is_valid_name, load_manifest
from .plugin import Kind
from .yaml_input import load_yaml

logger = logging.getLogger(__name__)

_TEMP_SUFFIXES = (".swp", ".swx", ".swo", ".tmp", ".temp", ".part", ".crdownload", ".bak",
                  ".orig", ".rej", "~")


def is_ignored(name: str) -> bool:
    """Hidden files and the temp files editors and downloaders leave while writing."""
    return (name.startswith((".", "#", "~$")) or name.endswith(_TEMP_SUFFIXES)
            or name == "4913")  # vim's write-permission probe


@dataclass(frozen=True)
class Found:
    """One discovery result. `error` is set when the entry cannot be loaded as it is."""

    name: str
    path: Path  # the .wasm/.zip file or the plugin directory
    kind: Kind
    manifest: LoadedManifest | None = None
    error: PlughostError | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)


def scan(root: Path) -> list[Found]:
    """Walk `root`; return every plugin found, broken ones included, sorted by name."""
    found: list[Found] = []
    root = Path(root)
    if (root / MANIFEST_FILE).is_file():
        found.append(_guarded(root, root.name, _plugin_dir))
    else:
        _walk(root, found)
    return _mark_duplicates(found)


def _walk(directory: Path, out: list[Found]) -> None:
    try:
        with os.scandir(directory) as it:
            entries = [e for e in it if not e.name.startswith(".")]
    except OSError:
        return
    for e in entries:
        try:
            is_dir = e.is_dir(follow_symlinks=False)
        except OSError:
            continue
        if not is_dir and is_ignored(e.name):
            continue
        if is_dir:
            sub = Path(e.path)
            if os.path.lexists(os.path.join(e.path, MANIFEST_FILE)):
                out.append(_guarded(sub, sub.name, _plugin_dir))
            else:
                _walk(sub, out)
        elif e.name.endswith(".wasm"):
            out.append(_guarded(Path(e.path), e.name[:-5], _module_file))
        elif e.name.endswith(".zip"):
            out.append(_guarded(Path(e.path), e.name[:-4], _package))


def _guarded(path: Path, name: str, read: Callable[[Path, str], Found]) -> Found:
    """One entry's discovery; any exception is that entry's error, never the scan's."""
    try:
        return read(path, name)
    except Exception as exc:
        logger.exception("unexpected error discovering %s", path)
        return Found(name, path, "wasm", error=PluginLoadError(
            f"cannot be discovered: {type(exc).__name__}: {exc}", plugin=name, path=path))


def _module_file(path: Path, name: str) -> Found:
    found = single_file(path, name, "wasm")
    if found.error is None:
        try:
            check_regular(path)
        except OSError as exc:  # a FIFO, socket, device or a symlink to one
            return replace(found, error=PluginLoadError(describe(exc), plugin=name,
                                                        path=path))
    return found


def single_file(path: Path, name: str, kind: Kind) -> Found:
    if not is_valid_name(name):
        return Found(name, path, kind, error=ManifestError(
            f"file name {path.name!r} is not a valid plugin name ([a-z0-9][a-z0-9._-]{{0,63}})",
            plugin=name, path=path))
    return Found(name, path, kind)


def _package(path: Path, name: str) -> Found:
    """A `.zip` package: named by its file; its kind is peeked from the manifest inside
    (the package is only unpacked, with every check, when it is loaded)."""
    found = single_file(path, name, "wasm")
    if found.error is not None:
        return found
    try:
        with zipfile.ZipFile(io.BytesIO(read_regular(path, MODULE_MAX_BYTES))) as zf:
            info = zf.getinfo("plugin.yaml")
            if info.file_size > MANIFEST_MAX_BYTES:
                raise ValueError("plugin.yaml is too large")
            with zf.open(info) as f:
                text = f.read(MANIFEST_MAX_BYTES + 1)  # the header's size may lie
            if len(text) > MANIFEST_MAX_BYTES:
                raise ValueError("plugin.yaml is too large")
        data = load_yaml(text.decode("utf-8"), plugin=name, path=path)
        runtime = data.get("runtime") if isinstance(data, dict) else None
        if runtime is None and isinstance(data, dict) and "binary" in data:
            runtime = "grpc"
    except ManifestError as exc:
        return replace(found, error=PluginLoadError(
            f"package's plugin.yaml: {exc.message}", plugin=name, path=path))
    except OSError as exc:
        return replace(found, error=PluginLoadError(
            f"package cannot be read: {describe(exc)}", plugin=name, path=path))
    except Exception as exc:  # corrupt, encrypted, exotic: whatever zipfile and zlib raise
        return replace(found, error=PluginLoadError(
            f"package has no readable plugin.yaml ({type(exc).__name__}: {exc})",
            plugin=name, path=path))
    return replace(found, kind="grpc" if runtime == "grpc" else "wasm")


def _plugin_dir(path: Path, name: str | None = None) -> Found:
    try:
        lm = load_manifest(path)
    except ManifestError as exc:
        return Found(exc.plugin or path.name, path, "wasm", error=exc)
    return Found(lm.name, path, lm.manifest.runtime, manifest=lm, warnings=lm.warnings)


def _mark_duplicates(found: list[Found]) -> list[Found]:
    by_name: dict[str, list[Found]] = {}
    for f in found:
        by_name.setdefault(f.name, []).append(f)
    out = []
    for name, group in sorted(by_name.items()):
        if len(group) == 1:
            out.append(group[0])
            continue
        paths = ", ".join(str(g.path) for g in group)
        for g in group:
            out.append(replace(g, error=ManifestError(
                f"{len(group)} plugins share this name ({paths}); none is loaded until "
                "the conflict is resolved", plugin=name, path=g.path)))
    return out


def bare_manifest(name: str) -> Manifest:
    """The defaults a single `<name>.wasm` runs with (it has no plugin.yaml)."""
    return Manifest(name=name, runtime="wasm")


def scan_single(path: Path, name: str) -> Found:
    """Discovery of one file given by path (used by `load_wasm_from_path`)."""
    if not path.is_file():
        return Found(name, path, "wasm", error=PluginNotFound("no such file", plugin=name,
                                                              path=path))
    return single_file(path, name, "wasm")
