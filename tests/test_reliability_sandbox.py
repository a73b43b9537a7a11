"""Class 5: a gRPC plugin cannot act as another, read the host's secrets, or run unverified
code. A hostile plugin (fixtures/grpc/probe_plugin.py) tries each escape and reports what
happened; the tests run it confined by bubblewrap where it is installed, and check what
must hold without it too (the token, a non-dumpable host, pinned private copies)."""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from plughost import Loader, Manager, PluginLoadError, PluginUnavailable
from plughost.proto.plughost.v1 import plugin_pb2 as pb
from plughost.proto.plughost.v1 import plugin_pb2_grpc as pb_grpc
from plughost.runtimes.grpc import GrpcPlugin
from plughost.runtimes.sandbox import Sandbox
from plughost.runtimes.supervisor import RestartPolicy
from plughost.signing import generate_keypair, load_private_key, sign_path

from .conftest import FIXTURES, wait_until

FAST = RestartPolicy(initial_backoff=0.05, max_backoff=0.2, max_crashes=3, window=60)
HAVE_BWRAP = Sandbox("auto", read_only=(), writable=()).active
needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap is not installed or "
                                 "cannot make namespaces here")
MODES = [pytest.param("bwrap", marks=needs_bwrap), "off"]


def probe(plugins: Path, name: str, mark: str = "none", **manifest: Any) -> Path:
    pdir = plugins / name
    pdir.mkdir(parents=True)
    text = (FIXTURES / "grpc" / "probe_plugin.py").read_text()
    (pdir / "plugin.py").write_text(text.replace("__NAME__", name).replace("__MARK__", mark))
    (pdir / "plugin.yaml").write_text(yaml.safe_dump(
        {"name": name, "runtime": "grpc", "binary": "plugin.py", "permissions": ["log"],
         **manifest}))
    return pdir


@pytest.fixture
def confined(plugins: Path, manager: Manager) -> Iterator[Callable[..., Loader]]:
    """A loader whose sandbox has no operator extras (the suite's default is off)."""
    made: list[Loader] = []

    def make(mode: str = "bwrap", **kwargs: Any) -> Loader:
        sandbox = Sandbox(mode, read_only=(), writable=(),  # type: ignore[arg-type]
                          **kwargs)
        loader = Loader(plugins, manager, cache_dir=None, restart_policy=FAST,
                        sandbox=sandbox)
        made.append(loader)
        return loader

    yield make
    for loader in made:
        loader.close()


def grpc_of(manager: Manager, name: str) -> GrpcPlugin:
    plugin = manager.get(name)
    assert isinstance(plugin, GrpcPlugin)
    return plugin


def restarted(manager: Manager, name: str, old: int | None, state: str = "running") -> None:
    """Wait until `name` runs a process other than `old` (or reaches `state`)."""
    def done() -> bool:
        p = manager.get(name)
        return isinstance(p, GrpcPlugin) and p.state == state and (
            state != "running" or p.pid not in (None, old))
    wait_until(done, timeout=20)


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def marked(mark: str) -> list[int]:
    """Processes anywhere on the machine whose command line carries `mark`."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if mark.encode() in cmdline and state not in ("Z", "X"):
            out.append(int(p))
    return out


# -- confined: processes, files, network ----------------------------------------------


@needs_bwrap
def test_confined_plugin_sees_no_other_process_nor_any_secret(
        plugins: Path, manager: Manager, confined: Callable[..., Loader],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PH_HOST_SECRET", "host-secret-" + secrets.token_hex(8))
    probe(plugins, "spy")
    probe(plugins, "victim")
    assert confined().load_all() == (2, [])
    seen = manager.call("spy", "pids")
    # its own PID namespace: bwrap's init and the plugin, nothing of the host or sibling
    assert seen == [1, 2], seen
    assert manager.call("spy", "pid") == 2
    for pid in (os.getpid(), grpc_of(manager, "victim").pid):
        assert manager.call("spy", "read", {"path": f"/proc/{pid}/environ"}) == "ENOENT"
    victim_token = manager.call("victim", "token")
    scan = "\n".join(manager.call("spy", "environ_scan"))
    assert os.environ["PH_HOST_SECRET"] not in scan and victim_token not in scan
    assert "PLUGHOST_HOST_TOKEN_FD" in scan  # it did read environments: its own


@needs_bwrap
def test_confined_file_system(plugins: Path, manager: Manager,
                              confined: Callable[..., Loader]) -> None:
    spy = probe(plugins, "spy")
    victim = probe(plugins, "victim")
    victim_code = (victim / "plugin.py").read_bytes()
    confined().load_all()
    tag = secrets.token_hex(6)
    host_tmp = Path(f"/tmp/ph-host-{tag}")
    host_tmp.write_text("the host's file")
    try:
        # a private /tmp: the host's files are not there, and the plugin's stay inside
        assert manager.call("spy", "read", {"path": str(host_tmp)}) == "ENOENT"
        assert manager.call("spy", "write", {"path": f"/tmp/ph-plugin-{tag}"}) == "ok"
        assert not Path(f"/tmp/ph-plugin-{tag}").exists()
    finally:
        host_tmp.unlink()
    # its own directory readable, not writable; a sibling's not even there
    assert manager.call("spy", "read", {"path": str(spy / "plugin.yaml")}).startswith("ok:")
    assert manager.call("spy", "write", {"path": str(spy / "plugin.yaml")}) == "EROFS"
    assert manager.call("spy", "listdir", {"path": str(victim)}) == "ENOENT"
    assert manager.call("spy", "write", {"path": str(victim / "plugin.py")}) in (
        "ENOENT", "EROFS")
    assert (victim / "plugin.py").read_bytes() == victim_code  # untouched
    # the system read-only; the socket dir (its TMPDIR) the one place it may write
    assert manager.call("spy", "write", {"path": "/usr/ph-x"}) == "EROFS"
    sock_dir = manager.call("spy", "env")["TMPDIR"]
    assert manager.call("spy", "write", {"path": f"{sock_dir}/scratch",
                                         "text": "mine"}) == "ok"
    assert Path(sock_dir, "scratch").read_text() == "mine"  # the host sees the same dir
    # the user's files (an API token file, keys) are not there
    secret = Path.home() / f".ph-secret-{tag}"
    secret.write_text("api token")
    try:
        assert manager.call("spy", "read", {"path": str(secret)}) == "ENOENT"
    finally:
        secret.unlink()


@needs_bwrap
def test_network_only_when_the_manifest_allows_it(
        plugins: Path, manager: Manager, confined: Callable[..., Loader]) -> None:
    probe(plugins, "offline")
    probe(plugins, "online", sandbox={"network": True})
    confined().load_all()
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        target = {"host": "127.0.0.1", "port": port}
        # a namespace with no interfaces up: there is no loopback to reach the host's
        assert manager.call("offline", "connect", target) in ("ENETUNREACH",
                                                             "ECONNREFUSED")
        server.settimeout(10)
        got: list[bytes] = []
        accept = threading.Thread(target=lambda: got.append(server.accept()[0].recv(64)))
        accept.start()
        assert manager.call("online", "connect", target) == "ok"
        accept.join(10)
    assert got == [b"hello from a plugin"]


@needs_bwrap
@pytest.mark.parametrize(("line", "network", "why"), [
    ("1|1|tcp|{tcp}|grpc", False, "runs in a sandbox without network"),
    ("1|1|tcp|{tcp}|grpc", True, None),
    ("1|1|unix|/tmp/elsewhere.sock|grpc", False, "outside PLUGIN_UNIX_SOCKET_DIR"),
])
def test_unreachable_announcements_are_explained(
        line: str, network: bool, why: str | None, plugins: Path, manager: Manager,
        confined: Callable[..., Loader]) -> None:
    pdir = plugins / "hs"
    pdir.mkdir(parents=True)
    (pdir / "plugin.py").write_bytes((FIXTURES / "grpc" / "handshake_plugin.py").read_bytes())
    (pdir / "plugin.yaml").write_text(yaml.safe_dump(
        {"name": "hs", "runtime": "grpc", "binary": "plugin.py",
         "sandbox": {"network": network}}))
    (pdir / "handshake.txt").write_text(line)
    loaded, errors = confined().load_all()
    if why is None:
        assert (loaded, errors) == (1, [])
        assert manager.call("hs", "x") == {"function": "x"}
    else:
        assert loaded == 0 and len(errors) == 1 and why in str(errors[0])
        assert errors[0].plugin == "hs"


# -- supervision while confined ---------------------------------------------------------


@needs_bwrap
def test_kill9_under_eight_callers_confined(plugins: Path, manager: Manager,
                                            confined: Callable[..., Loader]) -> None:
    probe(plugins, "k9")
    confined().load_all()
    stop = threading.Event()
    lock = threading.Lock()
    ok, unavailable, errors = [0], [0], []

    def caller() -> None:
        while not stop.is_set():
            try:
                manager.call("k9", "pid")
                with lock:
                    ok[0] += 1
            except PluginUnavailable:
                with lock:
                    unavailable[0] += 1
                stop.wait(0.002)
            except BaseException as exc:
                with lock:
                    errors.append(exc)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        for how in ("plugin process exits", "sandbox killed"):
            wait_until(lambda: ok[0] >= 30)
            old = grpc_of(manager, "k9").pid
            assert old is not None
            if how == "plugin process exits":
                with pytest.raises(PluginUnavailable):
                    manager.call("k9", "die", {"code": 9})
            else:
                os.kill(old, signal.SIGKILL)
            restarted(manager, "k9", old)
            before = ok[0]
            # serving the eight callers again
            wait_until(lambda before=before: ok[0] >= before + 30)  # type: ignore[misc]
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert errors == [], [f"{type(e).__name__}: {e}" for e in errors[:5]]
    assert unavailable[0] > 0
    # shut down: nothing of it is left
    pid = grpc_of(manager, "k9").pid
    assert pid is not None
    manager.unregister("k9")
    assert gone(pid)


@pytest.mark.parametrize("mode", [pytest.param("bwrap", marks=needs_bwrap)])
def test_host_sigkill_takes_every_descendant_with_it(plugins: Path, mode: str,
                                                     tmp_path: Path) -> None:
    mark = "phorphan" + secrets.token_hex(6)
    probe(plugins, "tree", mark=mark)
    host = subprocess.Popen(
        [sys.executable, str(FIXTURES / "scripts" / "host_spawn_tree.py"), str(plugins), mode,
         "tree"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        assert host.stdout is not None
        line = host.stdout.readline().decode()
        assert line.startswith("ready"), line + host.stderr.read().decode() \
            if host.stderr else line
        wait_until(lambda: len(marked(mark)) == 6)  # the daemon forks after returning
        host.kill()
        host.wait(10)
        wait_until(lambda: marked(mark) == [], timeout=15)
    finally:
        for pid in marked(mark):  # never leave them to the next test
            os.kill(pid, signal.SIGKILL)
        host.kill()
        host.wait(10)


# -- what holds with and without bubblewrap ---------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_host_token_is_in_no_environment_and_new_per_start(
        plugins: Path, manager: Manager, confined: Callable[..., Loader], mode: str) -> None:
    probe(plugins, "tok")
    confined(mode).load_all()
    token = manager.call("tok", "token")
    assert len(token) == 32
    assert "PLUGHOST_HOST_TOKEN" not in os.environ
    for p in os.listdir("/proc"):  # every environment this user (root: anyone) can read
        if p.isdigit():
            try:
                env = Path(f"/proc/{p}/environ").read_bytes()
            except OSError:
                continue
            assert token.encode() not in env, f"the host token is in /proc/{p}/environ"
    host_sock = manager.call("tok", "env")["PLUGHOST_HOST_ADDR"].removeprefix("unix://")
    old = grpc_of(manager, "tok").pid
    with pytest.raises(PluginUnavailable):
        manager.call("tok", "die")
    restarted(manager, "tok", old)
    new = manager.call("tok", "token")
    assert new != token
    with grpc.insecure_channel(f"unix:{host_sock}") as channel:
        stub = pb_grpc.HostStub(channel)
        request = pb.LogRequest(level=1, message="from a leftover of the first start")
        with pytest.raises(grpc.RpcError) as info:
            stub.Log(request, timeout=10, metadata=(("plughost-host-token", token),))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        stub.Log(request, timeout=10, metadata=(("plughost-host-token", new),))


def test_host_is_not_dumpable_once_it_starts_plugins(
        plugins: Path, manager: Manager, confined: Callable[..., Loader]) -> None:
    probe(plugins, "d")
    confined("off").load_all()
    assert manager.call("d", "pid") > 0
    pr_get_dumpable = 3
    assert ctypes.CDLL(None).prctl(pr_get_dumpable, 0, 0, 0, 0) == 0


@pytest.mark.parametrize("attacker", ["itself", "sibling"])
@pytest.mark.parametrize("mode", MODES)
def test_a_rewritten_private_copy_never_runs(plugins: Path, manager: Manager, mode: str,
                                             attacker: str, tmp_path: Path) -> None:
    key_path, pub = generate_keypair(tmp_path / "key")
    key = load_private_key(key_path)
    for name in ("victim", "spy"):
        sign_path(probe(plugins, name), key)
    loader = Loader(plugins, manager, cache_dir=None, restart_policy=FAST, trusted_keys=[pub],
                    sandbox=Sandbox(mode, read_only=(), writable=()))  # type: ignore[arg-type]
    try:
        assert loader.load_all() == (2, [])
        run_dir = grpc_of(manager, "victim").source.plugin_dir
        assert run_dir != plugins / "victim" and (run_dir / "plugin.py").exists()
        assert os.stat(run_dir).st_mode & 0o222 == 0  # read-only, by mode too
        # The victim's verified copy is rewritten, by the victim itself or by a sibling
        # with only `log`, so that its next start would run code nobody signed.
        marker = tmp_path / "unsigned-code-ran"
        evil = f"open({str(marker)!r}, 'w').write('ran')\n"
        who = "victim" if attacker == "itself" else "spy"
        wrote = manager.call(who, "write", {"path": str(run_dir / "plugin.py"), "text": evil})
        if mode == "bwrap":  # read-only for itself, not even there for a sibling
            assert wrote == ("EROFS" if attacker == "itself" else "ENOENT")
        else:  # root ignores modes, another user may chmod them back: the pin holds
            assert wrote in ("ok", "EACCES")
            if wrote != "ok":
                os.chmod(run_dir / "plugin.py", 0o600)
                (run_dir / "plugin.py").write_text(evil)
        old = grpc_of(manager, "victim").pid
        with pytest.raises(PluginUnavailable):
            manager.call("victim", "die")
        if mode == "bwrap":  # nothing changed: it comes back
            restarted(manager, "victim", old)
            assert manager.call("victim", "pid") == 2
        else:  # it changed: every restart refuses, then the circuit opens
            restarted(manager, "victim", old, state="failed")
            assert any("private copy changed since it was verified" in r.message
                       for r in manager.log_for("victim").records())
        assert not marker.exists()
        assert manager.call("spy", "pid") > 0  # the sibling serves throughout
    finally:
        loader.close()


def test_without_bubblewrap_a_warning_once_or_a_clear_error(
        plugins: Path, manager: Manager, confined: Callable[..., Loader],
        caplog: pytest.LogCaptureFixture) -> None:
    probe(plugins, "a")
    probe(plugins, "b")
    with caplog.at_level(logging.WARNING, logger="plughost.runtimes.sandbox"):
        assert confined("auto", bwrap="/nonexistent/bwrap").load_all() == (2, [])
    assert manager.call("a", "pid") != manager.call("b", "pid")
    warnings = [r for r in caplog.records if "without a sandbox" in r.getMessage()]
    assert len(warnings) == 1 and "not installed" in warnings[0].getMessage()
    for name in ("a", "b"):
        manager.unregister(name)
    loaded, errors = confined("bwrap", bwrap="/nonexistent/bwrap").load_all()
    assert loaded == 0 and len(errors) == 2
    assert all(isinstance(e, PluginLoadError) and "sandbox is required" in str(e)
               and e.plugin in ("a", "b") for e in errors)


def test_sandbox_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="PLUGHOST_SANDBOX"):
        monkeypatch.setenv("PLUGHOST_SANDBOX", "maybe")
        Sandbox()
    with pytest.raises(ValueError, match="absolute"):
        Sandbox("off", writable=["relative/dir"])
    monkeypatch.setenv("PLUGHOST_SANDBOX_READ", os.pathsep.join(["/srv/a", "/srv/b/"]))
    assert Sandbox("off").read_only == ("/srv/a", "/srv/b")
