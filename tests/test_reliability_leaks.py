"""Nothing leaks: discarded instances, retired versions and restarted processes are freed.

Counted through /proc/self (RSS, open fds, threads) and /proc/<pid>/task/*/children,
never estimated. Each check warms up first (caches, thread pools and allocator arenas
reach their steady size), then repeats the operation many times and requires the count to
stay where it was, within a margin far below what one leaked item per operation would add.
"""

from __future__ import annotations

import contextlib
import gc
import os
from pathlib import Path

import pytest

from plughost import Loader, Manager, PluginTrap
from plughost.runtimes.wasm import WasmEngine

from .conftest import status_mib, write_plugin_dir
from .test_grpc_runtime import sdk_plugin

_MIB = 1024 * 1024


def rss_mib() -> float:
    return status_mib("VmRSS")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def children() -> set[int]:
    found: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        # a thread may end between the listing and the read: it has no children then
        with contextlib.suppress(FileNotFoundError, ProcessLookupError), \
                open(f"/proc/self/task/{task}/children") as f:
            found.update(int(p) for p in f.read().split())
    return found


def test_trapping_calls_and_reloads_keep_rss_and_fds_flat(plugins: Path, manager: Manager,
                                                         engine: WasmEngine) -> None:
    # rt_leak imports gk.* (what used to pin instances) and dirties 4 MiB before trapping:
    # one leaked instance per call would add 4 GB over 1,000 calls.
    manifest = {"resources": {"memory_mb": 8}}
    write_plugin_dir(plugins, "leaky", manifest, wat="rt_leak")
    loader = Loader(plugins, manager, engine=engine)
    loader.load_all()

    def trap(n: int) -> None:
        for _ in range(n):
            with pytest.raises(PluginTrap, match="unreachable"):
                manager.call_raw("leaky", "fill", b"")

    def reload(first: int, n: int) -> None:
        for i in range(first, first + n):  # a new version each time: a new module
            write_plugin_dir(plugins, "leaky", manifest, wat="rt_leak", version=f"1.0.{i}")
            loader.reload("leaky")

    trap(50)
    reload(0, 20)
    gc.collect()
    rss0, fds0 = rss_mib(), open_fds()
    trap(1000)
    gc.collect()
    rss1, fds1 = rss_mib(), open_fds()
    reload(20, 300)
    gc.collect()
    rss2, fds2 = rss_mib(), open_fds()
    assert manager.call_raw("leaky", "ok", b"") == b"ok"
    assert manager.get("leaky").source.manifest.version == "1.0.319"
    # 4 MiB per leaked call, one fd (a memory image) per leaked module
    assert rss1 - rss0 < 64, (rss0, rss1)
    assert fds1 == fds0, (fds0, fds1)
    assert rss2 - rss0 < 96, (rss0, rss2)
    assert fds2 <= fds0 + 2, (fds0, fds2)


def test_grpc_reloads_leave_no_threads_fds_or_processes(plugins: Path, manager: Manager,
                                                        engine: WasmEngine) -> None:
    pdir = sdk_plugin(plugins, "svc")
    loader = Loader(plugins, manager, engine=engine)
    loader.load_all()

    def reload(first: int, n: int) -> None:
        for i in range(first, first + n):
            (pdir / "plugin.py").write_text((pdir / "plugin.py").read_text())
            loader.reload("svc")
            assert manager.call("svc", "echo", {"i": i}) == {"i": i}

    reload(0, 3)
    gc.collect()
    base = (threads(), open_fds(), len(children()))
    reload(3, 25)
    gc.collect()
    after = (threads(), open_fds(), len(children()))
    print("grpc reloads: threads, fds, children", base, after)
    assert after[0] <= base[0] + 1, ("threads", base, after)
    assert after[1] <= base[1] + 2, ("fds", base, after)
    assert after[2] == base[2] == 1, ("children", base, after)
