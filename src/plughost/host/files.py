"""The default file-storage backend: a directory per plugin in the host's data dir, laid
out as GoatFlow lays it out.

A file is `<base>/<plugin>/[org-<id>/]<key>`, its metadata beside it as
`<file>.meta.json`, where the host adds `_size` and `_modified` (UTC, RFC 3339). A key is
cleaned as a path; an absolute key, one that leaves the plugin's directory (`..`), or one
naming a metadata file is refused, and so is a key in an `org-<id>/` folder from a call
without an organisation (GoatFlow lets such a call reach every organisation's files; here
each organisation's files are its own, and a call without one sees only its own). Each
plugin (and each organisation in it) has a byte
quota, checked before a store against what it holds (a replaced file's old size does not
count, where GoatFlow counts it), and a cap on its number of files. Writes are atomic
(temporary file, then rename), so a reader never sees half a file.
"""

from __future__ import annotations

import datetime
import json
import os
import posixpath
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HostCallError

META = ".meta.json"
_ORG_DIR = re.compile(r"org-\d+")
DEFAULT_QUOTA = 500 * 1024 * 1024  # GoatFlow's, when the policy says 0
MAX_METADATA = 64 * 1024  # a file's metadata (it counts against the quota too)
#: what the host's own `_size` and `_modified` take in a metadata file, at most; the rest
#: of that file is the plugin's and counts against its quota
HOST_FIELDS = 96


@dataclass(frozen=True)
class StoredFile:
    data: bytes
    metadata: dict[str, str] | None


def _utc(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FileStore:
    def __init__(self, base: Path, max_files: int = 10_000) -> None:
        self.base = base
        self.max_files = max_files

    def _root(self, plugin: str, org_id: int) -> Path:
        return self.base / plugin / (f"org-{org_id}" if org_id else "")

    def _path(self, plugin: str, org_id: int, key: str) -> Path:
        cleaned = posixpath.normpath(key.replace("\\", "/"))
        if (not key or key.startswith("/") or cleaned.startswith("..") or cleaned == "."
                or cleaned.endswith(META) or "\x00" in key
                or (not org_id and _ORG_DIR.fullmatch(cleaned.split("/")[0]))):
            # (a call without an organisation cannot reach into an organisation's files)
            raise HostCallError(f"invalid file key: {key}", plugin=plugin)
        return self._root(plugin, org_id) / cleaned

    def _usage(self, root: Path, org_id: int) -> tuple[int, int]:
        total = count = 0
        for dirpath, dirs, files in os.walk(root):
            if not org_id and Path(dirpath) == root:  # each organisation has its own quota
                dirs[:] = [d for d in dirs if not _ORG_DIR.fullmatch(d)]
            for f in files:
                size = os.lstat(os.path.join(dirpath, f)).st_size
                if f.endswith(META):  # the plugin's metadata counts, the host's fields not
                    total += max(0, size - HOST_FIELDS)
                else:
                    total += size
                    count += 1
        return total, count

    def store(self, plugin: str, org_id: int, key: str, data: bytes,
              metadata: dict[str, str], quota: int) -> None:
        path = self._path(plugin, org_id, key)
        limit = quota or DEFAULT_QUOTA
        meta_text = json.dumps(metadata)
        if len(meta_text) > MAX_METADATA:
            raise HostCallError(f"store_file: metadata larger than {MAX_METADATA} bytes",
                                plugin=plugin)
        used, count = self._usage(self._root(plugin, org_id), org_id)
        old = path.stat().st_size if path.is_file() else None
        meta_path = path.with_name(path.name + META)
        old_meta = meta_path.stat().st_size if meta_path.is_file() else 0
        new = len(data) + max(0, len(meta_text) + HOST_FIELDS // 2 - HOST_FIELDS)
        if used - (old or 0) - max(0, old_meta - HOST_FIELDS) + new > limit:
            raise HostCallError(f"storage limit exceeded ({used} bytes used, {len(data)} "
                                f"more would pass the quota of {limit})", plugin=plugin)
        if old is None and count >= self.max_files:
            raise HostCallError(f"storage limit exceeded ({count} files, the cap)",
                                plugin=plugin)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_atomic(path, data)
        meta: dict[str, Any] = dict(metadata)
        meta["_size"] = str(len(data))
        meta["_modified"] = _utc(path.stat().st_mtime)
        _write_atomic(path.with_name(path.name + META), json.dumps(meta).encode())

    def get(self, plugin: str, org_id: int, key: str) -> StoredFile:
        path = self._path(plugin, org_id, key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise HostCallError(f"file not found: {key}", plugin=plugin) from None
        return StoredFile(data, _meta(path))

    def delete(self, plugin: str, org_id: int, key: str) -> None:
        path = self._path(plugin, org_id, key)
        for p in (path, path.with_name(path.name + META)):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                raise HostCallError(f"invalid file key: {key}", plugin=plugin) from None

    def list(self, plugin: str, org_id: int, prefix: str) -> list[dict[str, Any]]:
        """GoatFlow's FileInfo list: `key` relative to the storage base (so it starts with
        the plugin's name), `size`, `modified_at`, and `metadata` and `content_type` when
        the file has metadata."""
        root = self._root(plugin, org_id)
        out: list[dict[str, Any]] = []
        for dirpath, dirs, files in os.walk(root):
            if not org_id and Path(dirpath) == root:  # organisations' files are theirs
                dirs[:] = [d for d in dirs if not _ORG_DIR.fullmatch(d)]
            for f in sorted(files):
                if f.endswith(META):
                    continue
                full = Path(dirpath) / f
                rel = full.relative_to(root).as_posix()
                if not rel.startswith(prefix):
                    continue
                st = full.stat()
                info: dict[str, Any] = {"key": full.relative_to(self.base).as_posix(),
                                        "modified_at": _utc(st.st_mtime), "size": st.st_size}
                meta = _meta(full)
                if meta is not None:
                    info["metadata"] = meta
                    if "content-type" in meta:
                        info["content_type"] = meta["content-type"]
                out.append(info)
        return sorted(out, key=lambda i: str(i["key"]))


def _meta(path: Path) -> dict[str, str] | None:
    try:
        raw = json.loads(path.with_name(path.name + META).read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else None


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
