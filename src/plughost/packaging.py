"""Plugin packages: a plugin directory as one `.zip` (docs/operations.md), packed and
unpacked safely.

Unpacking treats the archive as hostile. Entries are checked before anything is written:
no absolute names, no `..`, no symlinks, devices or FIFOs, no duplicates; sizes are counted
as bytes actually come out of the decompressor (headers can lie), with caps on the total,
the file count and the compression ratio. Everything lands in a fresh private directory;
on any refusal that directory is removed, so nothing of a bad archive stays on disk.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import PluginLoadError, SignatureError
from .signing import DIR_SIGNATURE, list_directory

_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same directory packs to the same bytes
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class PackageLimits:
    """Caps on a package; each default is GoatFlow's where GoatFlow's is stricter."""

    max_total_bytes: int = 256 * 1024 * 1024  # GoatFlow: 500 MiB
    max_entry_bytes: int = 100 * 1024 * 1024  # GoatFlow's
    max_files: int = 1000  # GoatFlow's (entries)
    max_ratio: float = 200.0  # uncompressed / compressed, per entry and overall


def pack(directory: Path, out: Path) -> int:
    """Zip a plugin directory (manifest, files, plugin.sig if signed); returns the count."""
    if not (directory / "plugin.yaml").is_file():
        raise PluginLoadError("not a plugin directory (no plugin.yaml)", path=directory)
    try:
        listing = list_directory(directory)  # refuses symlinks and special files
    except SignatureError as exc:
        raise PluginLoadError(f"cannot pack: {exc.message}", path=directory) from None
    names = sorted(listing.files)
    if (directory / DIR_SIGNATURE).is_file():
        names.append(DIR_SIGNATURE)
    tmp = out.with_name(f".{out.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in names:
            src = directory / rel
            info = zipfile.ZipInfo(rel, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | (0o755 if os.access(src, os.X_OK)
                                                  else 0o644)) << 16
            zf.writestr(info, src.read_bytes())
    tmp.replace(out)
    return len(names)


def _check_name(name: str) -> str:
    if not name or "\x00" in name or "\\" in name:
        return "an empty or malformed name"
    p = PurePosixPath(name)
    if p.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if ".." in p.parts:
        return "a '..' component"
    return ""


def extract(data: bytes, dest: Path, *, plugin: str, source: Path,
            limits: PackageLimits | None = None) -> Path:
    """Unpack the archive `data` into `dest` (created, must not exist); returns the
    directory holding its plugin.yaml: `dest`, or the folder of the first plugin.yaml entry
    (GoatFlow packs a plugin under one top folder).

    Raises PluginLoadError naming the plugin, the archive and the offending entry.
    """
    limits = limits or PackageLimits()

    def refuse(why: str) -> PluginLoadError:
        return PluginLoadError(f"package refused: {why}", plugin=plugin, path=source)

    dest.mkdir(mode=0o700, parents=False, exist_ok=False)
    try:
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as exc:
            raise refuse(f"not a valid zip archive ({exc})") from None
        infos = zf.infolist()
        if len(infos) > limits.max_files:
            raise refuse(f"{len(infos)} entries, more than the cap of {limits.max_files}")
        seen: set[str] = set()
        for info in infos:  # every entry is checked before anything is written
            bad = _check_name(info.filename)
            if bad:
                raise refuse(f"entry {info.filename!r} has {bad}")
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                what = "a symlink" if kind == stat.S_IFLNK else "a device or special file"
                raise refuse(f"entry {info.filename!r} is {what}")
            norm = str(PurePosixPath(info.filename))
            if norm in seen:
                raise refuse(f"entry {info.filename!r} appears twice")
            seen.add(norm)
            if info.file_size > min(limits.max_total_bytes, limits.max_entry_bytes):
                raise refuse(f"entry {info.filename!r} declares {info.file_size} bytes")
        total = 0
        compressed = sum(i.compress_size for i in infos) or 1
        for info in infos:
            target = dest / PurePosixPath(info.filename)
            if not target.resolve().is_relative_to(dest.resolve()):
                raise refuse(f"entry {info.filename!r} would land outside the package dir")
            if info.is_dir():
                try:
                    target.mkdir(mode=0o700, parents=True, exist_ok=True)
                except OSError as exc:
                    raise refuse(f"entry {info.filename!r} cannot be created "
                                 f"({exc.strerror})") from None
                continue
            exec_bit = (info.external_attr >> 16) & 0o111
            try:
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o700 if exec_bit else 0o600)
            except OSError as exc:  # e.g. entries "a" and "a/b": a file and a dir at once
                raise refuse(f"entry {info.filename!r} cannot be created ({exc.strerror})"
                             ) from None
            written = 0
            try:
                with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        total += len(chunk)
                        if total > limits.max_total_bytes:
                            raise refuse(f"more than {limits.max_total_bytes} bytes "
                                         "uncompressed (zip bomb?)")
                        if written > 1024 * 1024 and written > limits.max_ratio * max(
                                1, info.compress_size):
                            raise refuse(f"entry {info.filename!r} expands more than "
                                         f"{limits.max_ratio:.0f}x (zip bomb?)")
                        out.write(chunk)
            except PluginLoadError:
                raise
            except Exception as exc:  # corrupt deflate (zlib.error), encrypted, unknown
                raise refuse(f"entry {info.filename!r} is corrupt or unreadable "
                             f"({type(exc).__name__}: {exc})") from None
            if written != info.file_size:
                raise refuse(f"entry {info.filename!r} holds {written} bytes, not the "
                             f"{info.file_size} it declares")
        if total > 1024 * 1024 and total > limits.max_ratio * compressed:
            raise refuse(f"expands more than {limits.max_ratio:.0f}x overall (zip bomb?)")
        manifests = [i.filename for i in infos if not i.is_dir()
                     and PurePosixPath(i.filename).name == "plugin.yaml"]
        return dest / PurePosixPath(manifests[0]).parent if manifests else dest
    except PluginLoadError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except Exception as exc:  # whatever else a hostile archive makes zipfile raise
        shutil.rmtree(dest, ignore_errors=True)
        raise refuse(f"unreadable archive ({type(exc).__name__}: {exc})") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
