"""Child processes for out-of-process plugins: launch, handshake, logs, and death.

Three guarantees:
- A plugin never outlives its host. Children get `PR_SET_PDEATHSIG(SIGKILL)` and their own
  process group. PDEATHSIG fires when the *thread* that forked the child exits, not the
  process, so every child is forked from one long-lived spawner thread, never from a
  caller's (possibly short-lived) thread.
- Everything it prints ends up in its log: stdout lines before the handshake and after,
  and stderr, line by line.
- Nothing leaks: one waiter thread reaps the child (no zombies); pipes are closed; the
  whole process group is killed on stop.
- A child inherits only the fds it is given (the host-token pipe), and the host is made
  non-dumpable before its first child exists, so a child cannot read the host's secrets
  through /proc. Confinement itself (namespaces) is sandbox.py's: it only wraps `cmd`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import queue
import re
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import IO

from ..errors import PluginLoadError
from ..logs import LineWriter, PluginLog
from . import hclog

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_HANDSHAKE = re.compile(
    r"^(?P<core>\d+)\|(?P<app>\d+)\|(?P<net>[a-z0-9]+)\|(?P<addr>[^|]+)\|(?P<proto>[a-z]+)"
    r"(\|[^|]*)*$")


@dataclass(frozen=True)
class Handshake:
    core: int
    app: int
    network: str  # "unix" | "tcp"
    address: str
    protocol: str

    @property
    def target(self) -> str:
        """The address in the form grpc dials."""
        return f"unix:{self.address}" if self.network == "unix" else self.address


def parse_handshake(line: str, *, plugin: str, versions: tuple[int, ...] = (1,)
                    ) -> Handshake | None:
    """Parse a go-plugin handshake line; None if the line is not one (it is just output).

    Raises PluginLoadError for a handshake plughost cannot accept (netrpc, wrong versions,
    a non-loopback tcp address).
    """
    m = _HANDSHAKE.match(line.strip())
    if m is None:
        return None
    hs = Handshake(int(m["core"]), int(m["app"]), m["net"], m["addr"], m["proto"])

    def refuse(why: str) -> PluginLoadError:
        return PluginLoadError(f"handshake {line.strip()!r} refused: {why}", plugin=plugin)

    if hs.core != 1:
        raise refuse(f"core protocol version {hs.core}, plughost speaks 1")
    if hs.app not in versions:
        accepted = ", ".join(map(str, versions))
        raise refuse(f"app protocol version {hs.app}, plugin.yaml accepts {accepted} (if "
                     f"the plugin speaks {hs.app}, set `handshake: {{protocol_version: "
                     f"{hs.app}}}` in plugin.yaml)")
    if hs.protocol not in ("grpc", "netrpc"):
        raise refuse(f"unknown protocol {hs.protocol!r}")
    if hs.network == "tcp":
        host = hs.address.rsplit(":", 1)[0].strip("[]")
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise refuse(f"tcp address {hs.address} is not on loopback")
    elif hs.network != "unix":
        raise refuse(f"unknown network {hs.network!r}")
    return hs


# -- the spawner thread ------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl


def _child_setup(parent: int) -> None:
    # Runs in the child between fork and exec: keep it to two syscalls.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the host died before prctl took effect
        os._exit(1)


_SpawnJob = tuple[list[str], str, dict[str, str], tuple[int, ...],
                  "Future[subprocess.Popen[bytes]]"]
_jobs: queue.Queue[_SpawnJob] = queue.Queue()
_spawner: threading.Thread | None = None
_spawner_lock = threading.Lock()


def _spawn_loop() -> None:
    while True:
        cmd, cwd, env, fds, fut = _jobs.get()
        setup = functools.partial(_child_setup, os.getpid())
        try:
            proc = subprocess.Popen(
                cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, close_fds=True, pass_fds=fds,
                start_new_session=True, preexec_fn=setup)
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(proc)


def make_undumpable() -> None:
    """Make this process non-dumpable: its `/proc/<pid>/environ`, `mem`, `fd` and `maps`
    become readable by root only, and no process of the same user can ptrace it. A host
    that starts plugin processes holds their tokens and its own secrets; a plugin running
    as the same user must not read them. (Core dumps of the host are off as a result.)"""
    if _prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        logger.warning("could not make the host non-dumpable: %s",
                       os.strerror(ctypes.get_errno()))


def spawn(cmd: list[str], cwd: str, env: dict[str, str],
          pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    """Start `cmd` from the spawner thread (see module docstring for why); `pass_fds`
    are inherited by the child under the same numbers, nothing else is."""
    global _spawner
    with _spawner_lock:
        if _spawner is None or not _spawner.is_alive():
            make_undumpable()  # before the first plugin process exists
            _spawner = threading.Thread(target=_spawn_loop, name="plughost-spawner",
                                        daemon=True)
            _spawner.start()
    fut: Future[subprocess.Popen[bytes]] = Future()
    _jobs.put((cmd, cwd, env, pass_fds, fut))
    return fut.result()


# -- one child -----------------------------------------------------------------------------


class ChildProcess:
    """A started plugin process: its pipes, its handshake and its exit."""

    def __init__(self, cmd: list[str], cwd: str, env: dict[str, str], log: PluginLog,
                 plugin: str, on_exit: Callable[[int], None] | None = None,
                 pass_fds: tuple[int, ...] = (), versions: tuple[int, ...] = (1,)) -> None:
        self.plugin = plugin
        self.versions = versions
        self._log = log
        self._on_exit = on_exit
        self._handshake: Future[Handshake] = Future()
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self.exited = threading.Event()
        self.proc = spawn(cmd, cwd, env, pass_fds)
        self.pid = self.proc.pid
        self._threads = [
            threading.Thread(target=self._read_stdout, name=f"{plugin}-stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name=f"{plugin}-stderr", daemon=True),
            threading.Thread(target=self._wait, name=f"{plugin}-wait", daemon=True),
        ]
        for t in self._threads:
            t.start()

    @property
    def log(self) -> PluginLog:
        return self._log

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.exited.is_set() else None

    def _read_stdout(self) -> None:
        out = LineWriter(self._log, "stdout", parse=hclog.parse)
        assert self.proc.stdout is not None
        with self.proc.stdout:  # each reader closes its own pipe at EOF
            self._stdout_lines(out)
        out.flush()

    def _stdout_lines(self, out: LineWriter) -> None:
        assert self.proc.stdout is not None
        for raw in _lines(self.proc.stdout):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not self._handshake.done():
                try:
                    hs = parse_handshake(line, plugin=self.plugin, versions=self.versions)
                except PluginLoadError as exc:
                    self._handshake.set_exception(exc)
                    continue
                if hs is not None:
                    self._handshake.set_result(hs)
                    continue
            out.write(raw if raw.endswith(b"\n") else raw + b"\n")

    def _read_stderr(self) -> None:
        # stderr is where programs complain: a line that is no hclog line is a warning
        err = LineWriter(self._log, "stderr", logging.WARNING, parse=hclog.parse)
        assert self.proc.stderr is not None
        with self.proc.stderr:
            for raw in _lines(self.proc.stderr):
                self._stderr_tail.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                err.write(raw if raw.endswith(b"\n") else raw + b"\n")
        err.flush()

    def _wait(self) -> None:
        code = self.proc.wait()  # the only reaper of this child
        # Let the readers drain what it wrote before it died, briefly: a grandchild that
        # inherited the pipes can keep them open forever (it dies with the group below).
        for t in self._threads[:2]:
            t.join(0.5)
        self.exited.set()
        if not self._handshake.done():
            self._handshake.set_exception(PluginLoadError(
                f"exited with code {code} before its handshake{self.stderr_tail()}"
                f"{self._cookie_hint()}", plugin=self.plugin))
        if self._on_exit is not None:
            try:
                self._on_exit(code)
            except Exception:
                logger.exception("exit callback failed for %s", self.plugin)

    def _cookie_hint(self) -> str:
        """go-plugin's words for a wrong magic cookie: say what to change."""
        if any("not meant to be executed directly" in line for line in self._stderr_tail):
            return ("; its magic cookie is not the one this host sends: set `handshake: "
                    "{magic_cookie_key: ..., magic_cookie_value: ...}` in plugin.yaml to "
                    "the plugin's own")
        return ""

    def stderr_tail(self) -> str:
        tail = list(self._stderr_tail)[-10:]
        return ("; stderr: " + " | ".join(tail)) if tail else "; stderr was empty"

    def wait_handshake(self, timeout: float, limit_ms: int | None = None) -> Handshake:
        try:
            return self._handshake.result(timeout)
        except TimeoutError:
            shown = limit_ms if limit_ms is not None else round(timeout * 1000)
            raise PluginLoadError(
                f"no handshake line within {shown} ms (expected "
                f"'1|1|unix|/path/to.sock|grpc' on stdout){self.stderr_tail()}",
                plugin=self.plugin) from None

    def stop(self, grace: float) -> None:
        """SIGTERM the process group, then SIGKILL after `grace` seconds; always reaped."""
        if not self.exited.is_set():
            self._signal_group(signal.SIGTERM)
            if not self.exited.wait(grace):
                self._signal_group(signal.SIGKILL)
                self.exited.wait(5.0)
        # Members of the group that outlived the leader go too.
        self._signal_group(signal.SIGKILL)

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)
        self.exited.wait(5.0)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


#: A child's output is read at most this much at a time: a line without a newline is
#: logged in pieces of this size, never gathered whole (400 MB without a newline once
#: grew the host by gigabytes).
MAX_LINE_BYTES = 8192


def _lines(pipe: IO[bytes]) -> Iterator[bytes]:
    return iter(lambda: pipe.readline(MAX_LINE_BYTES), b"")
