"""GoatFlow's ABI details: a `_start`-only (command) module, as TinyGo's `-target wasi`
builds GoatFlow's plugins, gets `_start` run once per instance; reactors keep
`_initialize`; everything else stays as checked as before."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import wasmtime

from plughost import Loader, Manager, PluginLoadError

from .conftest import WAT

MakeLoader = Callable[..., Loader]


def command_module(exit_code: int | None, name: str = "cmd") -> bytes:
    text = (WAT / "rt_start.wat").read_text().replace("__NAME__", name)
    exit_call = "" if exit_code is None else f"(call $proc_exit (i32.const {exit_code}))"
    return wasmtime.wat2wasm(text.replace("__EXIT__", exit_call))


@pytest.mark.parametrize("exit_code", [None, 0])
def test_start_runs_once_per_instance_and_a_return_or_exit_0_is_success(
        plugins: Path, make_loader: MakeLoader, manager: Manager, exit_code: int | None
        ) -> None:
    (plugins / "cmd.wasm").write_bytes(command_module(exit_code))
    loader = make_loader()
    assert loader.load_all() == (1, [])
    # `_start` ran once, before gk_register; calls do not run it again
    assert [manager.call_raw("cmd", "runs", b"") for _ in range(3)] == [b"1"] * 3


def test_start_exiting_with_another_code_fails_the_load(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    (plugins / "cmd.wasm").write_bytes(command_module(3))
    loader = make_loader()
    count, errors = loader.load_all()
    assert count == 0
    (err,) = errors
    assert isinstance(err, PluginLoadError) and "_start exited with code 3" in err.message
    assert manager.names() == []
