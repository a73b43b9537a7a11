from pathlib import Path

from plughost import Loader, Manager, PluginCallError

from .conftest import write_wasm


def test_testkit_counts(make_loader, plugins: Path, manager: Manager) -> None:
    write_wasm(plugins, "tk")
    loader: Loader = make_loader()
    assert loader.load_all() == (1, [])
    assert [manager.call("tk", "count") for _ in range(3)] == [1, 2, 3]
    assert manager.call("tk", "echo", {"a": [1, "b"]}) == {"a": [1, "b"]}
    try:
        manager.call("tk", "fail")
    except PluginCallError as exc:
        assert exc.plugin == "tk" and "asked to fail" in str(exc)
    else:
        raise AssertionError("fail did not raise")


def test_the_public_surface_is_one_list() -> None:
    import ast
    import importlib

    import plughost
    source = Path(plughost.__file__).read_text()
    tree = ast.parse(source)
    checked = {a.asname for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               for a in node.names if a.asname}
    assert checked == set(plughost._EXPORTS) == set(plughost.__all__)
    for name in plughost.__all__:  # every name resolves, lazily, to its module's object
        module = importlib.import_module(plughost._EXPORTS[name], "plughost")
        assert getattr(plughost, name) is getattr(module, name)


def test_manager_loader_and_engine_are_context_managers(plugins: Path, tmp_path: Path) -> None:
    from plughost import WasmEngine
    write_wasm(plugins, "tk")
    with WasmEngine(tmp_path / "cache") as engine, Manager() as manager, \
            Loader(plugins, manager, engine=engine) as loader:
        assert loader.load_all() == (1, [])
        assert manager.call("tk", "count") == 1
    assert manager.names() == []  # closed: unloaded on the way out
