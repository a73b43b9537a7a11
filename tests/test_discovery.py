"""Discovery: `plughost.discovery.scan` and `Loader.discover_all` & co.

Scanning never compiles anything, so layout-only tests write placeholder `.wasm` bytes; tests
that load use real modules from conftest's `write_wasm` / `write_plugin_dir`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from plughost import (
    DiscoveredPlugin,
    Loader,
    Manager,
    ManifestError,
    PlughostError,
    PluginNotFound,
)
from plughost.discovery import Found, scan
from plughost.runtimes.wasm import WasmEngine

from .conftest import names, wat_bytes, write_plugin_dir, write_wasm

PLACEHOLDER = b"\0asm\1\0\0\0"


def put(root: Path, rel: str, data: bytes | str = PLACEHOLDER) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def put_plugin_dir(root: Path, rel: str, manifest: dict[str, Any] | str,
                   files: tuple[str, ...] = ()) -> Path:
    """A plugin dir `root/rel` with plugin.yaml and the given placeholder files."""
    pdir = root / rel
    pdir.mkdir(parents=True, exist_ok=True)
    text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
    (pdir / "plugin.yaml").write_text(text)
    for f in files:
        put(pdir, f)
    return pdir


def by_name(found: list[Found]) -> dict[str, Found]:
    out = {f.name: f for f in found}
    assert len(out) == len(found), f"duplicate names in {found}"
    return out


def infos(loader: Loader) -> dict[str, DiscoveredPlugin]:
    return {d.name: d for d in loader.discovered_plugins()}


# -- layout ------------------------------------------------------------------------------------


def test_bare_wasm_files_at_several_depths(plugins: Path) -> None:
    put(plugins, "top.wasm")
    put(plugins, "x/mid.wasm")
    put(plugins, "x/y/z/deep.wasm")
    put(plugins, "x/notes.txt")
    put(plugins, "x/y/readme.md")
    found = by_name(scan(plugins))
    assert set(found) == {"top", "mid", "deep"}
    assert found["top"].path == plugins / "top.wasm"
    assert found["mid"].path == plugins / "x" / "mid.wasm"
    assert found["deep"].path == plugins / "x" / "y" / "z" / "deep.wasm"
    for f in found.values():
        assert (f.kind, f.manifest, f.error) == ("wasm", None, None)


def test_scan_result_is_sorted_by_name(plugins: Path) -> None:
    for rel in ("zeta.wasm", "a/b/alpha.wasm", "m/mid.wasm", "beta.wasm"):
        put(plugins, rel)
    assert [f.name for f in scan(plugins)] == ["alpha", "beta", "mid", "zeta"]


def test_plugin_dirs_at_several_depths_own_their_subtree(plugins: Path) -> None:
    put_plugin_dir(plugins, "p1", {"name": "p1", "runtime": "wasm"},
                   files=("p1.wasm", "extra.wasm", "sub/inner.wasm", "sub/deeper/more.wasm"))
    # a nested dir with its own plugin.yaml inside a plugin dir is part of p1, not a plugin
    put_plugin_dir(plugins, "p1/nested", {"name": "nested", "runtime": "wasm"},
                   files=("nested.wasm",))
    put_plugin_dir(plugins, "a/b/c/p2dir", {"name": "p2", "runtime": "wasm", "wasm": "m.wasm"},
                   files=("m.wasm", "lib/helper.wasm"))
    put_plugin_dir(plugins, "g/svc", {"runtime": "grpc", "binary": "bin/svc"},
                   files=("bin/svc", "bin/plugin.wasm"))
    put(plugins, "a/loose.wasm")  # outside any plugin dir: its own plugin
    found = by_name(scan(plugins))
    assert set(found) == {"p1", "p2", "svc", "loose"}
    p1, p2, svc = found["p1"], found["p2"], found["svc"]
    assert (p1.path, p1.kind, p1.error) == (plugins / "p1", "wasm", None)
    assert p1.manifest is not None and p1.manifest.entry == (plugins / "p1" / "p1.wasm").resolve()
    assert (p2.path, p2.kind, p2.error) == (plugins / "a" / "b" / "c" / "p2dir", "wasm", None)
    assert p2.manifest is not None and p2.manifest.name == "p2"
    assert (svc.path, svc.kind, svc.error) == (plugins / "g" / "svc", "grpc", None)
    assert found["loose"].path == plugins / "a" / "loose.wasm"


def test_loader_sees_the_same_layout(make_loader: Callable[..., Loader], plugins: Path) -> None:
    put_plugin_dir(plugins, "p1", {"runtime": "wasm"}, files=("p1.wasm", "sub/inner.wasm"))
    put_plugin_dir(plugins, "p1/nested", {"runtime": "wasm"}, files=("nested.wasm",))
    put(plugins, "deep/er/b.wasm")
    loader = make_loader()
    assert loader.discover_all() == 2
    assert names(loader) == ["b", "p1"]
    d = infos(loader)
    assert (d["p1"].path, d["p1"].type) == (plugins / "p1", "wasm")
    assert d["p1"].manifest is not None and d["p1"].manifest.name == "p1"
    assert (d["b"].path, d["b"].type, d["b"].manifest) == (plugins / "deep/er/b.wasm", "wasm",
                                                           None)


def test_hidden_files_and_dirs_are_ignored(plugins: Path) -> None:
    put(plugins, ".x.wasm")
    put(plugins, ".hidden/a.wasm")
    put(plugins, "sub/.hidden2/deeper/b.wasm")
    put_plugin_dir(plugins, ".hp", {"name": "hp", "runtime": "wasm"}, files=("hp.wasm",))
    put(plugins, "sub/visible.wasm")
    assert [f.name for f in scan(plugins)] == ["visible"]


@pytest.mark.parametrize("temp", [
    "a.wasm~", ".a.wasm.swp", ".a.wasm.swx", "a.wasm.tmp", "#a.wasm#", "a.wasm.part",
    "a.wasm.crdownload", ".#a.wasm", "#a.wasm", "~$a.wasm", "a.wasm.bak", "a.wasm.orig",
])
def test_editor_temp_files_are_ignored(plugins: Path, temp: str) -> None:
    put(plugins, temp)
    put(plugins, f"sub/{temp}")
    put(plugins, "real.wasm")
    found = scan(plugins)
    assert [(f.name, f.error) for f in found] == [("real", None)]


# -- problems are reported, never skipped -----------------------------------------------------


@pytest.mark.parametrize(("manifest", "name", "field"), [
    ("runtime: [\n", "broken", None),                              # invalid YAML
    ("runtime: lua\n", "broken", "runtime"),                      # unknown runtime
    ("- a\n- b\n", "broken", None),                               # not a mapping
    ("", "broken", None),                                         # empty
    ("name: other\nruntime: wasm\n", "other", "wasm"),            # other.wasm missing
    ("runtime: wasm\nwasm: ../../a.wasm\n", "broken", "wasm"),    # escape
    ("runtime: grpc\n", "broken", "binary"),                      # grpc without binary
    ("runtime: wasm\nresources: {memory_mb: '64'}\n", "broken", "resources.memory_mb"),
    ("name: Broken\nruntime: wasm\n", "Broken", "name"),
])
def test_broken_manifest_shows_up_with_its_error(make_loader: Callable[..., Loader],
                                                 plugins: Path, manifest: str, name: str,
                                                 field: str | None) -> None:
    pdir = put_plugin_dir(plugins, "deep/broken", manifest, files=("broken.wasm", "x.wasm"))
    put(plugins, "a.wasm")
    loader = make_loader()
    assert loader.discover_all() == 2
    assert name in names(loader)
    d = infos(loader)
    assert set(d) == {name, "a"}  # its own x.wasm is still not a plugin
    bad = d[name]
    assert bad.path == pdir
    assert isinstance(bad.error, ManifestError)
    assert bad.error.field == field
    assert bad.error.path == str(pdir / "plugin.yaml")
    assert bad.manifest is None
    assert not bad.loaded
    assert d["a"].error is None


def test_broken_plugin_does_not_stop_the_others(make_loader: Callable[..., Loader],
                                                plugins: Path, manager: Manager) -> None:
    put_plugin_dir(plugins, "broken", "runtime: lua\n", files=("broken.wasm",))
    write_wasm(plugins / "sub", "good")
    loader = make_loader()
    count, errors = loader.load_all()
    assert count == 1
    assert len(errors) == 1 and isinstance(errors[0], ManifestError)
    assert errors[0].plugin == "broken" and errors[0].field == "runtime"
    assert manager.names() == ["good"]
    assert manager.call("good", "count") == 1
    with pytest.raises(ManifestError):
        loader.ensure_loaded("broken")


@pytest.mark.parametrize("filename", ["Bad Name.wasm", "Upper.WASM", "-dash.wasm",
                                      f"{'x' * 65}.wasm", "a b.wasm"])
def test_a_bare_module_is_named_by_its_registration_not_its_file(
        make_loader: Callable[..., Loader], plugins: Path, manager: Manager,
        filename: str) -> None:
    """As GoatFlow names it: the file name is no name (any file name will do, the
    extension in any case); the name the module registers is."""
    path = plugins / "sub" / filename
    path.parent.mkdir()
    path.write_bytes(wat_bytes(name="good-name"))
    loader = make_loader()
    assert loader.load_all() == (1, [])
    assert manager.names() == ["good-name"]
    assert manager.call("good-name", "count") == 1
    (d,) = loader.discovered_plugins()
    assert (d.name, d.path, d.loaded, d.error) == ("good-name", path, True, None)
    loader.discover_all()  # a rescan keeps the learnt name
    assert [p.name for p in loader.discovered_plugins()] == ["good-name"]


@pytest.mark.parametrize("bad", ["Bad Name", "Upper", "-dash", "x" * 65])
def test_a_registration_with_an_invalid_name_is_refused(
        make_loader: Callable[..., Loader], plugins: Path, manager: Manager,
        bad: str) -> None:
    path = plugins / "sub" / "module.wasm"
    path.parent.mkdir()
    path.write_bytes(wat_bytes(name=bad))
    loader = make_loader()
    count, errors = loader.load_all()
    assert count == 0 and len(errors) == 1
    assert isinstance(errors[0], ManifestError) and errors[0].path == str(path)
    assert repr(bad) in errors[0].message and "not a valid plugin name" in errors[0].message
    assert manager.names() == []


def test_warnings_of_a_manifest_are_surfaced(make_loader: Callable[..., Loader],
                                             plugins: Path, manager: Manager) -> None:
    write_plugin_dir(plugins, "w", {"future": 1, "resources": {"gpu": 1}})
    loader = make_loader()
    loader.discover_all()
    (d,) = loader.discovered_plugins()
    assert d.error is None
    assert any("'future'" in w for w in d.warnings)
    assert any("'resources.gpu'" in w for w in d.warnings)
    logged = [r.message for r in manager.log_for("w").records()]
    assert any("'future'" in m for m in logged)


# -- duplicate names ---------------------------------------------------------------------------


def _two_bare(plugins: Path) -> tuple[Path, Path]:
    return write_wasm(plugins, "a"), write_wasm(plugins / "x" / "y", "a")


def _bare_and_dir(plugins: Path) -> tuple[Path, Path]:
    bare = write_wasm(plugins / "sub", "a")
    pdir = plugins / "adir"
    pdir.mkdir()
    (pdir / "a.wasm").write_bytes(wat_bytes(name="a"))
    (pdir / "plugin.yaml").write_text("name: a\nruntime: wasm\n")
    return bare, pdir


def _two_dirs(plugins: Path) -> tuple[Path, Path]:
    one = write_plugin_dir(plugins, "a")
    two = write_plugin_dir(plugins / "more", "a2", {"name": "a", "wasm": "a2.wasm"})
    return one, two


@pytest.mark.parametrize("layout", [_two_dirs])  # bare modules: tests/test_identity.py
@pytest.mark.parametrize("lazy", [False, True])
def test_two_plugins_with_one_name_are_both_reported_and_neither_loads(
        make_loader: Callable[..., Loader], plugins: Path, manager: Manager,
        layout: Callable[[Path], tuple[Path, Path]], lazy: bool) -> None:
    first, second = layout(plugins)
    write_wasm(plugins, "ok")
    loader = make_loader(lazy=lazy)

    entries = [f for f in scan(plugins) if f.name == "a"]
    assert sorted(f.path for f in entries) == sorted([first, second])
    for f in entries:
        assert isinstance(f.error, ManifestError)
        assert str(first) in f.error.message and str(second) in f.error.message

    assert loader.discover_all() == 3
    assert names(loader) == ["a", "ok"]
    dups = [d for d in loader.discovered_plugins() if d.name == "a"]
    assert sorted(d.path for d in dups) == sorted([first, second])
    assert all(isinstance(d.error, ManifestError) and not d.loaded for d in dups)

    count, errors = loader.load_all()
    assert count == 1
    assert len(errors) == 2
    assert all(isinstance(e, ManifestError) and e.plugin == "a" for e in errors)
    assert sorted(str(e.path) for e in errors) == sorted([str(first), str(second)])
    for e in errors:
        assert str(first) in e.message and str(second) in e.message
    if not lazy:
        assert manager.names() == ["ok"]
    with pytest.raises(PlughostError):
        manager.call("a", "count")
    with pytest.raises(ManifestError):
        loader.ensure_loaded("a")
    assert "a" not in manager
    assert manager.call("ok", "count") == 1


def test_duplicate_resolved_after_rescan(make_loader: Callable[..., Loader], plugins: Path,
                                         manager: Manager) -> None:
    _first, second = _two_bare(plugins)
    loader = make_loader()
    count, errors = loader.load_all()  # both are asked their name: both say "a"
    assert count == 0 and len(errors) == 2
    with pytest.raises(ManifestError):
        loader.ensure_loaded("a")
    second.unlink()
    loader.discover_all()
    (d,) = loader.discovered_plugins()
    assert d.error is None
    loader.ensure_loaded("a")
    assert manager.call("a", "count") == 1


# -- discovered / loaded -----------------------------------------------------------------------


def test_discovered_returns_sorted_names_including_broken(make_loader: Callable[..., Loader],
                                                          plugins: Path) -> None:
    put(plugins, "zulu.wasm")
    put(plugins, "deep/down/alpha.wasm")
    put_plugin_dir(plugins, "mdir", {"name": "mike", "runtime": "wasm"}, files=("mike.wasm",))
    put_plugin_dir(plugins, "charlie", "runtime: [\n")
    loader = make_loader()
    assert names(loader) == []  # nothing before discovery
    assert loader.discover_all() == 4
    assert names(loader) == ["alpha", "charlie", "mike", "zulu"]
    assert sorted(d.name for d in loader.discovered_plugins()) == names(loader)


def test_loaded_follows_the_managers_registry(make_loader: Callable[..., Loader],
                                             plugins: Path, manager: Manager) -> None:
    write_wasm(plugins / "sub", "tk")
    write_plugin_dir(plugins, "pd")
    loader = make_loader()
    assert loader.discover_all() == 2
    d = infos(loader)
    assert not d["tk"].loaded and d["tk"].loaded_at is None
    assert not d["pd"].loaded
    assert manager.names() == []  # discovery loads nothing

    before = time.time()
    loader.ensure_loaded("tk")
    d = infos(loader)
    assert d["tk"].loaded
    assert d["tk"].loaded_at is not None and before - 1 <= d["tk"].loaded_at <= time.time() + 1
    assert not d["pd"].loaded and d["pd"].loaded_at is None
    assert manager.call("tk", "count") == 1

    manager.unregister("tk")  # behind the loader's back
    d = infos(loader)
    assert not d["tk"].loaded and d["tk"].loaded_at is None
    assert "tk" in names(loader)  # still discovered

    loader.ensure_loaded("tk")  # the registry says it is gone, so this loads it again
    assert infos(loader)["tk"].loaded
    assert manager.call("tk", "count") == 1  # a fresh instance


def test_loaded_is_false_for_a_same_named_plugin_from_elsewhere(
        make_loader: Callable[..., Loader], plugins: Path, tmp_path: Path,
        manager: Manager) -> None:
    write_wasm(plugins, "tk")
    other = tmp_path / "other"
    write_wasm(other, "tk")
    loader = make_loader()
    loader.discover_all()
    other_loader = Loader(other, manager, engine=loader.engine)
    other_loader.discover_all()
    other_loader.ensure_loaded("tk")
    assert not infos(loader)["tk"].loaded  # registered, but not from this path
    assert infos(other_loader)["tk"].loaded


def test_lazy_discovery_loads_nothing_until_first_call(make_loader: Callable[..., Loader],
                                                       plugins: Path, manager: Manager) -> None:
    write_wasm(plugins / "a" / "b", "tk")
    loader = make_loader(lazy=True)
    assert loader.load_all() == (1, [])
    assert not infos(loader)["tk"].loaded and manager.names() == []
    assert manager.call("tk", "count") == 1
    assert infos(loader)["tk"].loaded


# -- roots -------------------------------------------------------------------------------------


def test_missing_plugin_dir_raises_plugin_not_found(tmp_path: Path, manager: Manager,
                                                    engine: WasmEngine) -> None:
    missing = tmp_path / "does-not-exist"
    loader = Loader(missing, manager, engine=engine)
    with pytest.raises(PluginNotFound) as info:
        loader.discover_all()
    assert str(missing) in str(info.value)
    with pytest.raises(PluginNotFound):
        loader.load_all()


def test_plugin_dir_that_is_a_file_raises_plugin_not_found(tmp_path: Path, manager: Manager,
                                                           engine: WasmEngine) -> None:
    f = write_wasm(tmp_path, "single")
    with pytest.raises(PluginNotFound):
        Loader(f, manager, engine=engine).discover_all()


def test_root_holding_plugin_yaml_is_one_plugin(tmp_path: Path, manager: Manager,
                                                engine: WasmEngine) -> None:
    root = write_plugin_dir(tmp_path, "solo")
    write_wasm(root, "extra")                 # would be a plugin anywhere else
    write_wasm(root / "sub", "other")
    put_plugin_dir(root, "inner", {"runtime": "wasm"}, files=("inner.wasm",))
    (found,) = scan(root)
    assert (found.name, found.path, found.kind, found.error) == ("solo", root, "wasm", None)

    loader = Loader(root, manager, engine=engine)
    assert loader.discover_all() == 1
    assert names(loader) == ["solo"]
    assert loader.load_all() == (1, [])
    assert manager.names() == ["solo"]
    assert manager.call("solo", "count") == 1


def test_root_with_broken_plugin_yaml_is_one_broken_plugin(tmp_path: Path) -> None:
    root = tmp_path / "root"
    put_plugin_dir(tmp_path, "root", "runtime: lua\n", files=("a.wasm", "sub/b.wasm"))
    (found,) = scan(root)
    assert found.path == root
    assert isinstance(found.error, ManifestError) and found.error.field == "runtime"


def test_empty_root_discovers_nothing(make_loader: Callable[..., Loader]) -> None:
    loader = make_loader()
    assert loader.discover_all() == 0
    assert names(loader) == [] and loader.discovered_plugins() == []
    assert loader.load_all() == (0, [])


# -- symlinks ----------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_symlinked_directories_are_not_followed(make_loader: Callable[..., Loader],
                                                plugins: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    put(outside, "far.wasm")
    put_plugin_dir(outside, "farplug", {"runtime": "wasm"}, files=("farplug.wasm",))
    put(plugins, "sub/near.wasm")
    (plugins / "loop").symlink_to(plugins, target_is_directory=True)        # cycle to root
    (plugins / "sub" / "up").symlink_to("..", target_is_directory=True)     # relative cycle
    (plugins / "sub" / "self").symlink_to(".", target_is_directory=True)
    (plugins / "out").symlink_to(outside, target_is_directory=True)         # out of tree
    (plugins / "plug").symlink_to(outside / "farplug", target_is_directory=True)
    found = scan(plugins)
    assert [(f.name, f.path) for f in found] == [("near", plugins / "sub" / "near.wasm")]
    loader = make_loader()
    assert loader.discover_all() == 1
    assert names(loader) == ["near"]


@pytest.mark.timeout(20)
def test_symlink_cycle_inside_a_deep_tree_terminates(plugins: Path) -> None:
    put(plugins, "a/b/c/d.wasm")
    (plugins / "a" / "b" / "c" / "back").symlink_to(plugins / "a", target_is_directory=True)
    (plugins / "a" / "b" / "c" / "e").symlink_to("../../..", target_is_directory=True)
    assert [f.name for f in scan(plugins)] == ["d"]


# -- known bugs --------------------------------------------------------------------------------


def test_plugin_directory_named_like_a_temp_file_is_not_skipped(plugins: Path) -> None:
    put_plugin_dir(plugins, "4913", {"runtime": "wasm"}, files=("4913.wasm",))
    assert [f.name for f in scan(plugins)] == ["4913"]
