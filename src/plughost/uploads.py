"""Installing an uploaded plugin, and uninstalling one (docs/operations.md, "Uploads"): a
`.wasm` module or a `.zip` package, written into the plugin directory atomically, then
loaded or reloaded through the loader, so it is verified like every other load (manifest,
signatures, registration, collisions).

- A `.wasm` file becomes `<plugin dir>/<its base name>` (GoatFlow's rule); the module is
  named by its registration, as any bare module.
- A `.zip` is unpacked into a private directory first with the package checks (no `..`,
  no links, size and ratio caps), which also yields its manifest's name. It then replaces
  the plugin where it lives: an existing `<name>/` directory is swapped for the new one in
  one step (`renameat2(RENAME_EXCHANGE)`), an existing `<name>.zip` package is replaced,
  and a new plugin becomes `<name>/` (as GoatFlow unpacks it).
- If the new version fails to load, the previous files are put back (the running version
  never stopped serving) and the upload is refused with the load's error; a new plugin's
  files are removed. Nothing of a refused upload stays in the plugin directory.

Work files are hidden (`.upload_*`), so discovery never sees a half-written upload.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import ManifestError, PlughostError, PluginLoadError, PluginNotFound
from .loader import Loader
from .manifest import is_valid_name, load_manifest
from .packaging import extract
from .signing import sidecar

logger = logging.getLogger(__name__)

WASM_MAGIC = b"\0asm"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class UploadRefused(PluginLoadError):
    """The upload is not a plugin plughost will install; says why."""


@dataclass(frozen=True)
class Installed:
    name: str
    path: Path
    runtime: str
    size: int
    replaced: bool  # an earlier version was there


def _base_name(filename: str) -> str:
    """The file's own name, whatever path a client sent with it."""
    return PurePosixPath(PureWindowsPath(filename).name).name


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2); False where it is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b),
                 _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _write_hidden(directory: Path, data: bytes, tag: str) -> Path:
    tmp = directory / f".upload_{tag}.{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _remove(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class _Swap:
    """`new` put at `target`; the previous `target` kept aside until `commit` (deleted)
    or `rollback` (put back)."""

    def __init__(self, new: Path, target: Path) -> None:
        self.target = target
        self.aside: Path | None = None
        exists = target.exists() or target.is_symlink()
        if exists and new.is_dir() and target.is_dir() and not target.is_symlink() \
                and _exchange(new, target):
            self.aside = new  # swapped in one step: the old directory is at the hidden name
            return
        if exists:
            self.aside = target.with_name(f".upload_prev_{target.name}."
                                          f"{secrets.token_hex(6)}")
            if target.is_file() and not new.is_dir():
                os.link(target, self.aside)  # the old file stays reachable...
            else:
                os.rename(target, self.aside)  # (no atomic swap here: a brief gap)
        os.replace(new, target)  # ...while the new one takes its name in one step

    def commit(self) -> None:
        if self.aside is not None:
            _remove(self.aside)

    def rollback(self) -> None:
        if self.aside is None:
            _remove(self.target)
            return
        if self.aside.is_dir() and self.target.is_dir() and _exchange(self.aside,
                                                                      self.target):
            _remove(self.aside)
            return
        _remove(self.target)
        os.rename(self.aside, self.target)


def install(loader: Loader, filename: str, data: bytes) -> Installed:
    """Install `data` (an uploaded `filename`) and load or reload it. UploadRefused for
    what is no plugin; the loader's own error (PlughostError) when it does not load, with
    the plugin directory as it was."""
    directory = loader.plugin_dir
    base = _base_name(filename)
    lower = base.lower()
    if lower.endswith(".wasm"):
        stem = base[:-5]
        if not is_valid_name(stem):
            raise UploadRefused(f"{base!r} is not a plugin file name (a plugin name and "
                                ".wasm)", path=directory / base if base else directory)
        if not data.startswith(WASM_MAGIC):
            raise UploadRefused("not a WebAssembly module (bad magic bytes)", plugin=stem)
        new = _write_hidden(directory, data, stem)
        target, name, runtime = directory / f"{stem}.wasm", stem, "wasm"
    elif lower.endswith(".zip"):
        new = directory / f".upload_{secrets.token_hex(6)}"
        try:
            root = extract(data, new, plugin=base[:-4] or "upload", source=directory / base)
            manifest = load_manifest(root)
        except ManifestError as exc:
            _remove(new)
            raise UploadRefused(f"the package's plugin.yaml: {exc.message}",
                                plugin=exc.plugin) from None
        except PluginLoadError:
            raise
        name = manifest.manifest.name
        if root != new:  # GoatFlow packs under one top folder: that folder is the plugin
            inner = directory / f".upload_{name}.{secrets.token_hex(6)}"
            os.rename(root, inner)
            _remove(new)
            new = inner
        runtime = manifest.manifest.runtime
        package = directory / f"{name}.zip"
        if package.exists():  # a package plugin stays a package
            _remove(new)
            new = _write_hidden(directory, data, name)
            target = package
        else:
            target = directory / name
    else:
        raise UploadRefused(f"{base!r}: only .wasm and .zip plugins can be uploaded",
                            path=directory)
    replaced = target.exists()
    # a bare module already known by its registration keeps that name
    name = next((d.name for d in loader.discovered_plugins() if d.path == target), name)
    elsewhere = [d.path for d in loader.discovered_plugins()
                 if d.name == name and d.path != target]
    if elsewhere:
        _remove(new)
        raise UploadRefused(f"plugin {name!r} is installed from {elsewhere[0]}; upload it "
                            "in that form, or uninstall it first", plugin=name)
    try:
        swap = _Swap(new, target)
    except OSError as exc:
        _remove(new)
        raise PluginLoadError(f"cannot install the upload: {exc.strerror}", plugin=name,
                              path=target) from None
    try:
        loader.load_or_reload(name)
    except PlughostError:
        swap.rollback()
        loader.discover_all()  # forget the refused files
        raise
    # a bare module is named by its registration, not by its file
    name = next((d.name for d in loader.discovered_plugins() if d.path == target), name)
    serving = loader.manager.get(name)
    if serving is None or Path(serving.source.path).resolve() != target.resolve():
        # the name is served from other files (`<name>/` beside an uploaded `<name>.wasm`):
        # the upload would sit there as a duplicate, never serving
        swap.rollback()
        loader.discover_all()
        where = serving.source.path if serving is not None else "elsewhere"
        raise UploadRefused(f"plugin {name!r} is installed from {where}; upload it in that "
                            "form, or uninstall it first", plugin=name)
    swap.commit()
    logger.info("installed upload %s as %s (%s)", base, target, name)
    return Installed(name, target, runtime, len(data), replaced)


def uninstall(loader: Loader, name: str) -> list[Path]:
    """Unload `name`, remove its files from the plugin directory (its directory, module
    or package, and a module's signature beside it) and the operator's state for it;
    returns what was removed. PluginNotFound when nothing of that name is known."""
    if not is_valid_name(name):
        raise UploadRefused("invalid plugin name", path=loader.plugin_dir)
    paths = [d.path for d in loader.discovered_plugins() if d.name == name]
    manager = loader.manager
    if not paths and manager.get(name) is None:
        raise PluginNotFound("no such plugin is loaded or discovered", plugin=name)
    loader.forget(name)  # unloads it
    if manager.get(name) is not None:  # registered by other means
        manager.unregister(name)
    root = loader.plugin_dir.resolve()
    removed: list[Path] = []
    for path in paths:
        # Where the entry itself is, its last part not followed: a symlink inside the
        # plugin dir is removed as a link (its target, wherever it is, is left alone).
        where = path.parent.resolve() / path.name
        if not where.is_relative_to(root) or where == root:
            continue  # never outside the plugin directory
        for p in (where, sidecar(where)) if not where.is_dir() or where.is_symlink() \
                else (where,):
            if p.exists() or p.is_symlink():
                _remove(p)
                removed.append(p)
    manager.admin.forget(name)
    loader.discover_all()
    logger.info("uninstalled %s: %s", name, ", ".join(map(str, removed)) or "no files")
    return removed

