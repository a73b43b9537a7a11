"""Crash leftovers: directories a host makes for itself, and the sweep of dead hosts' ones.

A host that is SIGKILLed cannot clean up its socket directories or its private verified
copies of plugins. Every such directory is therefore named after its owner,
`<kind>-<pid>-<start time>-<random>`, and the first host of the same user to make one of
that kind removes those whose owner is gone. The process start time (from
/proc/<pid>/stat, in clock ticks since boot) tells a live owner from an unrelated process
that got the dead host's pid later.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_swept: set[tuple[str, str]] = set()


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat; None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def _me() -> str:
    return f"{os.getpid()}-{_start_time(os.getpid()) or '0'}"


def owned_dir(kind: str, root: str | Path | None = None) -> Path:
    """A fresh 0700 directory `<root>/<kind>-<pid>-<start>-XXXX`, after sweeping `root`
    of the `kind` directories of dead hosts (once per process and root)."""
    where = str(root) if root is not None else tempfile.gettempdir()
    sweep(kind, where)
    return Path(tempfile.mkdtemp(prefix=f"{kind}-{_me()}-", dir=where))


def sweep(kind: str, root: str | Path) -> int:
    """Remove `kind` directories in `root` whose owning host is gone; returns how many."""
    key = (kind, str(root))
    with _lock:
        if key in _swept:
            return 0
        _swept.add(key)
    removed = 0
    try:
        entries = os.scandir(root)
    except OSError:
        return 0
    with entries:
        for entry in entries:
            parts = entry.name[len(kind) + 1:].split("-") \
                if entry.name.startswith(kind + "-") else []
            if len(parts) < 3 or not parts[0].isdigit() or not parts[1].isdigit():
                continue  # not ours (or made before owners were named with a start time)
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_uid != os.getuid() or not entry.is_dir(follow_symlinks=False):
                continue
            if _start_time(int(parts[0])) == parts[1]:
                continue  # that host still runs
            remove(entry.path)
            removed += 1
    if removed:
        logger.info("removed %d %s directories left by hosts that died", removed, kind)
    return removed


def remove(path: str | Path) -> None:
    """rmtree, even where a private copy was made read-only."""
    for dirpath, _dirs, _files in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)
    shutil.rmtree(path, ignore_errors=True)
