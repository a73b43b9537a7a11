"""A GoatFlow-style "gRPC" plugin (go-plugin 1.0.1 net/rpc over yamux with gob, GoatFlow's
cookie, methods and structs; tests/fixtures/goplugin/netrpc, built from source with Debian's
Go) hosted unchanged through the Loader and the server: calls, Init's config, the host API
over the broker with the call token, its stdout and stderr, deadlines, crashes."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from plughost import Loader, Manager, PluginCallError, PluginTimeout
from plughost.host import HostSettings
from plughost.runtimes.grpc import GrpcPlugin
from plughost.runtimes.netrpc_connection import NetRpcConnection
from plughost.server import create_app

from .conftest import wait_until
from .goplugin import build, install
from .serving import serve_in_thread

NAME = "netrpc-demo"


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("netrpc", tmp_path_factory.mktemp("netrpc"))


@pytest.fixture
def demo(binary: Path, plugins: Path, tmp_path: Path) -> Iterator[tuple[Manager, Loader]]:
    """netrpc-demo in a plugin dir with GoatFlow's plugin.yaml (no handshake: key)."""
    install(binary, plugins, NAME, "config: {greeting: hi, n: 2}\n")
    manager = Manager(settings=HostSettings(data_dir=tmp_path / "data"), drain_timeout=5.0)
    loader = Loader(plugins, manager, cache_dir=None)
    try:
        yield manager, loader
    finally:
        loader.close()
        manager.close()


def loaded(demo: tuple[Manager, Loader]) -> Manager:
    manager, loader = demo
    assert loader.load_all() == (1, [])
    return manager


def test_it_loads_and_answers_over_net_rpc(demo: tuple[Manager, Loader],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOATFLOW_PLUGIN_NETRPC_DEMO_API_KEY", "k-1")
    m = loaded(demo)
    plugin = m.get(NAME)
    assert isinstance(plugin, GrpcPlugin) and isinstance(plugin._conn, NetRpcConnection)
    assert m.call_raw(NAME, "echo", b'{"a":[1,2]}') == b'{"a":[1,2]}'
    assert m.call(NAME, "hello", {"name": "Ada"}) == {"message": "Hello, Ada!"}
    config = m.call(NAME, "config")
    # GoatFlow's Init config: the manifest's as strings, the host's keys, its env's
    assert {k: config[k] for k in ("greeting", "n", "api_key", "host_version", "plugin_name")} \
        == {"greeting": "hi", "n": "2", "api_key": "k-1", "host_version": "0.10.0",
            "plugin_name": NAME}
    assert config["work_dir"] == plugin._dir and config["plugin_dir"].endswith(NAME)
    with pytest.raises(PluginCallError, match="asked to fail"):
        m.call(NAME, "fail")
    with pytest.raises(PluginCallError, match="unknown function: nope"):
        m.call(NAME, "nope")


def test_the_host_api_answers_over_the_broker_with_the_calls_context(
        demo: tuple[Manager, Loader]) -> None:
    m = loaded(demo)
    assert set(m.call(NAME, "host", {"method": "time_now", "args": {}})) == {"now"}
    # the call token carries the call's context: the organisation of the application's call
    got = m.call_raw(NAME, "host", b'{"method":"org_id","args":{},"_org_id":7}')
    assert got == b"7"
    got = m.call(NAME, "host", {"method": "org_id", "args": {}, "call_token": "forged"})
    assert got == {"host_error": "unknown or finished call context"}
    refused = m.call(NAME, "host", {"method": "db_exec", "args": {"query": "DROP TABLE x"}})
    assert "host_error" in refused  # a refusal in GoatFlow's words, not a broken stream


def test_its_output_after_serve_reaches_the_log(demo: tuple[Manager, Loader]) -> None:
    m = loaded(demo)
    m.call(NAME, "stdout")

    def lines() -> set[tuple[str, str]]:
        return {(r.source, r.message) for r in m.log_for(NAME).records()}

    wait_until(lambda: {("stdout", "netrpc-demo stdout: hello"),
                        ("stderr", "netrpc-demo stderr: hello")} <= lines())
    init = [r for r in m.log_for(NAME).records() if r.message == "initialised"]
    assert init and init[0].level == "info" and init[0].fields["host_api_id"] == "1"


def test_a_deadline_and_a_crash(demo: tuple[Manager, Loader]) -> None:
    m = loaded(demo)
    with pytest.raises(PluginTimeout, match="deadline of 200 ms"):
        m.call(NAME, "slow", {"ms": 2000}, timeout=0.2)
    assert m.call_raw(NAME, "echo", b"1") == b"1"  # the late answer is dropped
    plugin = m.get(NAME)
    assert isinstance(plugin, GrpcPlugin) and plugin.pid is not None
    old = plugin.pid
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: plugin.pid not in (None, old) and plugin.state == "running",
               timeout=30)
    assert m.call_raw(NAME, "echo", b"2") == b"2"
    sockets = [p for p in Path(plugin._dir).iterdir() if p.name.startswith("plugin")]
    assert len(sockets) == 1  # the dead process's socket went with it


def test_its_route_is_served_over_http(demo: tuple[Manager, Loader]) -> None:
    manager, loader = demo
    with serve_in_thread(create_app(manager, loader, watch=False, jobs=False,
                                    health=False)) as s:
        r = httpx.get(f"{s.url}/api/plugins/{NAME}/hello", params={"name": "Bo"}, timeout=30)
        assert r.content == b'{"message":"Hello, Bo!"}'


def test_it_runs_confined_by_bubblewrap(binary: Path, plugins: Path, tmp_path: Path) -> None:
    from plughost import Sandbox

    sandbox = Sandbox("auto", read_only=(), writable=())
    if not sandbox.active:
        pytest.skip("bubblewrap is not installed or cannot make namespaces here")
    install(binary, plugins, NAME)
    with Manager(settings=HostSettings(data_dir=tmp_path / "data")) as m:
        loader = Loader(plugins, m, cache_dir=None, sandbox=sandbox)
        try:
            assert loader.load_all() == (1, [])
            assert m.call_raw(NAME, "echo", b'{"in":"jail"}') == b'{"in":"jail"}'
            assert set(m.call(NAME, "host", {"method": "time_now", "args": {}})) == {"now"}
            env = m.call(NAME, "env")
            plugin = m.get(NAME)
            assert isinstance(plugin, GrpcPlugin)
            assert env["TMPDIR"] == env["HOME"] == plugin._dir  # its only writable place
        finally:
            loader.close()


def test_the_cli_calls_it(binary: Path, plugins: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    install(binary, plugins, NAME)
    env = {**os.environ, "PLUGHOST_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "plughost", "call", "--dir", str(plugins),
                          NAME, "hello", '{"name": "CLI"}'], capture_output=True, text=True,
                         timeout=120, env=env, check=False)
    assert out.returncode == 0, out.stderr
    assert "Hello, CLI!" in out.stdout
    listed = subprocess.run([sys.executable, "-m", "plughost", "list", "--json", str(plugins)],
                            capture_output=True, text=True, timeout=120, env=env, check=False)
    assert listed.returncode == 0, listed.stderr
    assert NAME in listed.stdout
