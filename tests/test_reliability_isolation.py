"""Exceptions never cross plugins, and host imports never raise into wasmtime-py.

wasmtime-py carries an exception raised by a host function through one process-global
slot; a concurrent trap on another store used to pick it up as its own. Here one plugin's
host function fails with an exception on every call while another plugin traps on another
thread: each side must see only its own error, every time.
"""

from __future__ import annotations

import threading
from pathlib import Path

from plughost import Loader, Manager, PlughostError, PluginCallError, PluginTrap
from plughost.runtimes.wasm import WasmEngine

from .conftest import write_plugin_dir


class Boom(BaseException):
    """Not an Exception: passes every `except Exception` on its way out."""


def explode(ctx: object, args: object) -> None:
    raise Boom("host function exploded")


def test_host_function_failures_stay_with_their_plugin(plugins: Path, manager: Manager,
                                                        engine: WasmEngine) -> None:
    manager.host.register("explode", explode, permission=None)
    write_plugin_dir(plugins, "caller")
    write_plugin_dir(plugins, "trapper")
    Loader(plugins, manager, engine=engine).load_all()
    rounds = 300
    seen: dict[str, list[PlughostError]] = {"caller": [], "trapper": []}
    start = threading.Barrier(2)

    def run(name: str, function: str, args: bytes) -> None:
        start.wait()
        for _ in range(rounds):
            try:
                manager.call_raw(name, function, args)
            except PlughostError as exc:
                seen[name].append(exc)

    workers = [threading.Thread(target=run, args=("caller", "host", b"explode|{}")),
               threading.Thread(target=run, args=("trapper", "trap", b""))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(seen["caller"]) == len(seen["trapper"]) == rounds
    for exc in seen["trapper"]:
        assert type(exc) is PluginTrap and exc.plugin == "trapper", exc
        assert "unreachable" in str(exc) and "exploded" not in str(exc)
    for exc in seen["caller"]:
        assert type(exc) is PluginCallError and exc.plugin == "caller", exc
        assert "host error during the call: gk.host_call: Boom: host function exploded" \
            in str(exc)
    # both keep serving
    assert manager.call_raw("caller", "echo", b"x") == b"x"
    assert manager.call_raw("trapper", "echo", b"y") == b"y"
