"""Discovery: walk a plugin tree and say what is there, without loading anything
(the layout rules are in docs/plugin-authors.md).

- A directory holding plugin.yaml is one plugin and owns its whole subtree.
- Any other `.wasm` file (the extension in any case) is a bare wasm plugin. It is named by
  its registration, as GoatFlow names it: until the loader has asked it (`gk_register`),
  its file stem is a *provisional* name (`Found.provisional`), which never blocks a named
  plugin. `names` tells `scan` the registered names the loader already knows, by path.
- A `.zip` is a package, named by the `name` in its plugin.yaml (its file stem without one).
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
from collections.abc import Callable, Mapping
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
    #: a bare module whose registered name is not known yet: `name` is its file stem
    provisional: bool = False

    @property
    def bare(self) -> bool:
        """A `.wasm` file with no manifest: its registration names it."""
        return self.manifest is None and self.path.suffix.lower() == ".wasm"


def scan(root: Path, names: Mapping[Path, str] | None = None) -> list[Found]:
    """Walk `root`; return every plugin found, broken ones included, sorted by name.

    `names`: registered names of bare modules, by path (what the loader has learnt)."""
    return resolve(walk(root), names or {})


def walk(root: Path) -> list[Found]:
    """Every entry under `root`, bare modules under provisional names, no duplicate check."""
    found: list[Found] = []
    root = Path(root)
    if (root / MANIFEST_FILE).is_file():
        found.append(_guarded(root, root.name, _plugin_dir))
    else:
        _walk(root, found)
    return found


def resolve(walked: list[Found], names: Mapping[Path, str],
            holders: Mapping[str, Path] | None = None) -> list[Found]:
    """`walk`'s entries with the bare modules' known names, and duplicates refused.

    `holders`: the path each loaded plugin was loaded from, by name: a bare module that
    holds a name keeps it against bare newcomers."""
    return _mark_duplicates([replace(f, name=names[f.path], provisional=False)
                             if f.provisional and f.path in names else f for f in walked],
                            holders or {})


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
        elif e.name.lower().endswith(".wasm"):
            # GoatFlow's provisional name: the stem, with only a lower-case `.wasm` cut
            stem = e.name[:-5] if e.name.endswith(".wasm") else e.name
            out.append(_guarded(Path(e.path), stem, _module_file))
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
    # No name check: the stem is provisional, the registration's name is checked instead.
    found = Found(name, path, "wasm", provisional=True)
    try:
        check_regular(path)
    except OSError as exc:  # a FIFO, socket, device or a symlink to one
        return replace(found, error=PluginLoadError(describe(exc), plugin=name, path=path))
    return found


def single_file(path: Path, name: str, kind: Kind) -> Found:
    if not is_valid_name(name):
        return Found(name, path, kind, error=ManifestError(
            f"file name {path.name!r} is not a valid plugin name ([a-z0-9][a-z0-9._-]{{0,63}})",
            plugin=name, path=path))
    return Found(name, path, kind)


def _package(path: Path, name: str) -> Found:
    """A `.zip` package: named and typed by the manifest inside, peeked at here (the
    package is only unpacked, with every check, when it is loaded). The manifest is the
    first entry named plugin.yaml in any folder, as GoatFlow packs it."""
    found = Found(name, path, "wasm")
    try:
        with zipfile.ZipFile(io.BytesIO(read_regular(path, MODULE_MAX_BYTES))) as zf:
            info = package_manifest(zf)
            if info.file_size > MANIFEST_MAX_BYTES:
                raise ValueError("plugin.yaml is too large")
            with zf.open(info) as f:
                text = f.read(MANIFEST_MAX_BYTES + 1)  # the header's size may lie
            if len(text) > MANIFEST_MAX_BYTES:
                raise ValueError("plugin.yaml is too large")
        data = load_yaml(text.decode("utf-8"), plugin=name, path=path)
        declared = data.get("name") if isinstance(data, dict) else None
        folder = info.filename.rsplit("/", 2)[-2] if "/" in info.filename else ""
        if isinstance(declared, str) and declared:
            found = replace(found, name=declared)
        elif folder:  # no name: the manifest's folder names it, as for a plugin dir
            found = replace(found, name=folder)
        runtime = data.get("runtime") if isinstance(data, dict) else None
        if runtime is None and isinstance(data, dict) and "binary" in data:
            runtime = "grpc"
        runtime = runtime.lower() if isinstance(runtime, str) else runtime
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
    bad = single_file(path, found.name, "wasm").error
    if bad is not None:
        return replace(found, error=bad)
    kind: Kind = "grpc" if runtime == "grpc" else "template" if runtime == "template" \
        else "wasm"
    return replace(found, kind=kind)


def package_manifest(zf: zipfile.ZipFile) -> zipfile.ZipInfo:
    """The package's plugin.yaml: the first entry of that base name, in any folder."""
    for info in zf.infolist():
        if not info.is_dir() and info.filename.rsplit("/", 1)[-1] == MANIFEST_FILE:
            return info
    raise KeyError("package missing plugin.yaml")


def _plugin_dir(path: Path, name: str | None = None) -> Found:
    try:
        lm = load_manifest(path)
    except ManifestError as exc:
        return Found(exc.plugin or path.name, path, "wasm", error=exc)
    return Found(lm.name, path, lm.manifest.runtime, manifest=lm, warnings=lm.warnings)


def _mark_duplicates(found: list[Found], holders: Mapping[str, Path]) -> list[Found]:
    """One name, one plugin.

    - Plugins named by a manifest (dirs, packages) that share a name are all refused.
    - A bare module whose registration takes such a plugin's name is refused and the other
      plugin keeps it: a file dropped in cannot take a name away.
    - Bare modules registering one name between them are all refused, unless one of them
      holds it (is loaded under it): then only the others are.
    - A provisional name claims nothing (the loader learns the module's real name).
    Named entries come first within a name, so a lookup by name finds them.
    """
    by_name: dict[str, list[Found]] = {}
    for f in found:
        by_name.setdefault(f.name, []).append(f)
    out: list[Found] = []
    for name, entries in sorted(by_name.items()):
        named = [g for g in entries if not g.bare]
        bare = [g for g in entries if g.bare and not g.provisional]
        out.extend(_refused_together(named, name))
        holder = [g for g in bare if holders.get(name) == g.path]
        keeper = named or holder
        if keeper:
            paths = ", ".join(str(g.path) for g in keeper)
            out.extend(holder if not named else [])
            out.extend(replace(g, error=ManifestError(
                f"registers as {name!r}, the name of the plugin at {paths}; it is not "
                "loaded (a plugin's name belongs to the plugin that has it)",
                plugin=name, path=g.path)) for g in bare if g not in keeper)
        else:
            out.extend(_refused_together(bare, name))
        out.extend(g for g in entries if g.provisional)
    return out


def _refused_together(group: list[Found], name: str) -> list[Found]:
    if len(group) <= 1:
        return group
    paths = ", ".join(str(g.path) for g in group)
    return [replace(g, error=ManifestError(
        f"{len(group)} plugins share this name ({paths}); none is loaded until the "
        "conflict is resolved", plugin=name, path=g.path)) for g in group]


def bare_manifest(name: str) -> Manifest:
    """The defaults a bare `.wasm` runs with (it has no plugin.yaml). `name` may be a
    provisional file stem, which need not be a valid plugin name: its registration's is."""
    return Manifest(name="bare", runtime="wasm").model_copy(update={"name": name})


def scan_single(path: Path, name: str) -> Found:
    """Discovery of one file given by path (used by `load_wasm_from_path`)."""
    if not path.is_file():
        return Found(name, path, "wasm", error=PluginNotFound("no such file", plugin=name,
                                                              path=path))
    return single_file(path, name, "wasm")


@dataclass(frozen=True)
class DiscoveredPlugin:
    """A plugin found on disk; `loaded`/`loaded_at` are read from the manager's registry.

    `error` is why it cannot serve: its discovery error, else its last failed load (while it
    is not loaded; a version still serving after a failed reload is not an error here).
    """

    name: str
    path: Path
    type: Kind
    loaded: bool
    loaded_at: float | None
    manifest: Manifest | None
    error: PlughostError | None
    warnings: tuple[str, ...] = field(default_factory=tuple)
