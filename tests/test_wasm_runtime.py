"""The wasm runtime end to end: real modules (WAT in tests/fixtures/wat), real wasmtime,
through Manager + Loader.

Every failure test checks four things: the typed error class, that the error names the
plugin, that the message says what went wrong, and that the host keeps serving afterwards
(a plugin "other" loaded beside the failing one still answers, and the failing plugin serves
again where that makes sense). Instance replacement is observed through `count`: it restarts
at 1 on a fresh instance and continues on a kept one.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from plughost import (
    HostCallError,
    HostContext,
    HostFunctions,
    Loader,
    Manager,
    ManifestError,
    PlughostError,
    PluginABIError,
    PluginCallError,
    PluginLoadError,
    PluginResourceError,
    PluginTimeout,
    PluginTrap,
    PluginUnavailable,
    default_host_functions,
)
from plughost.runtimes.wasm import WasmEngine

from .conftest import wat_bytes, write_plugin_dir, write_wasm

MakeLoader = Callable[..., Loader]

# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


class Other:
    """The bystander plugin "other": proves the host keeps serving after a failure."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.n = 0

    def serves(self) -> None:
        self.n += 1
        assert self.manager.call("other", "count") == self.n


def setup(plugins: Path, make_loader: MakeLoader, manager: Manager,
          manifest: dict[str, Any] | None = None, name: str = "tk") -> tuple[Loader, Other]:
    """testkit as `name` (a plugin dir when `manifest` is given, else a bare .wasm), plus a
    bare "other" beside it; both loaded eagerly."""
    if manifest is None:
        write_wasm(plugins, name)
    else:
        write_plugin_dir(plugins, name, manifest)
    write_wasm(plugins, "other")
    loader = make_loader()
    assert loader.load_all() == (2, [])
    other = Other(manager)
    other.serves()
    return loader, other


def messages(manager: Manager, name: str, source: str | None = None) -> list[str]:
    return [r.message for r in manager.log_for(name).records()
            if source is None or r.source == source]


def check_named(exc: PlughostError, name: str, *fragments: str) -> None:
    assert exc.plugin == name
    text = str(exc)
    assert f"'{name}'" in text
    for f in fragments:
        assert f in text, f"{f!r} not in {text!r}"


# --------------------------------------------------------------------------------------
# modules that must not load
# --------------------------------------------------------------------------------------

_RNG = random.Random(20240611)
_GARBAGE = bytes([0x7F]) + _RNG.randbytes(299)  # cannot start with b"\0asm"
_VALID = wat_bytes("testkit", "bad")

CORRUPT = {
    "empty": (b"", "bad magic"),
    "random-no-magic": (_GARBAGE, "bad magic"),
    "random-with-magic": (b"\0asm\x01\0\0\0" + _RNG.randbytes(300), "invalid module"),
    "truncated-valid": (_VALID[: len(_VALID) // 2], "invalid module"),
    "header-only": (_VALID[:8], "missing export"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_module_is_a_load_error_and_others_keep_serving(
        case: str, plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    data, fragment = CORRUPT[case]
    (plugins / "bad.wasm").write_bytes(data)
    write_wasm(plugins, "other")
    loader = make_loader()

    count, errors = loader.load_all()
    assert count == 1
    assert len(errors) == 1
    err = errors[0]
    assert isinstance(err, PluginLoadError)
    check_named(err, "bad", fragment)
    assert err.path is not None and err.path.endswith("bad.wasm")
    assert any("load failed" in m for m in messages(manager, "bad"))

    with pytest.raises(PluginLoadError) as info:
        loader.ensure_loaded("bad")
    check_named(info.value, "bad", fragment)
    assert "bad" not in manager

    other = Other(manager)
    other.serves()
    other.serves()

    # Nothing about the failure is remembered: once the file is fixed it loads and serves.
    write_wasm(plugins, "bad")
    loader.ensure_loaded("bad")
    assert manager.call("bad", "count") == 1
    other.serves()


def test_corrupt_module_on_lazy_first_call(plugins: Path, make_loader: MakeLoader,
                                           manager: Manager) -> None:
    (plugins / "bad.wasm").write_bytes(_GARBAGE)
    write_wasm(plugins, "other")
    loader = make_loader(lazy=True)
    assert loader.load_all() == (2, [])  # lazy: only discovered
    with pytest.raises(PluginLoadError) as info:
        manager.call("bad", "count")
    check_named(info.value, "bad", "bad magic")
    assert manager.call("other", "count") == 1
    # still failing, not "not found"; and not rebuilt per call (retried after a pause)
    with pytest.raises(PluginUnavailable, match=r"failed to load: .*bad magic"):
        manager.call("bad", "count")
    assert manager.call("other", "count") == 2


ABI_CASES = {
    "rt_no_gk_call": ("missing export 'gk_call'",),
    "rt_no_gk_malloc": ("missing export 'gk_malloc'",),
    "rt_no_gk_register": ("missing export 'gk_register'",),
    "rt_no_memory": ("missing export 'memory'",),
    "rt_gk_call_i32": ("'gk_call'", "-> (i32)", "-> (i64)"),
    "rt_gk_malloc_i64": ("'gk_malloc'", "(i64) -> (i32)", "(i32) -> (i32)"),
    "rt_gk_free_bad": ("'gk_free'", "(i64)"),
    "rt_import_env": ("env.foo", "does not provide"),
    "rt_import_gk_unknown": ("gk.secret_door", "does not provide"),
    "rt_import_gk_log_bad": ("gk.log", "(i32, i32)", "(i32, i32, i32)"),
    "rt_import_gk_host_call_bad": ("gk.host_call", "-> (i32)", "-> (i64)"),
    "rt_import_wasi_unknown": ("open_sesame",),
}


@pytest.mark.parametrize("wat", sorted(ABI_CASES))
def test_abi_violation_is_a_load_error_naming_the_symbol(
        wat: str, plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    write_wasm(plugins, "bad", wat)
    write_wasm(plugins, "other")
    loader = make_loader()
    count, errors = loader.load_all()
    assert count == 1
    assert [type(e) for e in errors] == [PluginLoadError]
    check_named(errors[0], "bad", *ABI_CASES[wat])
    with pytest.raises(PluginLoadError) as info:
        loader.ensure_loaded("bad")
    check_named(info.value, "bad", *ABI_CASES[wat])
    assert "bad" not in manager
    other = Other(manager)
    other.serves()
    write_wasm(plugins, "bad")  # fixed: loads and serves
    loader.ensure_loaded("bad")
    assert manager.call("bad", "version") == "1.0.0"


@pytest.mark.parametrize("wat", ["rt_init_trap", "rt_init_loop"])
def test_failing_initialize_is_a_load_error(wat: str, plugins: Path, make_loader: MakeLoader,
                                            manager: Manager) -> None:
    write_plugin_dir(plugins, "bad", {"resources": {"call_timeout_ms": 200}}, wat=wat)
    write_wasm(plugins, "other")
    loader = make_loader()
    count, errors = loader.load_all()  # rt_init_loop: returns because init has a deadline
    assert count == 1
    assert [type(e) for e in errors] == [PluginLoadError]
    check_named(errors[0], "bad", "instantiation failed")
    assert "bad" not in manager
    Other(manager).serves()


@pytest.mark.parametrize(("wat", "cause"), [("rt_init_trap", "unreachable"),
                                            ("rt_init_loop", "interrupt")])
def test_failing_initialize_message_names_the_cause(
        wat: str, cause: str, plugins: Path, make_loader: MakeLoader) -> None:
    write_plugin_dir(plugins, "bad", {"resources": {"call_timeout_ms": 200}}, wat=wat)
    _, errors = make_loader().load_all()
    assert cause in str(errors[0])


def test_gk_register_bad_pointer_is_a_load_error(plugins: Path, make_loader: MakeLoader,
                                                 manager: Manager) -> None:
    write_wasm(plugins, "bad", "rt_register_bad_ptr")
    write_wasm(plugins, "other")
    count, errors = make_loader().load_all()
    assert count == 1
    assert [type(e) for e in errors] == [PluginLoadError]
    check_named(errors[0], "bad", "gk_register", "outside memory")
    Other(manager).serves()


def test_registration_not_json_is_a_manifest_error(plugins: Path, make_loader: MakeLoader,
                                                   manager: Manager) -> None:
    write_wasm(plugins, "bad", "rt_register_bad_json")
    write_wasm(plugins, "other")
    loader = make_loader()
    count, errors = loader.load_all()
    assert count == 1
    assert [type(e) for e in errors] == [ManifestError]
    check_named(errors[0], "bad", "registration", "not valid JSON")
    with pytest.raises(ManifestError):
        loader.ensure_loaded("bad")
    Other(manager).serves()


@pytest.mark.parametrize("kind", ["dir"])  # a bare module is named by it: test_identity.py
def test_registration_naming_another_plugin_is_a_manifest_error(
        kind: str, plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    if kind == "bare":
        (plugins / "tk.wasm").write_bytes(wat_bytes("testkit", "impostor"))
    else:
        write_plugin_dir(plugins, "tk")
        (plugins / "tk" / "tk.wasm").write_bytes(wat_bytes("testkit", "impostor"))
    write_wasm(plugins, "other")
    loader = make_loader()
    count, errors = loader.load_all()
    assert count == 1
    assert [type(e) for e in errors] == [ManifestError]
    check_named(errors[0], "tk", "'impostor'")
    assert "tk" not in manager and "impostor" not in manager
    Other(manager).serves()


# --------------------------------------------------------------------------------------
# call failures
# --------------------------------------------------------------------------------------


def test_trap_fails_the_call_and_replaces_the_instance(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    _, other = setup(plugins, make_loader, manager)
    assert [manager.call("tk", "count") for _ in range(3)] == [1, 2, 3]
    with pytest.raises(PluginTrap) as info:
        manager.call("tk", "trap")
    check_named(info.value, "tk", "trap")
    assert info.value.function == "trap"
    assert any("instance discarded" in m for m in messages(manager, "tk", "host"))
    other.serves()
    assert manager.call("tk", "count") == 1  # a fresh instance
    assert manager.call("tk", "count") == 2


def test_trap_message_names_the_cause(plugins: Path, make_loader: MakeLoader,
                                      manager: Manager) -> None:
    setup(plugins, make_loader, manager)
    with pytest.raises(PluginTrap) as info:
        manager.call("tk", "trap")
    assert "unreachable" in str(info.value)


def test_manifest_call_timeout_interrupts_an_infinite_loop(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    _, other = setup(plugins, make_loader, manager, {"resources": {"call_timeout_ms": 200}})
    assert manager.call("tk", "count") == 1
    with pytest.raises(PluginTimeout) as info:
        manager.call("tk", "loop")
    check_named(info.value, "tk", "loop", "200 ms")
    other.serves()
    assert manager.call("tk", "count") == 1  # the interrupted instance was replaced
    # A caller's longer timeout cannot extend the manifest's.
    with pytest.raises(PluginTimeout) as info:
        manager.call("tk", "loop", timeout=60)
    check_named(info.value, "tk", "200 ms")
    assert manager.call("tk", "count") == 1
    other.serves()


def test_caller_timeout_shortens_the_manifest_deadline(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    _, other = setup(plugins, make_loader, manager)  # default call_timeout_ms: 30000
    with pytest.raises(PluginTimeout) as info:
        manager.call("tk", "loop", timeout=0.15)
    check_named(info.value, "tk", "loop", "150 ms")
    other.serves()
    assert manager.call("tk", "count") == 1


def test_memory_bomb_is_a_resource_error(plugins: Path, make_loader: MakeLoader,
                                         manager: Manager) -> None:
    _, other = setup(plugins, make_loader, manager, {"resources": {"memory_mb": 2}})
    assert [manager.call("tk", "count") for _ in range(2)] == [1, 2]
    with pytest.raises(PluginResourceError) as info:
        manager.call("tk", "bomb")
    check_named(info.value, "tk", "bomb", "memory limit", "2 MiB")
    other.serves()
    assert manager.call("tk", "count") == 1
    assert manager.call("tk", "echo", {"still": "fine"}) == {"still": "fine"}


def test_arguments_larger_than_the_memory_cap_are_a_resource_error(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    _, other = setup(plugins, make_loader, manager, {"resources": {"memory_mb": 2}})
    with pytest.raises(PluginResourceError) as info:
        manager.call("tk", "echo", b"x" * (3 * 1024 * 1024))
    check_named(info.value, "tk", "out of memory")
    other.serves()
    assert manager.call("tk", "echo", [1, 2]) == [1, 2]


@pytest.mark.parametrize(("function", "fragment"), [
    ("badptr", "gk_call result"),
    ("badlog", "gk.log message"),
    ("badhost", "gk.host_call function name"),
])
def test_bad_pointer_from_the_plugin_is_an_abi_error(
        function: str, fragment: str, plugins: Path, make_loader: MakeLoader,
        manager: Manager) -> None:
    _, other = setup(plugins, make_loader, manager)
    assert [manager.call("tk", "count") for _ in range(2)] == [1, 2]
    with pytest.raises(PluginABIError) as info:
        manager.call("tk", function)
    check_named(info.value, "tk", function, fragment, "outside memory")
    other.serves()
    assert manager.call("tk", "count") == 1  # the instance that broke the ABI is gone


def test_gk_error_is_a_call_error_and_keeps_the_instance(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    _, other = setup(plugins, make_loader, manager)
    assert [manager.call("tk", "count") for _ in range(2)] == [1, 2]
    with pytest.raises(PluginCallError) as info:
        manager.call("tk", "fail")
    assert type(info.value) is PluginCallError
    check_named(info.value, "tk", "asked to fail")
    assert info.value.function == "fail"
    assert info.value.message == "fail: asked to fail"
    other.serves()
    assert manager.call("tk", "count") == 3  # same instance: a reported error is clean


def test_unknown_function_is_a_call_error(plugins: Path, make_loader: MakeLoader,
                                          manager: Manager) -> None:
    _, other = setup(plugins, make_loader, manager)
    assert manager.call("tk", "count") == 1
    with pytest.raises(PluginCallError) as info:
        manager.call("tk", "no_such_function", {"x": 1})
    assert type(info.value) is PluginCallError
    check_named(info.value, "tk", "no_such_function", "unknown function")
    other.serves()
    assert manager.call("tk", "count") == 2


def test_empty_result_is_none(plugins: Path, make_loader: MakeLoader,
                              manager: Manager) -> None:
    setup(plugins, make_loader, manager)
    assert manager.call("tk", "nothing") is None
    assert manager.call_raw("tk", "nothing", b"{}") == b""


# --------------------------------------------------------------------------------------
# results, state, logging
# --------------------------------------------------------------------------------------


def test_large_results_are_copied_intact(plugins: Path, make_loader: MakeLoader,
                                         manager: Manager) -> None:
    setup(plugins, make_loader, manager)
    rng = random.Random(7)
    first = rng.randbytes(1024 * 1024)
    second = rng.randbytes(1024 * 1024)
    out1 = manager.call_raw("tk", "echo", first)
    out2 = manager.call_raw("tk", "echo", second)
    assert out1 == first
    assert out2 == second
    big = {"blob": "é" * 300_000, "n": list(range(1000))}
    assert manager.call("tk", "echo", big) == big


def test_results_survive_a_gk_free_that_reuses_memory(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    write_wasm(plugins, "af", "rt_alias_free")
    make_loader().load_all()
    data = random.Random(3).randbytes(4096)
    assert manager.call_raw("af", "copy", data) == data
    assert manager.call_raw("af", "copy", b"x") == b"x"


def test_result_aliasing_the_arguments_is_read_before_freeing(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    write_wasm(plugins, "af", "rt_alias_free")
    make_loader().load_all()
    data = b"0123456789abcdef"
    assert manager.call_raw("af", "alias", data) == data


def test_state_is_kept_across_calls(plugins: Path, make_loader: MakeLoader,
                                    manager: Manager) -> None:
    setup(plugins, make_loader, manager)
    assert [manager.call("tk", "count") for _ in range(50)] == list(range(1, 51))
    assert manager.call("other", "count") == 2  # instances are per plugin


def test_gk_log_goes_to_the_plugin_log(plugins: Path, make_loader: MakeLoader,
                                       manager: Manager) -> None:
    setup(plugins, make_loader, manager)
    assert manager.call("tk", "logit") == "1.0.0"
    recs = [r for r in manager.log_for("tk").records() if r.source == "plugin"]
    assert [(r.level, r.message) for r in recs] == [("warning", "hello from wasm")]
    assert not [r for r in manager.log_for("other").records() if r.source == "plugin"]


# --------------------------------------------------------------------------------------
# host functions through gk.host_call
# --------------------------------------------------------------------------------------


@pytest.fixture
def host_table() -> HostFunctions:
    """The default host functions; tests add their own to it."""
    return default_host_functions()


@pytest.fixture
def hmanager(host_table: HostFunctions) -> Iterator[Manager]:
    m = Manager(host=host_table, drain_timeout=10.0)
    yield m
    m.close()


def host_call(manager: Manager, name: str, fn: str, args: str) -> Any:
    return manager.call(name, "host", f"{fn}|{args}".encode())


def test_config_get_with_permission(plugins: Path, make_loader: MakeLoader,
                                    manager: Manager) -> None:
    setup(plugins, make_loader, manager,
          {"permissions": ["config"], "config": {"k": "v1", "n": {"deep": [1, 2]}}})
    assert host_call(manager, "tk", "config_get", '{"key":"k"}') == {"value": "v1"}
    assert host_call(manager, "tk", "config_get", '{"key":"n"}') == {"value": {"deep": [1, 2]}}
    assert host_call(manager, "tk", "config_get", '{"key":"app.name"}') == {
        "value": "plughost"}  # the host's own keys come after the plugin's
    assert host_call(manager, "tk", "config_get", '{"key":"missing"}') is None
    assert 'host_call config_get failed: plugin "tk": unknown config key: missing' in \
        messages(manager, "tk", "host")


def test_config_get_without_permission_is_refused_and_logged(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    _, other = setup(plugins, make_loader, manager,
                     {"permissions": ["cache"], "config": {"k": "secret"}})
    assert host_call(manager, "tk", "config_get", '{"key":"k"}') is None
    refusals = [m for m in messages(manager, "tk", "host") if "host_call" in m]
    assert refusals == ['host_call config_get failed: plugin "tk": config key "k" access '
                        "denied"]
    assert manager.call("tk", "count") == 1  # a refusal is not a failure of the instance
    other.serves()


def test_log_host_function(plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    setup(plugins, make_loader, manager, {"permissions": ["cache"]})  # log needs no grant
    assert host_call(manager, "tk", "log", '{"level":"info","message":"hi"}') == {"ok": True}
    assert host_call(manager, "tk", "log", '{"level":"error","message":"bad thing"}') == {
        "ok": True}
    assert host_call(manager, "tk", "log", '{"level":"loud","message":"odd level"}') == {
        "ok": True}  # GoatFlow: an unknown level is info
    assert host_call(manager, "tk", "log",
                     '{"level":"warn","message":"with","fields":{"b":2,"a":"x"}}') == {
        "ok": True}
    recs = [(r.level, r.message) for r in manager.log_for("tk").records()
            if r.source == "plugin"]
    assert recs == [("info", "hi"), ("error", "bad thing"), ("info", "odd level"),
                    ("warning", "with a=x b=2")]


def test_unknown_host_function_is_refused_and_logged(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    _, other = setup(plugins, make_loader, manager,
                     {"permissions": ["config", "log"], "config": {"k": "v"}})
    assert host_call(manager, "tk", "open_the_vault", "{}") is None
    assert 'host_call open_the_vault failed: plugin "tk": unknown host API method: ' \
        "open_the_vault" in messages(manager, "tk", "host")
    assert host_call(manager, "tk", "config_get", '{"key":"k"}') == {"value": "v"}
    other.serves()


def test_malformed_host_call_arguments_are_refused(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    setup(plugins, make_loader, manager, {"permissions": ["config"], "config": {"k": "v"}})
    assert host_call(manager, "tk", "config_get", "{not json") is None
    assert host_call(manager, "tk", "config_get", '{"key": 5}') is None
    assert host_call(manager, "tk", "config_get", '[1]') is None
    refused = [m for m in messages(manager, "tk", "host") if "host_call config_get" in m]
    assert len(refused) == 3
    assert "not valid JSON" in refused[0] and "'key' must be a string" in refused[1]
    assert "must be a JSON object" in refused[2]
    assert host_call(manager, "tk", "config_get", '{"KEY":"k"}') == {"value": "v"}  # Go's
    # decoder matches keys case-insensitively


def test_bare_wasm_gets_the_permissions_of_its_registration(
        plugins: Path, host_table: HostFunctions, hmanager: Manager,
        engine: WasmEngine) -> None:
    host_table.register("db_secret", lambda ctx, args: "leaked", permission="db.read")
    write_wasm(plugins, "tk")  # testkit registers permissions [config, log]
    Loader(plugins, hmanager, engine=engine).load_all()
    assert host_call(hmanager, "tk", "config_get", '{"key":"app.env"}') is not None
    assert not any("access" in m for m in messages(hmanager, "tk"))
    assert host_call(hmanager, "tk", "db_secret", "{}") is None  # not in its registration
    assert 'host_call db_secret failed: plugin "tk": database read access not granted' in \
        messages(hmanager, "tk")
    grants = hmanager.grants("tk")
    assert grants is not None and grants.as_list() == [{"type": "config", "access": "read"}]


def test_manifest_permissions_override_the_registration(
        plugins: Path, host_table: HostFunctions, hmanager: Manager,
        engine: WasmEngine) -> None:
    host_table.register("db_secret", lambda ctx, args: "granted", permission="db.read")
    write_plugin_dir(plugins, "tk", {"permissions": ["db.read"]})  # registration asks config
    Loader(plugins, hmanager, engine=engine).load_all()
    assert host_call(hmanager, "tk", "db_secret", "{}") == "granted"
    assert host_call(hmanager, "tk", "config_get", '{"key":"app.env"}') is None
    assert any('config key "app.env" access denied' in m for m in messages(hmanager, "tk"))


def test_a_plugin_that_declares_nothing_gets_goatflows_default(
        plugins: Path, host_table: HostFunctions, hmanager: Manager,
        engine: WasmEngine) -> None:
    """No permission in the manifest nor in the registration: db read, cache and file
    readwrite, nothing else."""
    host_table.register("db_secret", lambda ctx, args: "granted", permission="db.read")
    pdir = write_plugin_dir(plugins, "tk", {"permissions": []})
    text = (Path(__file__).parent / "fixtures" / "wat" / "testkit.wat").read_text()
    asks = '\\"permissions\\":[\\"config\\",\\"log\\"]'
    assert asks in text
    quiet = '\\"permissions\\":[' + " " * (len(asks) - 18) + "]"  # same length: no ask
    (pdir / "tk.wasm").write_bytes(wasmtime.wat2wasm(
        text.replace(asks, quiet).replace("__NAME__", "tk").replace("__VERSION__", "1.0.0")))
    Loader(plugins, hmanager, engine=engine).load_all()
    grants = hmanager.grants("tk")
    assert grants is not None and grants.as_list() == [
        {"type": "db", "access": "read"}, {"type": "cache", "access": "readwrite"},
        {"type": "file", "access": "readwrite"}]
    assert host_call(hmanager, "tk", "db_secret", "{}") == "granted"
    assert host_call(hmanager, "tk", "config_get", '{"key":"app.env"}') is None


def test_host_decides_who_is_calling(plugins: Path, host_table: HostFunctions,
                                     hmanager: Manager, engine: WasmEngine) -> None:
    host_table.register("whoami", lambda ctx, args: ctx.plugin, permission=None)
    write_wasm(plugins, "tk")
    write_plugin_dir(plugins, "other")
    Loader(plugins, hmanager, engine=engine).load_all()
    assert host_call(hmanager, "tk", "whoami", "{}") == "tk"
    assert host_call(hmanager, "other", "whoami", "{}") == "other"


def test_bare_wasm_host_context_has_the_registration_i18n(
        plugins: Path, host_table: HostFunctions, hmanager: Manager,
        engine: WasmEngine) -> None:
    host_table.register("i18n", lambda ctx, args: dict(ctx.i18n), permission=None)
    write_wasm(plugins, "tk")
    Loader(plugins, hmanager, engine=engine).load_all()
    assert host_call(hmanager, "tk", "i18n", "{}") == {"en": {"hi": "hello"}}


def test_manifest_plugin_host_context_has_the_registration_i18n(
        plugins: Path, host_table: HostFunctions, hmanager: Manager,
        engine: WasmEngine) -> None:
    host_table.register("i18n", lambda ctx, args: dict(ctx.i18n), permission=None)
    write_plugin_dir(plugins, "tk", {"permissions": ["config"]})
    Loader(plugins, hmanager, engine=engine).load_all()
    assert host_call(hmanager, "tk", "i18n", "{}") == {"en": {"hi": "hello"}}


# --------------------------------------------------------------------------------------
# WASI
# --------------------------------------------------------------------------------------


def test_wasi_stdout_and_stderr_go_to_the_plugin_log(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    write_wasm(plugins, "w", "rt_wasi")
    write_wasm(plugins, "other")
    loader = make_loader()
    assert loader.load_all() == (2, [])
    assert manager.call("w", "write") == 0  # every fd_write succeeded
    recs = [(r.level, r.message, r.source) for r in manager.log_for("w").records()
            if r.source in ("stdout", "stderr")]
    assert recs == [("info", "hello from wasi stdout", "stdout"),
                    ("warning", "oops on stderr", "stderr")]
    assert not any(r.source in ("stdout", "stderr")
                   for r in manager.log_for("other").records())
    # The unterminated last line is not lost: unloading flushes it.
    loader.unload("w")
    assert ("info", "partial tail", "stdout") in [
        (r.level, r.message, r.source) for r in manager.log_for("w").records()]
    assert manager.call("other", "count") == 1


def test_wasi_grants_no_environment_arguments_or_files(
        plugins: Path, make_loader: MakeLoader, manager: Manager,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PLUGHOST_TEST_SECRET", "do-not-leak")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.txt").write_text("secret")
    write_wasm(plugins, "w", "rt_wasi")
    make_loader().load_all()
    assert manager.call("w", "environ") == 0
    assert manager.call("w", "args") == 0
    ebadf = 8  # WASI errno: no fd 3, i.e. no preopened directory
    assert manager.call("w", "prestat") == ebadf
    assert manager.call("w", "open") == ebadf


# --------------------------------------------------------------------------------------
# instance pools and threads
# --------------------------------------------------------------------------------------


def test_pool_runs_calls_in_parallel_on_separate_instances(
        plugins: Path, host_table: HostFunctions, hmanager: Manager,
        engine: WasmEngine) -> None:
    # "wait" blocks each call in the host until 4 calls are inside the plugin at once. It
    # can only be passed if 4 instances run in parallel; with exactly 4 instances, 8 calls
    # use each instance twice, so the counters read 1,1,1,1,2,2,2,2.
    barrier = threading.Barrier(4, timeout=20)
    passed: list[bool] = []

    def wait(ctx: HostContext, args: Any) -> str:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            passed.append(False)
            raise HostCallError("barrier broken", plugin=ctx.plugin) from None
        passed.append(True)
        return "ok"

    host_table.register("wait", wait, permission=None)
    write_plugin_dir(plugins, "pool", {"resources": {"max_instances": 4}}, wat="rt_pool")
    write_wasm(plugins, "other")
    Loader(plugins, hmanager, engine=engine).load_all()

    results: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(hmanager.call("pool", "count_wait"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert passed == [True] * 8
    assert sorted(results) == [1, 1, 1, 1, 2, 2, 2, 2]
    assert hmanager.call("other", "count") == 1


def test_single_instance_serializes_calls(plugins: Path, make_loader: MakeLoader,
                                          manager: Manager) -> None:
    setup(plugins, make_loader, manager)
    start = threading.Barrier(8)
    results: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait(20)
            for _ in range(25):
                n = manager.call("tk", "count")
                with lock:
                    results.append(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(results) == list(range(1, 201))


def test_concurrent_abi_errors_and_traps_are_classified_per_call(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    # A race: loops until the first misclassification (usually within a few dozen calls);
    # when the bug is fixed it runs all iterations and passes.
    write_plugin_dir(plugins, "tk", {"resources": {"max_instances": 4}})
    make_loader().load_all()
    wrong: list[str] = []
    stop = threading.Event()
    expected = {"badlog": PluginABIError, "trap": PluginTrap}

    def worker(fn: str) -> None:
        for _ in range(600):
            if stop.is_set():
                return
            try:
                manager.call("tk", fn)
            except PluginCallError as exc:
                if type(exc) is not expected[fn] or exc.function != fn or (
                        fn == "badlog" and "gk.log" not in str(exc)):
                    wrong.append(f"{fn}: {type(exc).__name__}: {exc}")
                    stop.set()

    threads = [threading.Thread(target=worker, args=(fn,))
               for fn in ("badlog", "trap", "badlog", "trap")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert wrong == []


# --------------------------------------------------------------------------------------
# asyncio
# --------------------------------------------------------------------------------------


def test_acall_returns_results_and_errors(plugins: Path, make_loader: MakeLoader,
                                          manager: Manager) -> None:
    setup(plugins, make_loader, manager)

    async def main() -> None:
        assert await manager.acall("tk", "count") == 1
        assert await manager.acall("tk", "echo", {"a": 1}) == {"a": 1}
        with pytest.raises(PluginCallError) as info:
            await manager.acall("tk", "fail")
        check_named(info.value, "tk", "asked to fail")
        assert await manager.acall("tk", "count") == 2

    asyncio.run(main())


def test_acall_runs_off_the_event_loop(plugins: Path, make_loader: MakeLoader,
                                       manager: Manager) -> None:
    setup(plugins, make_loader, manager, {"resources": {"call_timeout_ms": 300}})

    async def main() -> None:
        event = asyncio.Event()
        seen: dict[str, bool] = {}
        call = asyncio.create_task(manager.acall("tk", "loop"))

        async def meanwhile() -> None:
            seen["call_done"] = call.done()
            event.set()

        helper = asyncio.create_task(meanwhile())
        await asyncio.wait_for(event.wait(), 30)
        await helper
        assert seen == {"call_done": False}  # the loop ran while the call was in flight
        with pytest.raises(PluginTimeout) as info:
            await call
        check_named(info.value, "tk", "300 ms")
        assert await manager.acall("other", "count") == 2

    asyncio.run(main())


def test_acall_does_not_block_the_loop_while_the_plugin_waits(
        plugins: Path, host_table: HostFunctions, hmanager: Manager,
        engine: WasmEngine) -> None:
    # The plugin call blocks in a host function until a task on the loop releases it: this
    # finishes only if the loop keeps running during the call (no timing involved).
    release = threading.Event()
    host_table.register("block", lambda ctx, args: "released" if release.wait(30)
                        else "never released", permission=None)
    write_wasm(plugins, "tk")
    Loader(plugins, hmanager, engine=engine).load_all()

    async def main() -> None:
        call = asyncio.create_task(hmanager.acall("tk", "host", b"block|{}"))

        async def releaser() -> None:
            release.set()

        await asyncio.create_task(releaser())
        assert await call == "released"

    try:
        asyncio.run(main())
    finally:
        release.set()


def test_acall_timeout_raises_plugin_timeout(plugins: Path, make_loader: MakeLoader,
                                             manager: Manager) -> None:
    _, other = setup(plugins, make_loader, manager)  # manifest deadline: 30 s

    async def main() -> None:
        with pytest.raises(PluginTimeout) as info:
            await manager.acall("tk", "loop", timeout=0.2)
        check_named(info.value, "tk", "loop", "200 ms")
        assert await manager.acall("tk", "count") == 1

    asyncio.run(main())
    other.serves()


def test_acall_outer_timeout_names_the_plugin(
        plugins: Path, host_table: HostFunctions, hmanager: Manager,
        engine: WasmEngine) -> None:
    release = threading.Event()
    host_table.register("block", lambda ctx, args: release.wait(30), permission=None)
    write_wasm(plugins, "tk")
    Loader(plugins, hmanager, engine=engine).load_all()

    async def main() -> None:
        with pytest.raises(PluginTimeout) as info:
            await hmanager.acall("tk", "host", b"block|{}", timeout=0.1)
        assert info.value.plugin == "tk"

    try:
        asyncio.run(main())
    finally:
        release.set()
