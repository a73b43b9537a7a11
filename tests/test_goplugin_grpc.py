"""A Go plugin on hashicorp/go-plugin 1.0.1 (plugin.Serve + GRPCServer, implementing
plughost.v1; tests/fixtures/goplugin/grpc), built from source with Debian's Go, hosted
through the Loader: hclog lines with their levels and fields, app protocol negotiation,
ctx.Err() as a timeout, and no socket left behind."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from plughost import Loader, Manager, PluginTimeout
from plughost.host import HostSettings
from plughost.runtimes.grpc import GrpcPlugin

from .conftest import wait_until
from .goplugin import build, install


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("grpc", tmp_path_factory.mktemp("goplugin"))


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Manager]:
    with Manager(settings=HostSettings(data_dir=tmp_path / "data"), drain_timeout=5.0) as m:
        yield m


def load(plugins: Path, manager: Manager) -> Loader:
    loader = Loader(plugins, manager, cache_dir=None)
    count, errors = loader.load_all()
    assert errors == [] and count >= 1
    return loader


def test_a_go_plugin_serves_and_logs_with_its_levels(binary: Path, plugins: Path,
                                                      host: Manager,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOPLUGIN_NAME", "gp")
    install(binary, plugins, "gp", "config: {a: 1, b: two}\n")
    loader = load(plugins, host)
    try:
        assert host.call_raw("gp", "echo", b'{"x":[1,2]}') == b'{"x":[1,2]}'
        assert host.call("gp", "version") == 1  # the default: app protocol version 1
        init = [r for r in host.log_for("gp").records() if r.message == "initialised"]
        assert [(r.level, dict(r.fields)) for r in init] == [("info", {"keys": "2"})]
    finally:
        loader.close()


def test_it_serves_the_newest_protocol_version_offered(binary: Path, plugins: Path,
                                                        host: Manager,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOPLUGIN_NAME", "gp2")
    install(binary, plugins, "gp2", "handshake: {protocol_version: [1, 2]}\n")
    loader = load(plugins, host)
    try:
        assert host.call("gp2", "version") == 2
    finally:
        loader.close()


def test_a_handler_returning_ctx_err_is_a_timeout(binary: Path, plugins: Path, host: Manager,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOPLUGIN_NAME", "waiter")
    install(binary, plugins, "waiter")
    loader = load(plugins, host)
    try:
        with pytest.raises(PluginTimeout, match="deadline of 300 ms"):
            host.call("waiter", "wait", timeout=0.3)
        assert host.call_raw("waiter", "echo", b"1") == b"1"  # and it still serves
    finally:
        loader.close()


def test_a_crash_leaves_no_socket_behind(binary: Path, plugins: Path, host: Manager,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOPLUGIN_NAME", "crashy")
    install(binary, plugins, "crashy")
    loader = load(plugins, host)
    try:
        plugin = host.get("crashy")
        assert isinstance(plugin, GrpcPlugin) and plugin.pid is not None
        run_dir = Path(plugin._dir)

        def sockets() -> list[str]:
            return sorted(p.name for p in run_dir.iterdir() if p.name.startswith("plugin"))

        (first,) = sockets()  # go-plugin 1.0.1 makes it under TMPDIR: the private dir
        old = plugin.pid
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: plugin.pid not in (None, old) and plugin.state == "running",
                   timeout=30)
        (second,) = sockets()  # the dead process's socket is gone, the new one is there
        assert second != first
    finally:
        loader.close()
    assert not run_dir.exists()
