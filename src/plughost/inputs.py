"""Reading the files a plugin supplies: every one is read here, as hostile input.

A plugin directory is written by someone else. Where a file is expected there may be a FIFO
(opening it blocks until a writer comes), a socket, a device or a symlink to one
(`/dev/zero` never ends), a directory, a name longer than the OS allows, or a file far larger
than any real manifest. So, for every plugin input:

- the path is `stat`ed first and only a regular file is opened;
- it is opened `O_NONBLOCK | O_NOCTTY`, so a FIFO or device swapped in after the `stat`
  cannot block or become our terminal, and `fstat`ed again on the open descriptor;
- at most `cap` bytes are read (one more to tell "too large");
- every failure is an `OSError` whose `strerror` says what is wrong, for the caller to turn
  into that plugin's typed error. `FileNotFoundError` stays itself, since "missing" means
  something different to a caller ("unsigned").
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

#: Caps on what a plugin's files may weigh. A real plugin.yaml is a few KiB, a signature
#: 129 bytes; modules and packages get room for large Go/Rust builds.
MANIFEST_MAX_BYTES = 256 * 1024
SIGNATURE_MAX_BYTES = 4 * 1024
REGISTRATION_MAX_BYTES = 1024 * 1024
MODULE_MAX_BYTES = 256 * 1024 * 1024

_CHUNK = 1024 * 1024


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _not_regular(path: Path, mode: int) -> OSError:
    return OSError(errno.EINVAL, f"is {_kind(mode)}, not a regular file", str(path))


def check_regular(path: Path) -> int:
    """Raise unless `path` (symlinks followed) is a regular file; return its size."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    return st.st_size


def read_regular(path: str | Path, cap: int) -> bytes:
    """The bytes of the regular file `path`, at most `cap` of them (see the module rules)."""
    p = Path(path)
    size = check_regular(p)
    if size > cap:
        raise OSError(errno.EFBIG, f"is {size} bytes, over the cap of {cap}", str(p))
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped between the stat and the open
            raise _not_regular(p, st.st_mode)
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, min(_CHUNK, cap + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:  # it grew while we read
                raise OSError(errno.EFBIG, f"is over the cap of {cap} bytes", str(p))
        return b"".join(chunks)
    finally:
        os.close(fd)


def describe(exc: OSError) -> str:
    """An OSError as one short clause, without repeating a (possibly huge) path."""
    text = exc.strerror or str(exc)
    if exc.errno == errno.ENAMETOOLONG:
        return "a path component is longer than the OS allows"
    return text
