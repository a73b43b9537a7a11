"""Manager: registry, routing, atomic replace with drain, enable/disable, asyncio twins."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from plughost import (
    Event,
    Loader,
    Manager,
    PluginDisabled,
    PluginLoadError,
    PluginNotFound,
    PluginTimeout,
    PluginUnavailable,
)
from plughost.discovery import scan
from plughost.plugin import Plugin, StartContext

from .conftest import wait_until, write_plugin_dir, write_wasm


def build(loader: Loader, name: str) -> Plugin:
    """A fresh, unregistered plugin object, started through the loader's own seam."""
    [found] = [f for f in scan(loader.plugin_dir) if f.name == name]
    staged = loader.stager.stage(found)
    return loader.runtimes[staged.source.kind].start(staged, StartContext(
        host=loader.manager.host, log=loader.manager.log_for(name), caller=loader.manager))


def test_register_get_list_unregister(make_loader: Callable[..., Loader], plugins: Path,
                                      manager: Manager) -> None:
    write_wasm(plugins, "a")
    write_wasm(plugins, "b")
    loader = make_loader(lazy=True)
    loader.discover_all()
    assert manager.names() == []
    a = build(loader, "a")
    manager.register(a)
    assert manager.get("a") is a and "a" in manager and manager.get("b") is None
    with pytest.raises(PluginLoadError, match="already registered"):
        manager.register(build(loader, "a"))
    manager.register(build(loader, "b"))
    infos = manager.list()
    assert [(i.name, i.kind, i.version, i.enabled) for i in infos] == [
        ("a", "wasm", "1.0.0", True), ("b", "wasm", "1.0.0", True)]
    assert manager.call("a", "count") == 1
    assert manager.unregister("a") is a
    assert manager.get("a") is None
    with pytest.raises(PluginUnavailable):  # the old object is shut down
        a.call("count", b"")
    with pytest.raises(PluginNotFound):
        manager.unregister("a")


def test_call_unknown_plugin_is_typed(manager: Manager) -> None:
    with pytest.raises(PluginNotFound) as info:
        manager.call("ghost", "x")
    assert info.value.plugin == "ghost"


def test_enable_disable(make_loader: Callable[..., Loader], plugins: Path,
                        manager: Manager) -> None:
    write_wasm(plugins, "a")
    make_loader().load_all()
    assert manager.call("a", "count") == 1
    manager.disable("a")
    with pytest.raises(PluginDisabled) as info:
        manager.call("a", "count")
    assert info.value.plugin == "a"
    assert manager.info("a").enabled is False  # type: ignore[union-attr]
    manager.enable("a")
    assert manager.call("a", "count") == 2  # stayed loaded: state kept
    with pytest.raises(PluginNotFound):
        manager.disable("ghost")


def test_replace_drains_in_flight_calls_on_the_old_version(
        make_loader: Callable[..., Loader], plugins: Path, manager: Manager) -> None:
    write_plugin_dir(plugins, "slow", {"resources": {"call_timeout_ms": 400}})
    loader = make_loader()
    loader.load_all()
    old = manager.get("slow")
    events: list[Event] = []
    manager.add_listener(events.append)
    outcome: dict[str, BaseException] = {}

    def long_call() -> None:
        try:
            manager.call("slow", "loop")
        except BaseException as exc:
            outcome["loop"] = exc

    t = threading.Thread(target=long_call)
    t.start()
    wait_until(lambda: manager.info("slow").inflight == 1)  # type: ignore[union-attr]
    new = build(loader, "slow")
    replaced = manager.replace(new)
    # replace returned only after the old call finished, on the old instance
    assert replaced is old
    t.join(5)
    assert isinstance(outcome["loop"], PluginTimeout)
    assert manager.get("slow") is new
    assert manager.call("slow", "count") == 1
    assert [e.kind for e in events] == ["call_error", "reload"]  # the timeout, then the swap


def test_replace_keeps_disabled_state_and_registers_when_absent(
        make_loader: Callable[..., Loader], plugins: Path, manager: Manager) -> None:
    write_wasm(plugins, "a")
    loader = make_loader(lazy=True)
    loader.discover_all()
    assert manager.replace(build(loader, "a")) is None  # nothing to replace: registers
    manager.disable("a")
    manager.replace(build(loader, "a"))
    with pytest.raises(PluginDisabled):
        manager.call("a", "count")


def test_shutdown_all_unloads_everything(make_loader: Callable[..., Loader], plugins: Path,
                                         manager: Manager) -> None:
    for n in "abcd":
        write_wasm(plugins, n)
    make_loader().load_all()
    objs = [manager.get(n) for n in "abcd"]
    manager.shutdown_all(timeout=5)
    assert manager.names() == []
    for p in objs:
        with pytest.raises(PluginUnavailable):
            p.call("count", b"")  # type: ignore[union-attr]


def test_args_bytes_pass_through_and_none_means_empty_object(
        make_loader: Callable[..., Loader], plugins: Path, manager: Manager) -> None:
    write_wasm(plugins, "a")
    make_loader().load_all()
    assert manager.call_raw("a", "echo", b'{"x":1}') == b'{"x":1}'
    assert manager.call("a", "echo", b"[1, 2]") == [1, 2]
    assert manager.call("a", "echo") == {}
    assert manager.call("a", "nothing") is None


def test_acall_and_async_twins(make_loader: Callable[..., Loader], plugins: Path,
                               manager: Manager) -> None:
    write_plugin_dir(plugins, "a", {"resources": {"call_timeout_ms": 300}})
    loader = make_loader(lazy=True)

    async def main() -> None:
        count, errors = await loader.aload_all()
        assert (count, errors) == (1, [])
        assert await manager.acall("a", "count") == 1  # lazy load inside the executor
        call = asyncio.create_task(manager.acall("a", "loop"))
        spins = 0
        # The event loop keeps turning while the plugin spins in wasm on a worker thread.
        while manager.info("a").inflight == 0:  # type: ignore[union-attr]
            await asyncio.sleep(0.001)
            spins += 1
        assert not call.done()
        with pytest.raises(PluginTimeout):
            await call
        with pytest.raises(PluginTimeout):
            await manager.acall("a", "loop", timeout=0.05)
        await loader.areload("a")
        assert await manager.acall("a", "count") == 1
        await loader.aunload("a")
        assert manager.get("a") is None

    asyncio.run(main())
