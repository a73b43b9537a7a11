"""The grpc runtime end to end: real child processes, real sockets, real signals.

Fixture plugins live in tests/fixtures/grpc; each test copies what it needs into a plugin
directory of its own. `raw_plugin.py` is written only from docs/protocol.md (raw grpcio and
the generated stubs); `handshake_plugin.py` imports nothing of plughost (hand-encoded
protobuf, as a plugin in another language); `sdk_plugin.py` and `noise_plugin.py` use the SDK;
`wrapper.sh` is a non-.py executable. Processes are checked in /proc, never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from plughost import (
    Event,
    Loader,
    Manager,
    ManifestError,
    PlughostError,
    PluginCallError,
    PluginLoadError,
    PluginTimeout,
    PluginUnavailable,
)
from plughost.runtimes.grpc import GrpcPlugin
from plughost.runtimes.supervisor import RestartPolicy
from plughost.runtimes.wasm import WasmEngine

from .conftest import names, wait_until, write_wasm

GRPC = Path(__file__).parent / "fixtures" / "grpc"
FAST = RestartPolicy(initial_backoff=0.05, max_crashes=3, window=30)
COOKIE = ("PLUGHOST_PLUGIN", "v1")


# -- helpers -----------------------------------------------------------------------------


def write_manifest(pdir: Path, name: str, binary: str, manifest: dict[str, Any] | None
                   ) -> None:
    data: dict[str, Any] = {"name": name, "version": "1.0.0", "runtime": "grpc",
                            "binary": binary}
    data.update(manifest or {})
    (pdir / "plugin.yaml").write_text(yaml.safe_dump(data))


def sdk_source(name: str, version: str = "1.0.0", cookie: tuple[str, str] = COOKIE) -> str:
    return ((GRPC / "sdk_plugin.py").read_text()
            .replace("__NAME__", name).replace("__VERSION__", version)
            .replace("__COOKIE_KEY__", cookie[0]).replace("__COOKIE_VALUE__", cookie[1]))


def sdk_plugin(plugins: Path, name: str, *, version: str = "1.0.0",
               manifest: dict[str, Any] | None = None,
               cookie: tuple[str, str] = COOKIE) -> Path:
    """`plugins/<name>/` running tests/fixtures/grpc/sdk_plugin.py as `plugin.py`."""
    pdir = plugins / name
    pdir.mkdir(parents=True)
    (pdir / "plugin.py").write_text(sdk_source(name, version, cookie))
    write_manifest(pdir, name, "plugin.py", manifest)
    return pdir


def fixture_plugin(plugins: Path, name: str, fixture: str,
                   manifest: dict[str, Any] | None = None) -> Path:
    """`plugins/<name>/` running a fixture file as it is."""
    pdir = plugins / name
    pdir.mkdir(parents=True)
    (pdir / fixture).write_text((GRPC / fixture).read_text())
    write_manifest(pdir, name, fixture, manifest)
    return pdir


def write_wrapper(path: Path, script: Path) -> None:
    """A `#!/bin/sh` executable (not .py: run directly, X_OK) that execs Python on `script`."""
    text = ((GRPC / "wrapper.sh").read_text()
            .replace("__PYTHON__", sys.executable).replace("__SCRIPT__", str(script)))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(path)  # atomic, as a deploy would do it


def replace_file(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def proc_state(pid: int) -> str | None:
    """The State letter of /proc/<pid>, None when the pid does not exist at all."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("State:"):
            return line.split()[1]
    return None


def reaped(pid: int) -> bool:
    """Gone entirely: not running, and not a zombie either (someone waited for it)."""
    return proc_state(pid) is None


def dead(pid: int) -> bool:
    """Not running. A zombie counts: an orphan is reaped by init, which is not our job."""
    return proc_state(pid) in (None, "Z", "X")


def records(manager: Manager, name: str) -> list[tuple[str, str, str]]:
    return [(r.source, r.level, r.message) for r in manager.log_for(name).records()]


def log_has(manager: Manager, name: str, text: str, source: str | None = None) -> bool:
    return any(text in m and (source is None or s == source)
               for s, _, m in records(manager, name))


class Events:
    """Collects manager events; `wait(kind, n)` blocks until n events of that kind came."""

    def __init__(self, manager: Manager) -> None:
        self.events: list[Event] = []
        self._cond = threading.Condition()
        manager.add_listener(self._on)

    def _on(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def count(self, kind: str) -> int:
        with self._cond:
            return sum(1 for e in self.events if e.kind == kind)

    def wait(self, kind: str, n: int = 1, timeout: float = 20.0) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: sum(1 for e in self.events if e.kind == kind) >= n, timeout)
        assert ok, f"no {n}x {kind!r} event; got {[(e.kind, e.detail) for e in self.events]}"


@pytest.fixture
def new_loader(plugins: Path, manager: Manager, engine: WasmEngine) -> Callable[..., Loader]:
    def make(directory: Path | None = None, policy: RestartPolicy = FAST) -> Loader:
        return Loader(directory or plugins, manager, engine=engine, restart_policy=policy)

    return make


def grpc_plugin(manager: Manager, name: str) -> GrpcPlugin:
    plugin = manager.get(name)
    assert isinstance(plugin, GrpcPlugin)
    return plugin


def pid_of(manager: Manager, name: str) -> int:
    pid = grpc_plugin(manager, name).pid
    assert pid is not None
    return pid


# -- load and call -----------------------------------------------------------------------


def test_greeter_example_loads_and_answers(examples: Path, manager: Manager,
                                           new_loader: Callable[..., Loader]) -> None:
    loader = new_loader(examples)
    _, errors = loader.load_all()
    assert errors == []
    assert "greeter" in manager.names()
    info = manager.info("greeter")
    assert info is not None and info.kind == "grpc" and info.state == "running"
    assert info.version == "1.0.0"
    assert manager.call("greeter", "hello", {"name": "Bob"}) == {
        "message": "Hello, Bob!", "calls": 1}
    assert manager.call("greeter", "hello") == {"message": "Hello, world!", "calls": 2}
    assert manager.call("greeter", "add", {"a": 1, "b": 2.5}) == 3.5
    with pytest.raises(PluginCallError, match="greeter was asked to fail") as exc:
        manager.call("greeter", "fail")
    assert exc.value.plugin == "greeter" and exc.value.function == "fail"
    with pytest.raises(PluginCallError, match="unknown function: nope"):
        manager.call("greeter", "nope")
    assert log_has(manager, "greeter", "greeting #2", source="plugin")
    routes = grpc_plugin(manager, "greeter").registration.routes
    assert [r.path for r in routes] == ["/hello"]


def test_sdk_plugin_calls_errors_and_timeout(plugins: Path, manager: Manager,
                                             new_loader: Callable[..., Loader]) -> None:
    pdir = sdk_plugin(plugins, "sdk", manifest={"resources": {"call_timeout_ms": 300}})
    loader = new_loader()
    assert loader.load_all() == (1, [])
    assert manager.call("sdk", "echo", {"a": [1, "x", None]}) == {"a": [1, "x", None]}
    assert manager.call("sdk", "echo", b'"raw bytes"') == "raw bytes"
    assert [manager.call("sdk", "count") for _ in range(3)] == [1, 2, 3]  # state is kept
    pid = manager.call("sdk", "pid")
    assert pid == pid_of(manager, "sdk") and pid != os.getpid()
    assert (pdir / f"started-{pid}").exists()  # working directory is the plugin dir
    with pytest.raises(PluginCallError, match="sdk failed on purpose") as exc:
        manager.call("sdk", "fail")
    assert not isinstance(exc.value, PluginTimeout | PluginUnavailable)
    with pytest.raises(PluginCallError, match="unknown function: nope"):
        manager.call("sdk", "nope")
    with pytest.raises(PluginTimeout, match="300 ms") as texc:
        manager.call("sdk", "sleep", {"s": 3})
    assert texc.value.plugin == "sdk"
    with pytest.raises(PluginTimeout):  # a caller's timeout can only shorten it
        manager.call("sdk", "sleep", {"s": 3}, timeout=0.05)
    # the plugin survived its slow calls: same process, same state
    assert manager.call("sdk", "count") == 4
    assert manager.call("sdk", "pid") == pid


def test_calls_run_concurrently(plugins: Path, manager: Manager,
                                new_loader: Callable[..., Loader]) -> None:
    """8 calls in flight at once: each waits (inside the plugin) until it has seen 8."""
    sdk_plugin(plugins, "conc")
    new_loader().load_all()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: manager.call("conc", "gather", {"n": 8}), range(8)))
    assert results == [8] * 8


def test_acall(plugins: Path, manager: Manager, new_loader: Callable[..., Loader]) -> None:
    sdk_plugin(plugins, "aio", manifest={"resources": {"call_timeout_ms": 2000}})
    new_loader().load_all()

    async def main() -> None:
        got = await asyncio.gather(*(manager.acall("aio", "echo", {"i": i}) for i in range(5)))
        assert got == [{"i": i} for i in range(5)]
        ticks = 0

        async def ticker() -> None:  # the loop is not blocked while a call is in flight
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        with pytest.raises(PluginTimeout):
            await manager.acall("aio", "sleep", {"s": 3}, timeout=0.2)
        t.cancel()
        assert ticks > 1
        with pytest.raises(PluginCallError, match="failed on purpose"):
            await manager.acall("aio", "fail")

    asyncio.run(main())


def test_raw_grpcio_plugin_from_the_protocol_doc(plugins: Path, manager: Manager,
                                                 new_loader: Callable[..., Loader]) -> None:
    """raw_plugin.py uses only docs/protocol.md: the doc is enough to write a plugin."""
    fixture_plugin(plugins, "raw", "raw_plugin.py", {
        "permissions": ["config"], "config": {"who": "raw", "n": 3, "nested": {"a": [1]}}})
    assert new_loader().load_all() == (1, [])
    assert manager.call("raw", "echo", {"x": 1}) == {"x": 1}
    # Init got the manifest config (config_json)
    assert manager.call("raw", "init_config") == {"who": "raw", "n": 3, "nested": {"a": [1]}}
    # HostCall over PLUGHOST_HOST_ADDR: the Host service works for a non-SDK plugin
    # GoatFlow's shape, {"value": ...}
    assert manager.call("raw", "config", {"key": "who"}) == {"value": "raw"}
    assert manager.call("raw", "config", {"key": "nested"}) == {"value": {"a": [1]}}
    with pytest.raises(PluginCallError, match='plugin "raw": unknown config key: absent'):
        manager.call("raw", "config", {"key": "absent"})
    with pytest.raises(PluginCallError, match="cache read access not granted"):
        manager.call("raw", "hostcall", {"function": "cache_get", "args": {"key": "k"}})
    manager.call("raw", "log", {"level": 2, "message": "RAW-LOG-RPC"})
    assert ("plugin", "warning", "RAW-LOG-RPC") in records(manager, "raw")
    with pytest.raises(PluginCallError, match="unknown function: zap"):
        manager.call("raw", "zap")
    pid = pid_of(manager, "raw")
    manager.unregister("raw")
    assert reaped(pid)


# -- host calls --------------------------------------------------------------------------


def test_host_calls_permissions_and_log(plugins: Path, manager: Manager,
                                        new_loader: Callable[..., Loader]) -> None:
    sdk_plugin(plugins, "granted", manifest={"permissions": ["config", "log"],
                                             "config": {"who": "granted", "n": 7}})
    # Its registration asks for config and log too; a manifest that declares anything
    # is the whole declaration, so that is not granted.
    sdk_plugin(plugins, "bare", manifest={"config": {"who": "bare"}, "permissions": ["cache"]})
    assert new_loader().load_all() == (2, [])

    def host(name: str, fn: str, args: Any) -> Any:
        return manager.call(name, "host", {"function": fn, "args": args})

    assert host("granted", "config_get", {"key": "who"}) == {"value": "granted"}
    assert host("granted", "config_get", {"key": "n"}) == {"value": 7}
    host("granted", "log", {"level": "error", "message": "HOSTCALL-LOG-MARK"})
    assert ("plugin", "error", "HOSTCALL-LOG-MARK") in records(manager, "granted")
    manager.call("granted", "log", {"level": "info", "message": "LOG-RPC-MARK"})
    assert ("plugin", "info", "LOG-RPC-MARK") in records(manager, "granted")

    with pytest.raises(PluginCallError, match='plugin "bare": config key "who" access '
                       "denied"):
        host("bare", "config_get", {"key": "who"})
    assert ("host", "error", 'host_call config_get failed: plugin "bare": config key "who" '
            "access denied") in records(manager, "bare")
    with pytest.raises(PluginCallError, match="unknown host API method: no_such_fn"):
        host("bare", "no_such_fn", {})
    # Log RPC needs no permission: it only writes into the plugin's own log
    manager.call("bare", "log", {"level": "debug", "message": "BARE-LOG"})
    assert ("plugin", "debug", "BARE-LOG") in records(manager, "bare")


# -- start-up problems -------------------------------------------------------------------


def test_output_before_the_handshake_goes_to_the_log(plugins: Path, manager: Manager,
                                                     new_loader: Callable[..., Loader]) -> None:
    fixture_plugin(plugins, "noise", "noise_plugin.py")
    assert new_loader().load_all() == (1, [])
    assert manager.call("noise", "ping") == "pong"
    recs = records(manager, "noise")
    for i in range(3):
        assert ("stdout", "info", f"NOISE-STDOUT-{i} not a handshake | 1|2|3") in recs
        assert ("stderr", "warning", f"NOISE-STDERR-{i}") in recs
    assert not any(m.startswith("1|1|unix|") for _, _, m in recs)  # the handshake is not
    wait_until(lambda: log_has(manager, "noise", "NOISE-AFTER-HANDSHAKE", source="stdout"))


def test_no_handshake_times_out_with_stderr_and_kills(
        plugins: Path, manager: Manager, new_loader: Callable[..., Loader]) -> None:
    pdir = fixture_plugin(plugins, "hang", "hang_plugin.py",
                          {"resources": {"start_timeout_ms": 500}})
    count, errors = new_loader().load_all()
    assert count == 0 and len(errors) == 1
    err = errors[0]
    assert isinstance(err, PluginLoadError) and err.plugin == "hang"
    assert "no handshake" in str(err)
    assert "HANG-MARK: I will never print a handshake" in str(err)
    pid = int((pdir / "pid.txt").read_text())
    assert reaped(pid)
    assert "hang" not in manager.names()
    assert log_has(manager, "hang", "load failed", source="host")


def test_exit_before_handshake(plugins: Path, manager: Manager,
                               new_loader: Callable[..., Loader]) -> None:
    fixture_plugin(plugins, "exit2", "exit2_plugin.py")
    _, errors = new_loader().load_all()
    assert len(errors) == 1 and isinstance(errors[0], PluginLoadError)
    msg = str(errors[0])
    assert "code 2" in msg and "EXIT2-MARK: missing something" in msg
    assert ("stderr", "warning", "EXIT2-MARK: missing something, giving up") in records(
        manager, "exit2")


def test_not_executable(plugins: Path, manager: Manager,
                        new_loader: Callable[..., Loader]) -> None:
    pdir = fixture_plugin(plugins, "noexec", "notexec.sh")
    (pdir / "notexec.sh").chmod(0o644)
    _, errors = new_loader().load_all()
    assert len(errors) == 1 and isinstance(errors[0], PluginLoadError)
    assert "not executable" in str(errors[0]) and errors[0].plugin == "noexec"


@pytest.mark.parametrize("binary", ["../outside.py", "ABSOLUTE"])
def test_binary_outside_the_plugin_dir_is_a_manifest_error(
        binary: str, plugins: Path, manager: Manager,
        new_loader: Callable[..., Loader]) -> None:
    outside = plugins / "outside.py"
    outside.write_text(sdk_source("esc"))
    pdir = plugins / "esc"
    pdir.mkdir()
    write_manifest(pdir, "esc", str(outside) if binary == "ABSOLUTE" else binary, None)
    loader = new_loader()
    count, errors = loader.load_all()
    assert count == 0 and len(errors) == 1
    err = errors[0]
    assert isinstance(err, ManifestError) and err.field == "binary" and err.plugin == "esc"
    assert ("absolute" if binary == "ABSOLUTE" else "'..'") in str(err)
    [found] = loader.discovered_plugins()
    assert found.error is err and not found.loaded
    assert not list(pdir.glob("started-*")) and not list(plugins.glob("started-*"))


@pytest.mark.parametrize("line", [
    "1|1|unix|{unix}|grpc",
    "1|1|unix|{unix}|grpc|",  # go-plugin's 6th field: server certificate, empty
    "1|1|unix|{unix}|grpc||future",  # and a 7th
    "1|1|tcp|{tcp}|grpc",  # older go-plugin: loopback tcp
])
def test_handshake_variants_accepted(line: str, plugins: Path, manager: Manager,
                                     new_loader: Callable[..., Loader]) -> None:
    pdir = fixture_plugin(plugins, "hs", "handshake_plugin.py")
    (pdir / "handshake.txt").write_text(line)
    assert new_loader().load_all() == (1, [])
    assert manager.call("hs", "anything") == {"function": "anything"}


@pytest.mark.parametrize(("line", "why"), [
    ("2|1|unix|{unix}|grpc", "core protocol version 2"),
    ("1|1|tcp|10.9.8.7:1234|grpc", "not on loopback"),
])
def test_handshake_refused(line: str, why: str, plugins: Path, manager: Manager,
                           new_loader: Callable[..., Loader]) -> None:
    pdir = fixture_plugin(plugins, "hs", "handshake_plugin.py")
    (pdir / "handshake.txt").write_text(line)
    _, errors = new_loader().load_all()
    assert len(errors) == 1 and isinstance(errors[0], PluginLoadError)
    assert why in str(errors[0]) and "refused" in str(errors[0])
    assert manager.names() == []


def test_app_protocol_versions_are_negotiated_as_go_plugin_does(
        plugins: Path, manager: Manager, new_loader: Callable[..., Loader]) -> None:
    pdir = fixture_plugin(plugins, "v2", "handshake_plugin.py",
                          {"handshake": {"protocol_version": [2, 1]}})
    (pdir / "handshake.txt").write_text("1|{newest}|unix|{unix}|grpc")
    old = fixture_plugin(plugins, "v1only", "handshake_plugin.py")
    (old / "handshake.txt").write_text("1|2|unix|{unix}|grpc")  # speaks 2, host accepts 1
    count, errors = new_loader().load_all()
    assert count == 1 and manager.names() == ["v2"]  # it was offered "1,2" and chose 2
    (err,) = errors
    assert err.plugin == "v1only" and "app protocol version 2, plugin.yaml accepts 1" in str(err)
    assert "set `handshake: {protocol_version: 2}` in plugin.yaml" in str(err)


@pytest.mark.parametrize("bad", [0, [], [1, -2], True, "2"])
def test_a_bad_protocol_version_is_a_manifest_error(bad: Any, plugins: Path,
                                                    new_loader: Callable[..., Loader]) -> None:
    fixture_plugin(plugins, "bad", "handshake_plugin.py", {"handshake": {"protocol_version": bad}})
    _, errors = new_loader().load_all()
    assert len(errors) == 1 and isinstance(errors[0], ManifestError)
    assert "protocol_version" in str(errors[0])


GO_PLUGIN_COOKIE_CHECK = """
import os, sys
if os.environ.get("BASIC_PLUGIN") != "hello":
    sys.stderr.write("This binary is a plugin. These are not meant to be executed directly.\\n"
                     "Please execute the program that consumes these plugins, which will\\n"
                     "load any plugins automatically\\n")
    sys.exit(1)
"""


def test_a_foreign_cookie_says_to_set_the_handshake(plugins: Path,
                                                    new_loader: Callable[..., Loader]) -> None:
    pdir = plugins / "foreign"
    pdir.mkdir()
    (pdir / "foreign.py").write_text(GO_PLUGIN_COOKIE_CHECK)
    write_manifest(pdir, "foreign", "foreign.py", None)
    (err,) = new_loader().load_all()[1]
    assert "its magic cookie is not the one this host sends: set `handshake: " in str(err)


def test_a_grpc_server_announced_as_netrpc_fails_as_net_rpc(
        plugins: Path, manager: Manager, new_loader: Callable[..., Loader]) -> None:
    pdir = fixture_plugin(plugins, "hs", "handshake_plugin.py")
    (pdir / "handshake.txt").write_text("1|1|unix|{unix}|netrpc")
    (err,) = new_loader().load_all()[1]
    assert "start-up (net/rpc) " in str(err) and manager.names() == []


def test_custom_magic_cookie(plugins: Path, manager: Manager,
                             new_loader: Callable[..., Loader]) -> None:
    cookie = ("MY_COOKIE", "xyz")
    sdk_plugin(plugins, "nocookie", cookie=cookie)  # the manifest does not say: refused
    sdk_plugin(plugins, "cookie", cookie=cookie,
               manifest={"handshake": {"magic_cookie_key": "MY_COOKIE",
                                       "magic_cookie_value": "xyz"}})
    count, errors = new_loader().load_all()
    assert count == 1 and manager.names() == ["cookie"]
    assert len(errors) == 1 and isinstance(errors[0], PluginLoadError)
    assert errors[0].plugin == "nocookie" and "MY_COOKIE" in str(errors[0])
    env = manager.call("cookie", "env")
    assert env["MY_COOKIE"] == "xyz" and "PLUGHOST_PLUGIN" not in env


def test_environment_is_minimal(plugins: Path, manager: Manager, monkeypatch: pytest.MonkeyPatch,
                                new_loader: Callable[..., Loader]) -> None:
    monkeypatch.setenv("PH_TEST_LISTED", "listed value")
    monkeypatch.setenv("PH_TEST_UNLISTED", "secret")
    monkeypatch.delenv("PH_TEST_ABSENT", raising=False)
    # GoatFlow's way: a plugin's own GOATFLOW_PLUGIN_<NAME>_* variables, as they are and bare;
    # another plugin's are not passed
    monkeypatch.setenv("GOATFLOW_PLUGIN_ENVP_API_KEY", "k1")
    monkeypatch.setenv("GOATFLOW_PLUGIN_OTHER_API_KEY", "k2")
    sdk_plugin(plugins, "envp", manifest={"env": ["PH_TEST_LISTED", "PH_TEST_ABSENT"]})
    new_loader().load_all()
    expected = {"PATH", "PLUGHOST_PLUGIN", "PLUGIN_PROTOCOL_VERSIONS", "PLUGIN_UNIX_SOCKET_DIR",
                "TMPDIR", "PLUGHOST_HOST_ADDR", "PLUGHOST_HOST_TOKEN_FD", "PYTHONUNBUFFERED",
                "PYTHONDONTWRITEBYTECODE", "PH_TEST_LISTED", "HOME", "GOATKIT_PLUGIN",
                "GOATFLOW_PLUGIN_ENVP_API_KEY", "ENVP_API_KEY"}
    env = manager.call("envp", "env")
    # Python itself may add LC_CTYPE (PEP 538 locale coercion) after exec; nothing else.
    assert set(env) - {"LC_CTYPE"} == expected
    assert env["TMPDIR"] == env["PLUGIN_UNIX_SOCKET_DIR"] == env["HOME"]
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["GOATKIT_PLUGIN"] == "goatkit-v1"
    assert env["GOATFLOW_PLUGIN_ENVP_API_KEY"] == env["ENVP_API_KEY"] == "k1"
    # The token is in no environment: a number names the pipe it waits in.
    assert env["PLUGHOST_HOST_TOKEN_FD"].isdigit()
    token = manager.call("envp", "token")
    assert len(token) == 32 and token not in json.dumps(env)
    # What exec received, exactly:
    raw = Path(f"/proc/{pid_of(manager, 'envp')}/environ").read_bytes()
    assert {kv.split(b"=", 1)[0].decode() for kv in raw.split(b"\0") if kv} == expected
    assert env["PH_TEST_LISTED"] == "listed value"
    assert env["PATH"] == os.environ["PATH"]
    assert env["PLUGHOST_PLUGIN"] == "v1" and env["PLUGIN_PROTOCOL_VERSIONS"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    sock_dir = env["PLUGIN_UNIX_SOCKET_DIR"]
    assert len(sock_dir) < 60
    st = os.stat(sock_dir)
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.getuid()
    host_sock = env["PLUGHOST_HOST_ADDR"].removeprefix("unix://")
    assert env["PLUGHOST_HOST_ADDR"].startswith("unix:///") and os.path.exists(host_sock)
    assert len(host_sock) < 100  # sun_path is 108 bytes
    # Someone else on the socket (another plugin, say) cannot speak as this plugin.
    import grpc

    from plughost.proto.plughost.v1 import plugin_pb2 as pb
    from plughost.proto.plughost.v1 import plugin_pb2_grpc as pb_grpc
    with grpc.insecure_channel(f"unix:{host_sock}") as channel:
        stub = pb_grpc.HostStub(channel)
        request = pb.HostCallRequest(function="config_get", args=b'{"key": "x"}')
        for metadata in ((), (("plughost-host-token", "guess"),)):
            with pytest.raises(grpc.RpcError) as info:
                stub.HostCall(request, timeout=10, metadata=metadata)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        good = (("plughost-host-token", token),)
        assert stub.HostCall(request, timeout=10, metadata=good).error.startswith(
            'plugin "envp": ')  # the token is right: the call reaches dispatch
    assert any("without this plugin's token" in r.message
               for r in manager.log_for("envp").records())
    manager.unregister("envp")
    assert not os.path.exists(sock_dir)


# -- crashes and supervision -------------------------------------------------------------


def test_kill9_under_load_fails_fast_then_serves_again(
        plugins: Path, manager: Manager, new_loader: Callable[..., Loader]) -> None:
    sdk_plugin(plugins, "k9", manifest={"resources": {"call_timeout_ms": 10_000},
                                        "permissions": ["config"], "config": {"k": 1}})
    events = Events(manager)
    new_loader().load_all()
    pid = manager.call("k9", "pid")
    stop = threading.Event()
    lock = threading.Lock()
    ok = [0]
    unavailable = [0]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        fn, args = ("count", None) if i % 2 else ("echo", {"i": i})
        while not stop.is_set():
            try:
                manager.call("k9", fn, args)
                with lock:
                    ok[0] += 1
            except PluginUnavailable:
                with lock:
                    unavailable[0] += 1
                stop.wait(0.002)
            except BaseException as exc:
                with lock:
                    errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(6)]
    for t in threads:
        t.start()
    wait_until(lambda: ok[0] >= 50)
    os.kill(pid, signal.SIGKILL)
    events.wait("crash")
    events.wait("restart")
    new_pid = manager.call("k9", "pid")
    assert new_pid != pid and reaped(pid)
    before = ok[0]
    wait_until(lambda: ok[0] >= before + 50)  # serving the load again
    stop.set()
    for t in threads:
        t.join(15)
        assert not t.is_alive(), "a call hung"
    assert errors == [], [f"{type(e).__name__}: {e}" for e in errors[:5]]
    assert unavailable[0] > 0
    crash = next(e for e in events.events if e.kind == "crash")
    assert crash.plugin == "k9" and "-9" in crash.detail
    assert log_has(manager, "k9", "exited unexpectedly", source="host")
    info = manager.info("k9")
    assert info is not None and info.state == "running"
    # the restarted process has the same grant
    assert manager.call("k9", "host", {"function": "config_get", "args": {"key": "k"}}) == {
        "value": 1}


def test_call_racing_a_crash_is_unavailable(plugins: Path, manager: Manager,
                                            new_loader: Callable[..., Loader]) -> None:
    """Deterministic version of the race: hold one call right after it picked its
    connection (as a preempted thread would be held), crash the plugin, let it go on."""
    sdk_plugin(plugins, "race")
    events = Events(manager)
    new_loader().load_all()
    plugin = grpc_plugin(manager, "race")
    # White-box on purpose: holding one call between picking its connection and using it
    # needs that connection's stub; no public surface can stop a call half-way.
    conn = plugin._conn
    assert conn is not None
    real = conn.stub
    entered, go = threading.Event(), threading.Event()

    class Held:
        @property
        def Call(self) -> Any:
            entered.set()
            go.wait(10)
            return real.Call

    conn.stub = Held()  # type: ignore[assignment]
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            manager.call("race", "echo", {})
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    assert entered.wait(10)
    os.kill(pid_of(manager, "race"), signal.SIGKILL)
    events.wait("crash")
    go.set()
    t.join(10)
    assert isinstance(outcome[0], PluginUnavailable), repr(outcome[0])


def test_crash_noticed_while_a_child_holds_the_pipes(
        plugins: Path, manager: Manager, new_loader: Callable[..., Loader]) -> None:
    sdk_plugin(plugins, "holder", manifest={"resources": {"shutdown_timeout_ms": 300}})
    events = Events(manager)
    new_loader().load_all()
    child = manager.call("holder", "child", {"inherit": True})
    try:
        with pytest.raises(PluginUnavailable):
            manager.call("holder", "crash")
        # "noticed at once"; 5 s is past the 2 s + 2 s the waiter gives the pipe readers
        events.wait("crash", timeout=5)
        events.wait("restart")
        wait_until(lambda: dead(child))  # a crash kills the plugin's process group
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_crash_loop_opens_the_circuit_until_reload(
        plugins: Path, manager: Manager, new_loader: Callable[..., Loader]) -> None:
    sdk_plugin(plugins, "loop")
    events = Events(manager)
    loader = new_loader()
    loader.load_all()
    pids = []
    for i in range(1, FAST.max_crashes + 1):
        pids.append(manager.call("loop", "pid"))
        with pytest.raises(PluginUnavailable):
            manager.call("loop", "crash")
        events.wait("crash", i)
        if i < FAST.max_crashes:
            events.wait("restart", i)
    events.wait("failed")
    info = manager.info("loop")
    assert info is not None and info.state == "failed"
    assert events.count("restart") == FAST.max_crashes - 1
    with pytest.raises(PluginUnavailable, match="circuit") as exc:
        manager.call("loop", "echo", {})
    assert exc.value.plugin == "loop"
    assert log_has(manager, "loop", "circuit open", source="host")
    assert all(reaped(p) for p in pids)
    loader.reload("loop")
    info = manager.info("loop")
    assert info is not None and info.state == "running"
    assert manager.call("loop", "count") == 1
    assert manager.call("loop", "pid") not in pids


def test_crash_on_restart_ends_failed(plugins: Path, manager: Manager,
                                      new_loader: Callable[..., Loader]) -> None:
    pdir = sdk_plugin(plugins, "frail")
    events = Events(manager)
    loader = new_loader()
    loader.load_all()
    (pdir / "crash_on_start").write_text("")
    with pytest.raises(PluginUnavailable):
        manager.call("frail", "crash")
    events.wait("failed")
    assert events.count("crash") == 1 and events.count("restart") == 0
    info = manager.info("frail")
    assert info is not None and info.state == "failed"
    assert log_has(manager, "frail", "restart failed", source="host")
    assert log_has(manager, "frail", "crash_on_start marker present", source="host")
    with pytest.raises(PluginUnavailable, match="circuit"):
        manager.call("frail", "echo")
    # a reload that cannot start either: the failed one stays registered, error raised
    with pytest.raises(PluginLoadError, match="code 4"):
        loader.reload("frail")
    (pdir / "crash_on_start").unlink()
    loader.reload("frail")
    assert manager.call("frail", "echo", [1]) == [1]


def test_unload_during_restart_leaves_no_process(
        plugins: Path, manager: Manager, new_loader: Callable[..., Loader]) -> None:
    pdir = sdk_plugin(plugins, "ur")
    events = Events(manager)
    loader = new_loader()
    loader.load_all()
    sock_dir = manager.call("ur", "env")["PLUGIN_UNIX_SOCKET_DIR"]
    os.kill(manager.call("ur", "pid"), signal.SIGKILL)
    events.wait("crash")
    loader.unload("ur")  # while the restart is backing off or starting
    wait_until(lambda: not any(t.name in ("ur-wait", "ur-restart")
                               for t in threading.enumerate()))
    pids = [int(f.name.split("-")[1]) for f in pdir.glob("started-*")]
    assert pids and all(reaped(p) for p in pids), {p: proc_state(p) for p in pids}
    assert not os.path.exists(sock_dir)
    assert manager.names() == []


def test_registration_name_must_match(plugins: Path, manager: Manager,
                                      new_loader: Callable[..., Loader]) -> None:
    pdir = plugins / "mis"
    pdir.mkdir()
    (pdir / "plugin.py").write_text(sdk_source("impostor"))
    write_manifest(pdir, "mis", "plugin.py", None)
    _, errors = new_loader().load_all()
    assert len(errors) == 1 and isinstance(errors[0], ManifestError)
    assert errors[0].field == "name" and "impostor" in str(errors[0])
    [started] = pdir.glob("started-*")
    assert reaped(int(started.name.split("-")[1]))
    assert manager.names() == []


def test_init_that_never_returns_fails_the_load(plugins: Path, manager: Manager,
                                                new_loader: Callable[..., Loader]) -> None:
    pdir = sdk_plugin(plugins, "slowinit", manifest={"resources": {"start_timeout_ms": 2500}})
    (pdir / "slow_init").write_text("")
    _, errors = new_loader().load_all()
    assert len(errors) == 1 and isinstance(errors[0], PluginLoadError)
    assert "DEADLINE_EXCEEDED" in str(errors[0])
    [started] = pdir.glob("started-*")
    assert reaped(int(started.name.split("-")[1]))


def test_stuck_shutdown_is_bounded_and_blocks_nothing(
        plugins: Path, manager: Manager, new_loader: Callable[..., Loader]) -> None:
    pdir = sdk_plugin(plugins, "stuck", manifest={"resources": {"shutdown_timeout_ms": 300}})
    write_wasm(plugins, "w")
    loader = new_loader()
    assert loader.load_all() == (2, [])
    pid = manager.call("stuck", "pid")
    (pdir / "slow_shutdown").write_text("")  # its on_shutdown hook will never return
    done = threading.Event()

    def unload() -> None:
        loader.unload("stuck")
        done.set()

    threading.Thread(target=unload, daemon=True).start()
    wait_until(lambda: (pdir / f"shutdown-{pid}").exists())  # stuck in the hook now
    assert manager.call("w", "count") == 1  # the registry serves while it is stuck
    assert done.wait(20)
    assert reaped(pid)  # SIGTERM ignored (the hook keeps sleeping), so SIGKILL
    assert manager.names() == ["w"]


# -- no process, socket or fd left behind ------------------------------------------------


def test_unload_leaves_nothing_behind(plugins: Path, manager: Manager,
                                      new_loader: Callable[..., Loader]) -> None:
    pdir = sdk_plugin(plugins, "tidy")
    loader = new_loader()
    # Loaded from a short-lived thread: PDEATHSIG must not fire when that thread exits.
    tid: list[int] = []

    def load() -> None:
        tid.append(threading.get_native_id())
        loader.load_all()

    t = threading.Thread(target=load)
    t.start()
    t.join()
    wait_until(lambda: not os.path.exists(f"/proc/self/task/{tid[0]}"))
    pid = manager.call("tidy", "pid")
    assert proc_state(pid) not in (None, "Z")
    child = manager.call("tidy", "child", {})
    assert proc_state(child) not in (None, "Z")
    assert os.getpgid(child) == pid  # the plugin leads its own process group
    sock_dir = manager.call("tidy", "env")["PLUGIN_UNIX_SOCKET_DIR"]
    assert os.path.isdir(sock_dir)
    loader.unload("tidy")
    assert reaped(pid)  # reaped by us by the time unload returns: no zombie
    assert not os.path.exists(sock_dir)
    assert (pdir / f"shutdown-{pid}").exists()  # SDK on_shutdown ran: Shutdown RPC arrived
    wait_until(lambda: dead(child))
    assert manager.names() == [] and names(loader) == ["tidy"]


def test_unload_with_a_child_holding_the_pipes(plugins: Path, manager: Manager,
                                               new_loader: Callable[..., Loader]) -> None:
    """A grandchild that inherited stdout/stderr keeps the pipes open after the plugin
    exits; unload must still finish, and kill it."""
    sdk_plugin(plugins, "pipes", manifest={"resources": {"shutdown_timeout_ms": 1000}})
    loader = new_loader()
    loader.load_all()
    pid = manager.call("pipes", "pid")
    child = manager.call("pipes", "child", {"inherit": True})
    done = threading.Event()

    def unload() -> None:
        loader.unload("pipes")
        done.set()

    threading.Thread(target=unload, daemon=True).start()
    assert done.wait(20), "unload hung on the grandchild's open pipes"
    assert reaped(pid)
    wait_until(lambda: dead(child))


def test_fds_do_not_leak(plugins: Path, manager: Manager,
                         new_loader: Callable[..., Loader]) -> None:
    fixture_plugin(plugins, "fd", "handshake_plugin.py")
    (plugins / "fd" / "handshake.txt").write_text("1|1|unix|{unix}|grpc")
    loader = new_loader()

    def cycle() -> None:
        loader.ensure_loaded("fd")
        assert manager.call("fd", "x") == {"function": "x"}
        loader.unload("fd")

    loader.discover_all()
    cycle()  # grpc sets up its process-wide machinery on first use
    start = len(os.listdir("/proc/self/fd"))
    threads = threading.active_count()
    for _ in range(5):
        cycle()
    end = len(os.listdir("/proc/self/fd"))
    assert end - start < 5, f"fds: {start} -> {end}"
    wait_until(lambda: threading.active_count() < threads + 5)


HOST_SCRIPT = """
import sys
from plughost import Loader, Manager
m = Manager()
loader = Loader(sys.argv[1], m, cache_dir=None)
count, errors = loader.load_all()
assert errors == [], errors
print(m.get("hx").pid, flush=True)
if sys.argv[2] == "close":
    m.close()
    print("closed", flush=True)
else:
    sys.stdin.read()  # until killed
"""


@pytest.mark.parametrize("how", ["sigkill", "close"])
def test_plugin_never_outlives_its_host(how: str, plugins: Path) -> None:
    # handshake_plugin does not watch its parent: only the host's PDEATHSIG can kill it
    fixture_plugin(plugins, "hx", "handshake_plugin.py")
    (plugins / "hx" / "handshake.txt").write_text("1|1|unix|{unix}|grpc")
    host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT, str(plugins), how],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert host.stdout is not None
        pid = int(host.stdout.readline())
        assert proc_state(pid) not in (None, "Z")
        if how == "sigkill":
            host.kill()
        else:
            assert host.stdout.readline().strip() == "closed"
            assert reaped(pid)  # the host waited for it before close() returned
        assert host.wait(20) == (-signal.SIGKILL if how == "sigkill" else 0)
        wait_until(lambda: dead(pid))
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()


# -- reload ------------------------------------------------------------------------------


def test_reload_under_load_has_zero_failed_calls(
        plugins: Path, manager: Manager, new_loader: Callable[..., Loader]) -> None:
    pdir = sdk_plugin(plugins, "rl", version="v0")
    loader = new_loader()
    loader.load_all()
    pids = [manager.call("rl", "pid")]
    stop = threading.Event()
    seen: set[str] = set()
    calls = [0]
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set():
            try:
                v = manager.call("rl", "version")
            except BaseException as exc:
                with lock:
                    failures.append(exc)
            else:
                with lock:
                    seen.add(v)
                    calls[0] += 1
                stop.wait(0.005)  # steady load, without starving the new version's start

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    for i in range(1, 6):
        replace_file(pdir / "plugin.py", sdk_source("rl", f"v{i}"))
        loader.reload("rl")
        pids.append(pid_of(manager, "rl"))
        wait_until(lambda i=i: f"v{i}" in seen)  # type: ignore[misc]
    stop.set()
    for t in threads:
        t.join(15)
        assert not t.is_alive()
    assert failures == [], [f"{type(e).__name__}: {e}" for e in failures[:5]]
    assert seen == {f"v{i}" for i in range(6)}
    assert calls[0] > 0
    assert len(set(pids)) == 6
    assert all(reaped(p) for p in pids[:-1])
    assert manager.call("rl", "version") == "v5"


def test_load_or_reload_picks_up_a_new_executable(
        plugins: Path, manager: Manager, new_loader: Callable[..., Loader]) -> None:
    pdir = plugins / "exe"
    pdir.mkdir()
    (pdir / "a.py").write_text(sdk_source("exe", "A"))
    (pdir / "b.py").write_text(sdk_source("exe", "B"))
    write_wrapper(pdir / "run", pdir / "a.py")
    write_manifest(pdir, "exe", "run", None)
    loader = new_loader()
    assert loader.load_all() == (1, [])
    assert manager.call("exe", "version") == "A"
    old = pid_of(manager, "exe")
    assert manager.call("exe", "pid") == old  # exec: the wrapper became Python, same pid
    write_wrapper(pdir / "run", pdir / "b.py")
    loader.load_or_reload("exe")
    assert manager.call("exe", "version") == "B"
    assert reaped(old)
    # and a plugin that appeared after start
    sdk_plugin(plugins, "late")
    loader.load_or_reload("late")
    assert manager.call("late", "echo", "hi") == "hi"


def test_shutdown_rpc_reaches_the_plugin(plugins: Path, manager: Manager,
                                         new_loader: Callable[..., Loader]) -> None:
    """Polite stop: the SDK's on_shutdown hook runs (it needs the Shutdown RPC; SIGTERM or
    SIGKILL alone would not write the file before the grace period)."""
    pdir = sdk_plugin(plugins, "bye", manifest={"resources": {"shutdown_timeout_ms": 5000}})
    loader = new_loader()
    loader.load_all()
    pid = manager.call("bye", "pid")
    loader.unload("bye")
    assert json.loads((pdir / f"shutdown-{pid}").read_text()) == {"pid": pid}
    assert reaped(pid)
    assert log_has(manager, "bye", "loaded version 1.0.0", source="host")


def test_errors_are_plughost_errors(plugins: Path, manager: Manager,
                                    new_loader: Callable[..., Loader]) -> None:
    """A call to an unloaded grpc plugin is a typed error too."""
    sdk_plugin(plugins, "gone")
    loader = new_loader()
    loader.load_all()
    plugin = grpc_plugin(manager, "gone")
    loader.unload("gone")
    assert plugin.state == "stopped"
    with pytest.raises(PluginUnavailable, match="shut down"):
        plugin.call("echo", b"{}")
    with pytest.raises(PlughostError):
        manager.call("gone", "echo")


def test_sdk_typed_host_helpers(plugins: Path, tmp_path: Path) -> None:
    """plughost.sdk's helpers unwrap GoatFlow's shapes (base64, {"value"}, {"affected"})."""
    from plughost.host import HostSettings

    from .test_goatflow_hostapi import Web

    web = Web()
    sdk_plugin(plugins, "helped", manifest={
        "config": {"who": "me"}, "resources": {"permissions": [
            {"type": "cache", "access": "readwrite"}, {"type": "db", "access": "readwrite"},
            {"type": "config", "access": "read"}, {"type": "http", "scope": ["127.0.0.1"]}]}})
    manager = Manager(settings=HostSettings(data_dir=tmp_path / "data"), drain_timeout=10.0)
    manager.host.translations.install("host", {"namespace": "app", "translations": {
        "en": {"n": "%v items"}}})
    events: list[Any] = []
    manager.add_listener(events.append)
    loader = Loader(plugins, manager)
    try:
        assert loader.load_all() == (1, [])
        assert manager.call("helped", "helpers", {"url": web.url("/echo")}) == {
            "cache": [0, 98, 121, 116, 101, 115, 255], "miss": None, "config": "me",
            "rows": [{"y": 42}], "affected": 1, "http": [200, "ping"],
            "translate": "3 items"}
        assert [(e.channel, e.event_type, e.detail) for e in events
                if e.kind == "plugin_event"] == [("ch", "typ", "data")]
    finally:
        loader.close()
        manager.close()
        web.close()
