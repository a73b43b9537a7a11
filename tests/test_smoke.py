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
