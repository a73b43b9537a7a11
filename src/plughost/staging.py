"""Staging: turn a discovery record into one verified version of a plugin, ready to run.

This is where "every load path verifies" and "the verified bytes are the bytes that run"
are kept, once, for both runtimes:
- a single `.wasm` is read into memory once; its signature is checked against those bytes,
  and the runtime compiles those same bytes;
- a signed plugin directory is copied into a private 0700 directory first, and the copy is
  verified and run (a grpc executable never runs from a path its author can still change);
- a `.zip` package is read once, verified (sidecar `x.zip.sig`, or `plugin.sig` inside),
  and unpacked safely into a private per-version directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .discovery import Found, bare_manifest
from .errors import ManifestError, PluginLoadError, SignatureError
from .inputs import MODULE_MAX_BYTES, SIGNATURE_MAX_BYTES, describe, read_regular
from .leftovers import owned_dir, remove
from .manifest import LoadedManifest, load_manifest
from .packaging import PackageLimits, extract
from .plugin import PluginSource, Staged
from .signing import (
    DIR_SIGNATURE,
    DirectoryListing,
    coverage,
    directory_signature,
    file_digest,
    list_directory,
    load_trusted_keys,
    parse_signature,
    sidecar,
    verify_digest,
)

TrustedKey = str | os.PathLike[str] | bytes | Ed25519PublicKey


class Stager:
    """Verifies and prepares plugin versions; owns the private directory they run from."""

    def __init__(self, trusted_keys: Iterable[TrustedKey] | None = None, *,
                 require: bool | None = None, limits: PackageLimits | None = None) -> None:
        keys = list(trusted_keys or [])
        env_keys = os.environ.get("PLUGHOST_TRUSTED_KEYS", "")
        keys += [p for p in env_keys.split(os.pathsep) if p]
        self.keys: list[Ed25519PublicKey] = load_trusted_keys(keys)
        if require is None:
            # GoatFlow's variable too, exactly "1" as GoatFlow reads it
            require = bool(self.keys) or "1" in (
                os.environ.get("PLUGHOST_REQUIRE_SIGNATURES"),
                os.environ.get("GOATFLOW_REQUIRE_SIGNATURES"))
        self.require = require
        self.limits = limits or PackageLimits()
        self._root: Path | None = None
        self._lock = threading.Lock()

    # -- private storage -----------------------------------------------------------------

    def _private(self, name: str, tag: str) -> Path:
        with self._lock:
            if self._root is None:  # swept by the next host if this one dies uncleanly
                self._root = owned_dir("plughost")
        return Path(tempfile.mkdtemp(prefix=f"{name}-{tag[:12]}-", dir=self._root))

    def close(self) -> None:
        """Remove every private copy (call after the plugins using them are shut down)."""
        with self._lock:
            root, self._root = self._root, None
        if root is not None:
            remove(root)

    # -- staging -------------------------------------------------------------------------

    def stage(self, found: Found) -> Staged:
        if found.path.suffix == ".zip" and found.path.is_file():
            staged = self._stage_package(found)
        elif found.path.is_dir():
            staged = self._stage_directory(found)
        else:
            staged = self._stage_file(found)
        if self.require:
            return staged
        signed = (found.path / DIR_SIGNATURE).exists() if found.path.is_dir() else (
            sidecar(found.path).exists()
            or (staged.source.plugin_dir / DIR_SIGNATURE).exists())
        note = ("signature present but not verified: verification is off" if signed
                else "unsigned plugin loaded: signature verification is off")
        return replace(staged, note=note)

    def _stage_file(self, found: Found) -> Staged:
        data = _read(found.path, "module", found.name)
        self._check_sidecar(found, data)
        source = PluginSource(found.name, "wasm", found.path, found.path.parent, found.path,
                              bare_manifest(found.name), None)
        return Staged(source, data)

    def _stage_directory(self, found: Found) -> Staged:
        run_dir, private = found.path, None
        if self.require:
            private = self._private(found.name, "dir")
            # named like the original: a manifest without `name:` defaults to its dir name
            run_dir = private / found.path.name
            try:
                try:
                    # symlinks are copied as links, so the check below refuses them
                    shutil.copytree(found.path, run_dir, symlinks=True,
                                    copy_function=_copy_regular)
                except (shutil.Error, OSError) as exc:  # FIFOs, devices, unreadable files
                    raise SignatureError(f"cannot make a private copy to verify: {exc}",
                                         plugin=found.name, path=found.path) from None
                run_dir.chmod(0o700)
                listing, note = self._check_directory(found.name, run_dir, found.path)
            except BaseException:
                remove(private)
                raise
            return replace(self._from_directory(found, run_dir, private, listing), note=note)
        return self._from_directory(found, run_dir, private)

    def _stage_package(self, found: Found) -> Staged:
        data = _read(found.path, "package", found.name)
        sig_file = sidecar(found.path)
        verified = False
        if self.require and sig_file.exists():
            self._check_sidecar(found, data)
            verified = True
        private = self._private(found.name, hashlib.sha256(data).hexdigest())
        dest = private / found.name  # a manifest without `name:` defaults to its dir name
        try:
            root = extract(data, dest, plugin=found.name, source=found.path,
                           limits=self.limits)
            listing, note = None, None
            if self.require and not verified:
                listing, note = self._check_directory(found.name, root, found.path)
            return replace(self._from_directory(found, root, private, listing), note=note)
        except BaseException:
            remove(private)
            raise

    def _from_directory(self, found: Found, run_dir: Path, private: Path | None,
                        listing: DirectoryListing | None = None) -> Staged:
        """`listing`: the verified listing of `run_dir`, when it was just verified (its
        bytes are pinned and run; nothing is read again)."""
        try:
            lm: LoadedManifest = load_manifest(run_dir)
        except ManifestError as exc:  # name what the user has, not our private copy
            exc.path = str(found.path / "plugin.yaml" if found.path.is_dir() else found.path)
            raise
        if lm.name != found.name:
            raise ManifestError(f"names the plugin {lm.name!r}, but it was discovered as "
                                f"{found.name!r}; rescan, or rename", plugin=found.name,
                                path=found.path, field="name")
        if private is not None and listing is None:
            listing = _listing(found.name, found.path, run_dir)
        pinned = None
        if private is not None and listing is not None:
            _seal(run_dir)
            pinned = listing.digest
        source = PluginSource(found.name, lm.manifest.runtime, found.path, run_dir, lm.entry,
                              lm.manifest, lm, private, pinned)
        module = None
        if source.kind == "wasm":
            rel = os.path.relpath(lm.entry, run_dir).replace(os.sep, "/")
            module = listing.files.get(rel) if listing is not None else None
            if module is None:
                module = _read(lm.entry, "module", found.name)
        return Staged(source, module)

    # -- signatures ------------------------------------------------------------------------

    def _check_sidecar(self, found: Found, data: bytes) -> None:
        sig_file = sidecar(found.path)
        if not self.require:
            return
        try:
            text = _read_signature(sig_file, found.name, found.path)
        except FileNotFoundError:
            raise SignatureError(f"unsigned: {sig_file.name} not found and signatures are "
                                 "required", plugin=found.name, path=found.path) from None
        self._verify(found.name, found.path, file_digest(data), text, sig_file)

    def _check_directory(self, name: str, directory: Path, shown: Path
                         ) -> tuple[DirectoryListing, str | None]:
        """Verify a private copy by its `plugin.sig`, else by its entry's GoatFlow sidecar
        (which vouches for the executable or module only: said in the plugin's log)."""
        entry = None
        if not (directory / DIR_SIGNATURE).exists():
            with suppress(ManifestError):  # a broken manifest is reported when staged
                entry = load_manifest(directory).entry
        found = directory_signature(directory, entry)
        if found is None:
            raise SignatureError(f"unsigned: {DIR_SIGNATURE} not found and signatures are "
                                 "required", plugin=name, path=shown)
        sig_path, whole = found
        try:
            text = _read_signature(sig_path, name, shown)
            listing = list_directory(directory)
        except FileNotFoundError:  # removed between the two looks
            raise SignatureError(f"unsigned: {sig_path.name} not found and signatures are "
                                 "required", plugin=name, path=shown) from None
        except SignatureError as exc:
            raise SignatureError(exc.message, plugin=name, path=shown) from None
        if whole:
            digest = listing.digest
        else:
            assert entry is not None
            rel = os.path.relpath(entry, directory).replace(os.sep, "/")
            data = listing.files.get(rel)
            if data is None:
                raise SignatureError(f"{rel} is not a regular file of the plugin", plugin=name,
                                     path=shown)
            digest = file_digest(data)
        self._verify(name, shown, digest, text, shown / sig_path.name)
        return listing, None if whole else f"verified: {coverage(shown, sig_path, whole)}"

    def _verify(self, name: str, path: Path, digest: bytes, sig_text: bytes,
                sig_path: Path) -> None:
        if not self.keys:
            raise SignatureError("signatures are required but no trusted keys are configured "
                                 "(trusted_keys= or PLUGHOST_TRUSTED_KEYS)", plugin=name,
                                 path=path)
        sig = parse_signature(sig_text, path=sig_path, plugin=name)
        verify_digest(digest, sig, self.keys, plugin=name, path=path)


def _read(path: Path, what: str, plugin: str) -> bytes:
    try:
        return read_regular(path, MODULE_MAX_BYTES)
    except OSError as exc:
        raise PluginLoadError(f"cannot read {what}: {describe(exc)}", plugin=plugin,
                              path=path) from None


def _read_signature(path: Path, plugin: str, shown: Path) -> bytes:
    """A signature file; FileNotFoundError passes through (it means "unsigned")."""
    try:
        return read_regular(path, SIGNATURE_MAX_BYTES)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SignatureError(f"cannot read {path.name}: {describe(exc)}", plugin=plugin,
                             path=shown) from None


def _listing(plugin: str, shown: Path, run_dir: Path) -> DirectoryListing:
    """The listing a private copy that was not just verified is pinned to."""
    try:
        return list_directory(run_dir)
    except SignatureError as exc:
        raise PluginLoadError(f"cannot pin its private copy: {exc.message}", plugin=plugin,
                              path=shown) from None


def _seal(run_dir: Path) -> None:
    """Make a private copy read-only (its digest is pinned by the caller).

    Modes do not stop a process of the same user (it may chmod them back) or root; they
    stop accidents. What stops a plugin from rewriting a sibling's copy is the sandbox's
    read-only bind, and, without one, the pinned digest checked before every start."""
    for dirpath, _dirs, files in os.walk(run_dir):
        for name in files:
            full = os.path.join(dirpath, name)
            os.chmod(full, os.stat(full).st_mode & 0o555)
        os.chmod(dirpath, 0o500)


def _copy_regular(src: str, dst: str) -> None:
    """copytree's copy function for private copies: only regular files, read with the
    input rules (a FIFO or device inside a plugin dir must not block or fill the disk)."""
    data = read_regular(src, MODULE_MAX_BYTES)
    with open(dst, "xb") as f:
        f.write(data)
    shutil.copymode(src, dst)
