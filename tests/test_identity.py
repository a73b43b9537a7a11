"""A bare module is named by its registration (GoatFlow's rule), and guarded better.

Real modules (tests/fixtures/wat/testkit.wat with the registration name set), real loaders
and managers; a zip is named by its manifest.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from plughost import (
    Loader,
    Manager,
    ManifestError,
    NameChanged,
    PlughostError,
    PluginNotFound,
)

from .conftest import names, wat_bytes, write_plugin_dir

MakeLoader = Callable[..., Loader]


def bare(path: Path, registers: str, version: str = "1.0.0") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wat_bytes(name=registers, version=version))
    return path


def test_goatflow_layout_folder_with_a_module_named_otherwise(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    """GoatFlow ships `hello-wasm/hello.wasm`, registering as `hello-wasm`."""
    path = bare(plugins / "hello-wasm" / "hello.wasm", "hello-wasm")
    loader = make_loader()
    assert loader.load_all() == (1, [])
    assert manager.names() == ["hello-wasm"]
    info = manager.info("hello-wasm")
    assert info is not None and info.path == str(path)
    with pytest.raises(PluginNotFound):  # the file stem is no name
        manager.call("hello", "count")
    assert manager.call("hello-wasm", "count") == 1


def test_a_name_taken_from_a_plugin_dir_is_refused_with_both_paths(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    pdir = write_plugin_dir(plugins, "stats")
    intruder = bare(plugins / "drop" / "x.wasm", "stats")
    loader = make_loader()
    count, errors = loader.load_all()
    assert count == 1
    (err,) = errors
    assert isinstance(err, ManifestError) and err.path == str(intruder)
    assert str(pdir) in err.message and "registers as 'stats'" in err.message
    info = manager.info("stats")
    assert info is not None and info.path == str(pdir)  # the plugin dir keeps its name
    # the refusal is stable across rescans and does not touch the plugin that has the name
    loader.discover_all()
    listed = {str(d.path): d.error for d in loader.discovered_plugins()}
    assert listed[str(pdir)] is None and isinstance(listed[str(intruder)], ManifestError)


def test_two_bare_modules_registering_one_name_are_both_refused(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    one = bare(plugins / "a" / "one.wasm", "twin")
    two = bare(plugins / "b" / "two.wasm", "twin")
    bare(plugins / "ok.wasm", "ok")
    loader = make_loader()
    count, errors = loader.load_all()
    assert count == 1 and manager.names() == ["ok"]
    assert sorted(str(e.path) for e in errors) == sorted([str(one), str(two)])
    assert all(str(one) in e.message and str(two) in e.message for e in errors)


def test_a_newcomer_cannot_take_the_name_of_a_running_bare_module(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    first = bare(plugins / "first.wasm", "svc")
    loader = make_loader()
    assert loader.load_all() == (1, [])
    second = bare(plugins / "later" / "second.wasm", "svc")
    actions = loader.sync([second])
    assert [a.kind for a in actions] == ["load"]
    info = manager.info("svc")
    assert info is not None and info.path == str(first)  # still the first one
    listed = {d.path: d.error for d in loader.discovered_plugins()}
    assert listed[first] is None
    err = listed[second]
    assert isinstance(err, ManifestError) and str(first) in err.message
    assert manager.call("svc", "count") == 1


def test_a_reload_that_changes_the_name_is_refused_and_the_old_version_serves(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    path = bare(plugins / "m.wasm", "keeper", version="1.0.0")
    loader = make_loader()
    loader.load_all()
    assert manager.call("keeper", "count") == 1
    bare(path, "renamed", version="2.0.0")
    with pytest.raises(NameChanged) as caught:
        loader.reload("keeper")
    assert caught.value.plugin == "keeper" and "'renamed'" in caught.value.message
    assert manager.call("keeper", "version") == "1.0.0"
    assert manager.call("keeper", "count") == 2  # the same instance, state intact
    # the watcher's path is the same refusal, and the name stays the module's old one
    actions = loader.sync([path])
    assert [(a.kind, a.name) for a in actions] == [("reload", "keeper")]
    assert manager.names() == ["keeper"] and names(loader) == ["keeper"]
    assert any("registers as 'renamed'" in r.message
               for r in manager.log_for("keeper").records())


def test_a_module_not_loaded_is_known_by_its_new_name_after_a_change(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    path = bare(plugins / "m.wasm", "before")
    loader = make_loader()
    loader.load_all()
    loader.unload("before")
    bare(path, "after")
    loader.ensure_loaded("before")  # asked again: it now says "after"
    assert manager.names() == ["after"]
    assert names(loader) == ["after"]


def test_a_lazy_first_call_by_the_registered_name_works(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    """GoatFlow cannot do this (it loads eagerly to learn names); a lazy plughost asks the
    modules it has not asked yet when a call names an unknown plugin, and stops asking
    once one answers with that name."""
    bare(plugins / "b-dir" / "hello.wasm", "hello-wasm")
    bare(plugins / "a-dir" / "zz.wasm", "other")
    loader = make_loader(lazy=True)
    assert loader.load_all() == (2, [])
    assert manager.names() == []  # nothing started
    assert manager.call("hello-wasm", "count") == 1
    assert manager.names() == ["hello-wasm"]  # asking "other" its name did not load it
    assert "hello-wasm" in names(loader)
    assert manager.call("other", "count") == 1  # asked now, if it was not then
    assert names(loader) == ["hello-wasm", "other"]
    with pytest.raises(PluginNotFound):
        manager.call("nobody", "count")


def test_a_broken_bare_module_blocks_nobody(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    (plugins / "hello.wasm").write_bytes(b"\0asm garbage")
    write_plugin_dir(plugins, "hello")
    loader = make_loader()
    count, errors = loader.load_all()
    assert count == 1 and manager.names() == ["hello"]
    (err,) = errors
    assert err.path == str(plugins / "hello.wasm")
    # and a lazy call for an unknown name does not ask it again until it changes
    lazy = make_loader(lazy=True)
    lazy.discover_all()
    with pytest.raises(PlughostError):
        manager.call("ghost", "count")


def _zip(path: Path, manifest: dict[str, object], module: bytes, folder: str = "") -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{folder}plugin.yaml", yaml.safe_dump(manifest))
        zf.writestr(f"{folder}{manifest['name']}.wasm", module)
    path.write_bytes(buf.getvalue())
    return path


def test_a_zip_is_named_by_its_manifest(plugins: Path, make_loader: MakeLoader,
                                        manager: Manager) -> None:
    _zip(plugins / "download (1).zip", {"name": "pkg", "version": "1.0.0", "runtime": "wasm"},
         wat_bytes(name="pkg"))
    loader = make_loader()
    assert loader.load_all() == (1, [])
    assert manager.names() == ["pkg"] and manager.call("pkg", "count") == 1
