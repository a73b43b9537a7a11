"""The runtime seam: the loader starts plugins only through `Runtime` objects, a started
version owns its private copy, and plugin_call goes to the plugin's own manager."""

from __future__ import annotations

import contextlib
from pathlib import Path

from plughost import Loader, Manager
from plughost.host import default_host_functions
from plughost.packaging import pack
from plughost.plugin import Plugin, Staged, StartContext
from plughost.runtimes.wasm import WasmEngine, WasmRuntime

from .conftest import write_plugin_dir
from .test_host_functions import call_args, ok, refused, wasm


class CountingRuntime:
    """A runtime of the application's own: wraps the wasm one and records what it saw."""

    kind = "wasm"

    def __init__(self, engine: WasmEngine) -> None:
        self.inner = WasmRuntime(engine)
        self.started: list[tuple[str, bool]] = []
        self.closed = False

    def start(self, staged: Staged, context: StartContext) -> Plugin:
        self.started.append((staged.source.name, context.caller is not None))
        return self.inner.start(staged, context)

    def close(self) -> None:
        self.closed = True


def test_the_loader_starts_plugins_through_the_runtime_it_is_given(
        plugins: Path, manager: Manager, engine: WasmEngine) -> None:
    write_plugin_dir(plugins, "one")
    write_plugin_dir(plugins, "two")
    runtime = CountingRuntime(engine)
    loader = Loader(plugins, manager, runtimes={"wasm": runtime})
    assert loader.load_all() == (2, [])
    assert sorted(runtime.started) == [("one", True), ("two", True)]
    assert manager.call("one", "count") == 1
    loader.reload("one")
    assert runtime.started[-1] == ("one", True)
    loader.close()
    assert runtime.closed


def test_a_version_removes_its_own_private_copy(plugins: Path, manager: Manager,
                                                engine: WasmEngine, tmp_path: Path) -> None:
    # a package always runs from a private, unpacked copy
    pack(write_plugin_dir(tmp_path / "src", "p"), plugins / "p.zip")
    loader = Loader(plugins, manager, engine=engine, require_signatures=False)
    assert loader.load_all() == (1, [])
    plugin = manager.get("p")
    assert plugin is not None and plugin.source.private_dir is not None
    private = plugin.source.private_dir
    assert private.exists()
    loader.reload("p")  # the old version is retired: its copy goes with its shutdown
    new = manager.get("p")
    assert new is not None and new.source.private_dir not in (None, private)
    assert not private.exists() and new.source.private_dir.exists()
    manager.unregister("p").shutdown()
    assert not new.source.private_dir.exists()
    loader.close()


def test_two_managers_sharing_one_host_table_route_their_own_plugin_calls(
        tmp_path: Path, engine: WasmEngine) -> None:
    table = default_host_functions()
    first, second = tmp_path / "first", tmp_path / "second"
    wasm(first, "a", ["plugin.call"])
    wasm(second, "b", [])
    m1, m2 = Manager(host=table), Manager(host=table)
    l1 = Loader(first, m1, engine=engine)
    l2 = Loader(second, m2, engine=engine)
    try:
        assert l1.load_all() == (1, []) and l2.load_all() == (1, [])
        # "b" lives in the other manager: a's plugin_call must not reach it there
        refused(m1, "a", "plugin_call", call_args("b", "count"), contains=('"b" not found',))
        assert m2.call("b", "count") == 1  # never called by a
        wasm(first, "b", [])
        l1.discover_all()
        l1.ensure_loaded("b")
        assert ok(m1, "a", "plugin_call", call_args("b", "count")) == b"1"  # its own b
        assert m2.call("b", "count") == 2
    finally:
        for loader, manager in ((l1, m1), (l2, m2)):
            loader.close()
            manager.close()


def test_a_grpc_plugin_constructor_starts_nothing(plugins: Path) -> None:
    from plughost.logs import PluginLog
    from plughost.manifest import load_manifest
    from plughost.plugin import PluginSource
    from plughost.runtimes.grpc import GrpcPlugin

    from .test_reliability_sandbox import probe

    pdir = probe(plugins, "lazy")
    lm = load_manifest(pdir)
    source = PluginSource("lazy", "grpc", pdir, pdir, lm.entry, lm.manifest, lm)
    children = set(_children())
    plugin = GrpcPlugin(source, default_host_functions(), PluginLog("lazy"))
    assert plugin.state == "starting" and plugin.pid is None
    assert set(_children()) == children  # no process yet
    plugin.start()
    try:
        assert plugin.state == "running" and plugin.pid in set(_children()) - children
        assert plugin.call("pid", b"null") != b""
    finally:
        plugin.shutdown()
    assert plugin.state == "stopped"


def _children() -> list[int]:
    out: list[int] = []
    for t in Path("/proc/self/task").iterdir():  # children of any of our threads
        with contextlib.suppress(OSError):
            out += [int(p) for p in (t / "children").read_text().split()]
    return out
