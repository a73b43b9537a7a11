"""Loader: every method, lazy vs eager, single-start under contention, atomic reload."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from plughost import (
    Event,
    Loader,
    Manager,
    NameChanged,
    PlughostError,
    PluginLoadError,
    PluginNotFound,
)

from .conftest import EXAMPLES, names, wait_until, wat_bytes, write_plugin_dir, write_wasm


def replace_file(path: Path, data: bytes) -> None:
    """Write atomically, the way deploy tools do (readers see old or new, never half)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def test_eager_load_all_loads_everything(make_loader: Callable[..., Loader], plugins: Path,
                                         manager: Manager) -> None:
    write_wasm(plugins, "a")
    write_plugin_dir(plugins / "deep" / "er", "b")
    loader = make_loader()
    assert loader.load_all() == (2, [])
    assert manager.names() == ["a", "b"]
    assert all(d.loaded and d.loaded_at for d in loader.discovered_plugins())


def test_lazy_load_all_only_discovers_and_first_call_loads(
        make_loader: Callable[..., Loader], plugins: Path, manager: Manager) -> None:
    write_wasm(plugins, "a")
    write_wasm(plugins, "b")
    loader = make_loader(lazy=True)
    assert loader.load_all() == (2, [])
    assert manager.names() == []
    assert names(loader) == ["a", "b"]
    assert [d.loaded for d in loader.discovered_plugins()] == [False, False]
    assert manager.call("a", "count") == 1
    assert manager.names() == ["a"]  # b is still only discovered
    assert {d.name: d.loaded for d in loader.discovered_plugins()} == {"a": True, "b": False}


def test_eager_loader_does_not_load_on_call(make_loader: Callable[..., Loader], plugins: Path,
                                            manager: Manager) -> None:
    write_wasm(plugins, "a")
    loader = make_loader()
    loader.discover_all()
    with pytest.raises(PluginNotFound):
        manager.call("a", "count")


def test_sixteen_threads_first_call_start_one_instance(
        make_loader: Callable[..., Loader], plugins: Path, manager: Manager) -> None:
    write_wasm(plugins, "a")
    loader = make_loader(lazy=True)
    loader.discover_all()
    loads: list[Event] = []
    manager.add_listener(lambda e: loads.append(e) if e.kind == "load" else None)
    barrier = threading.Barrier(16)
    results: list[int] = []
    errors: list[BaseException] = []

    def first_call() -> None:
        barrier.wait()
        try:
            results.append(manager.call("a", "count"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first_call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(loads) == 1
    # one instance served all 16: its counter went 1..16 with no repeats
    assert sorted(results) == list(range(1, 17))
    log = [r.message for r in manager.log_for("a").records()]
    assert sum(m.startswith("loaded version") for m in log) == 1


def test_ensure_loaded_uses_the_registry(make_loader: Callable[..., Loader], plugins: Path,
                                         manager: Manager) -> None:
    write_wasm(plugins, "a")
    loader = make_loader(lazy=True)
    loader.discover_all()
    loader.ensure_loaded("a")
    first = manager.get("a")
    loader.ensure_loaded("a")
    assert manager.get("a") is first  # no second instance
    manager.unregister("a")  # behind the loader's back
    loader.ensure_loaded("a")  # the registry says it is gone: it loads again
    assert manager.get("a") is not None and manager.get("a") is not first
    with pytest.raises(PluginNotFound):
        loader.ensure_loaded("ghost")


def test_reload_swaps_to_the_new_version(make_loader: Callable[..., Loader], plugins: Path,
                                         manager: Manager) -> None:
    path = write_wasm(plugins, "a", version="1.0.0")
    loader = make_loader()
    loader.load_all()
    assert manager.call("a", "version") == "1.0.0"
    replace_file(path, wat_bytes(name="a", version="2.0.0"))
    assert manager.call("a", "version") == "1.0.0"  # nothing changes until reload
    loader.reload("a")
    assert manager.call("a", "version") == "2.0.0"
    assert manager.list()[0].version == "2.0.0"


def test_broken_new_version_leaves_the_old_serving(
        make_loader: Callable[..., Loader], plugins: Path, manager: Manager) -> None:
    path = write_wasm(plugins, "a")
    loader = make_loader()
    loader.load_all()
    assert manager.call("a", "count") == 1
    cases: list[tuple[bytes, type[PlughostError]]] = [
        (b"\0asm garbage", PluginLoadError),
        (b"not wasm at all", PluginLoadError),
        (wat_bytes(name="someone-else"), NameChanged),  # a name does not change on reload
    ]
    for broken, error in cases:
        replace_file(path, broken)
        with pytest.raises(error) as info:
            loader.reload("a")
        assert getattr(info.value, "plugin", None) == "a"
        assert manager.call("a", "count") >= 2  # same old instance, state intact
    assert any("reload failed" in r.message for r in manager.log_for("a").records())


def test_reload_under_load_has_zero_failed_calls(
        make_loader: Callable[..., Loader], plugins: Path, manager: Manager) -> None:
    path = write_wasm(plugins, "a", version="0")
    loader = make_loader()
    loader.load_all()
    versions = [wat_bytes(name="a", version=str(i)) for i in range(1, 21)]
    stop = threading.Event()
    seen: set[str] = set()
    failures: list[BaseException] = []
    calls = [0]

    def caller() -> None:
        while not stop.is_set():
            try:
                seen.add(manager.call("a", "version"))
                calls[0] += 1
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: calls[0] >= 12)  # the callers are busy before the first swap
        for data in versions:
            replace_file(path, data)
            loader.reload("a")
        wait_until(lambda: "20" in seen)  # ...and still busy after the last one
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert {"0", "20"} <= seen  # old and new answers, zero failed calls between


def test_load_or_reload_rediscovers(make_loader: Callable[..., Loader], plugins: Path,
                                    manager: Manager) -> None:
    loader = make_loader()
    loader.load_all()
    write_wasm(plugins, "late")  # arrives after start
    with pytest.raises(PluginNotFound):
        loader.reload("late")
    loader.load_or_reload("late")
    assert manager.call("late", "count") == 1
    replace_file(plugins / "late.wasm", wat_bytes(name="late", version="9"))
    loader.load_or_reload("late")  # loaded: this time it reloads
    assert manager.call("late", "version") == "9"


def test_unload_and_forget(make_loader: Callable[..., Loader], plugins: Path,
                           manager: Manager) -> None:
    write_wasm(plugins, "a")
    lazy = make_loader(lazy=True)
    lazy.discover_all()
    assert manager.call("a", "count") == 1
    lazy.unload("a")
    assert manager.get("a") is None and names(lazy) == ["a"]
    assert manager.call("a", "count") == 1  # lazy: loaded again, fresh state
    lazy.forget("a")
    assert manager.get("a") is None and names(lazy) == []
    with pytest.raises(PluginNotFound):
        manager.call("a", "count")
    lazy.discover_all()  # a rescan finds it again
    assert names(lazy) == ["a"]


def test_load_wasm_and_load_wasm_from_path(make_loader: Callable[..., Loader], plugins: Path,
                                           tmp_path: Path, manager: Manager) -> None:
    write_wasm(plugins, "a")
    loader = make_loader(lazy=True)
    loader.discover_all()
    loader.load_wasm("a")
    assert manager.get("a") is not None
    elsewhere = write_wasm(tmp_path / "elsewhere", "outside", version="3")
    assert loader.load_wasm_from_path(elsewhere) == "outside"
    assert manager.call("outside", "version") == "3"
    replace_file(elsewhere, wat_bytes(name="outside", version="4"))
    loader.reload("outside")  # remembered: reload works like any other plugin
    assert manager.call("outside", "version") == "4"
    assert "outside" in names(loader)
    pdir = EXAMPLES / "counter"
    assert loader.load_wasm_from_path(pdir) == "counter"
    assert manager.call("counter", "increment", {"by": 2}) == {"count": 2}
    with pytest.raises(PluginNotFound):
        loader.load_wasm_from_path(tmp_path / "missing.wasm")


def test_load_all_reports_bad_plugins_and_loads_the_rest(
        make_loader: Callable[..., Loader], plugins: Path, manager: Manager) -> None:
    write_wasm(plugins, "good")
    (plugins / "bad.wasm").write_bytes(b"\0asm\x01\0\0\0garbage")
    (plugins / "broken").mkdir()
    (plugins / "broken" / "plugin.yaml").write_text("name: [unclosed\n")
    count, errors = make_loader().load_all()
    assert count == 1
    assert sorted(e.plugin or "" for e in errors) == ["bad", "broken"]
    assert manager.call("good", "count") == 1


def test_the_examples_load_and_answer(examples: Path, engine: object) -> None:
    manager = Manager()
    try:
        loader = Loader(examples, manager, engine=engine)  # type: ignore[arg-type]
        assert loader.load_all() == (3, [])
        assert manager.call("hello", "hello") == {"message": "Hello from a wasm plugin!"}
        assert manager.call("counter", "increment") == {"count": 1}
        assert manager.call("counter", "increment", {"by": 41}) == {"count": 42}
        assert manager.call("counter", "get") == {"count": 42}
        assert manager.call("greeter", "hello", {"name": "Ada"}) == {
            "message": "Hello, Ada!", "calls": 1}
    finally:
        manager.close()
