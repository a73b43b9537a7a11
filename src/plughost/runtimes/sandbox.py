"""The confinement of out-of-process plugins: bubblewrap namespaces where available.

A gRPC plugin is a process of the host's own user, so file modes and process ownership do
not separate it from the host or from its siblings. Where `bwrap` (Debian `bubblewrap`)
works, each plugin process is started inside it with:

- its own PID namespace and `/proc`: it sees no other process, so it cannot read the
  host's or a sibling's environment, memory or file descriptors;
- a file system of read-only binds: the system directories, the host's Python environment
  (Python plugins and wrapper scripts run on it), and its own run directory; a private
  tmpfs at `/tmp`; its socket directory as the only writable place;
- no network (a fresh network namespace with nothing in it) unless its manifest says
  `sandbox: {network: true}`; Unix sockets still work, they are reached by path;
- no capabilities (the host may run as root), and `--die-with-parent`: when the host
  dies, however it dies, bwrap's init dies and the kernel kills every process in the
  namespace, grandchildren and shell wrappers included.

Without bubblewrap the host falls back to what needs no namespaces (the host token over a
pipe, a non-dumpable host, pinned and re-verified private copies, a private TMPDIR) and
warns once. `PLUGHOST_SANDBOX=off` switches confinement off; `=bwrap` makes it required.
"""

from __future__ import annotations

import logging
import os
import shutil
import site
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from ..errors import PluginLoadError

logger = logging.getLogger(__name__)

SandboxMode = Literal["auto", "bwrap", "off"]
MODES: tuple[SandboxMode, ...] = ("auto", "bwrap", "off")

#: System directories a plugin may read (a symlink, as on merged-/usr systems, is
#: re-created as the same symlink).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")

#: Namespaces and limits every confined plugin gets. `--unshare-net` is added unless the
#: manifest allows network.
_BASE = ("--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
         "--unshare-cgroup-try", "--cap-drop", "ALL")


class Sandbox:
    """How plugin processes are confined; one per loader. The constructor has no side
    effects: bubblewrap is looked for and probed on the first plugin start."""

    def __init__(self, mode: SandboxMode | None = None, *, bwrap: str | None = None,
                 read_only: Sequence[str | os.PathLike[str]] | None = None,
                 writable: Sequence[str | os.PathLike[str]] | None = None) -> None:
        """`mode`: "auto" (bubblewrap where it works, else a warning), "bwrap" (required:
        a plugin fails to start without it) or "off"; default PLUGHOST_SANDBOX or "auto".
        `read_only` / `writable`: paths the operator lets every plugin read / write, on
        top of its own (default PLUGHOST_SANDBOX_READ / PLUGHOST_SANDBOX_WRITABLE, lists
        separated by os.pathsep); they are bound last, so they win over the rest.
        `bwrap`: the program to run (default `bwrap` on PATH)."""
        if mode is None:
            env = os.environ.get("PLUGHOST_SANDBOX", "auto").strip().lower() or "auto"
            if env not in MODES:
                raise ValueError(f"PLUGHOST_SANDBOX={env!r}: expected one of {', '.join(MODES)}")
            mode = env
        if mode not in MODES:
            raise ValueError(f"sandbox mode {mode!r}: expected one of {', '.join(MODES)}")
        self.mode: SandboxMode = mode
        self.read_only = _paths(read_only, "PLUGHOST_SANDBOX_READ")
        self.writable = _paths(writable, "PLUGHOST_SANDBOX_WRITABLE")
        self._bwrap_name = bwrap or "bwrap"
        self._lock = threading.Lock()
        self._probed = False
        self._bwrap: str | None = None
        self._mounts: list[str] = []  # the same for every plugin: made once, by the probe
        self._why_not = ""
        self._warned = False

    # -- availability ------------------------------------------------------------------

    def _probe(self) -> None:
        with self._lock:
            if self._probed:
                return
            self._probed = True
            if self.mode == "off":
                self._why_not = "switched off (PLUGHOST_SANDBOX=off)"
                return
            found = shutil.which(self._bwrap_name)
            if found is None:
                self._why_not = "bubblewrap (bwrap) is not installed"
                return
            # The same namespaces a plugin gets: a kernel or container that forbids them
            # shows here, once, not as every plugin failing to start.
            cmd = [found, *_BASE, "--unshare-net", "--ro-bind", "/", "/", "--proc", "/proc",
                   "--dev", "/dev", "--tmpfs", "/tmp", "true"]
            try:
                done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                      timeout=30)
            except (OSError, subprocess.TimeoutExpired) as exc:
                self._why_not = f"{found} cannot run: {exc}"
                return
            if done.returncode != 0:
                err = done.stderr.decode("utf-8", "replace").strip()[-300:]
                self._why_not = f"{found} cannot make namespaces here: {err or done.returncode}"
                return
            self._bwrap = found
            self._mounts = _shared_mounts()

    @property
    def active(self) -> bool:
        """True when plugin processes start inside bubblewrap."""
        self._probe()
        return self._bwrap is not None

    @property
    def reason(self) -> str:
        """Why plugins are not confined ("" when they are)."""
        self._probe()
        return self._why_not

    # -- wrapping ----------------------------------------------------------------------

    def wrap(self, cmd: Sequence[str], *, plugin: str, run_dir: Path, writable: Path,
             network: bool) -> list[str]:
        """The command that starts `cmd` confined (or `cmd` itself where it cannot be)."""
        self._probe()
        if self._bwrap is None:
            if self.mode == "bwrap":
                raise PluginLoadError(f"the sandbox is required (PLUGHOST_SANDBOX=bwrap) but "
                                      f"{self._why_not}", plugin=plugin)
            self._warn_once()
            return list(cmd)
        args = [self._bwrap, *_BASE]
        if not network:
            args.append("--unshare-net")
        args += self._mounts
        run = str(run_dir)
        args += ["--ro-bind", run, run, "--bind", str(writable), str(writable)]
        for path in self.read_only:
            args += ["--ro-bind-try", path, path]
        for path in self.writable:
            args += ["--bind-try", path, path]
        return [*args, "--chdir", run, "--", *cmd]

    def _warn_once(self) -> None:
        with self._lock:
            if self._warned:
                return
            self._warned = True
        if self.mode == "off":
            logger.info("gRPC plugins run without a sandbox: %s", self._why_not)
        else:
            logger.warning(
                "gRPC plugins run without a sandbox: %s. They are still kept from the "
                "host's token and environment and from running changed code, but they can "
                "see other processes, read what this user can read, and use the network "
                "(see docs/reliability.md, 'Without bubblewrap')", self._why_not)


def _shared_mounts() -> list[str]:
    """The mounts every plugin gets: the system read-only, its own /proc, /dev and /tmp,
    and the host's Python environment. Later binds go over earlier ones: /tmp is private
    first, then paths that live under it (a venv, a plugin's own dirs) are bound into it."""
    args: list[str] = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for path in _python_paths():
        args += ["--ro-bind", path, path]
    return args


def _paths(given: Sequence[str | os.PathLike[str]] | None, env: str) -> tuple[str, ...]:
    items = [os.fspath(p) for p in given] if given is not None else [
        p for p in os.environ.get(env, "").split(os.pathsep) if p.strip()]
    out = []
    for p in items:
        if not os.path.isabs(p):
            raise ValueError(f"sandbox path {p!r} ({env}) must be absolute")
        out.append(os.path.normpath(p))
    return tuple(out)


def _python_paths() -> list[str]:
    """The host's Python environment: what a Python plugin (or a wrapper script that runs
    the host's interpreter) needs to start, and nothing of the application around it."""
    import plughost

    wanted = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
              str(Path(plughost.__file__).resolve().parents[1])]
    wanted += site.getsitepackages()
    if site.ENABLE_USER_SITE and site.USER_SITE:
        wanted.append(site.USER_SITE)
    out: list[str] = []
    for p in wanted:
        p = os.path.abspath(p)
        if p == "/" or not os.path.exists(p) or p in out:
            continue
        if any(p == d or p.startswith(d + "/") for d in SYSTEM_DIRS):
            continue  # already visible
        out.append(p)
    # a path inside another one is visible already; keep the outermost only
    return [p for p in out if not any(p != q and p.startswith(q + "/") for q in out)]
