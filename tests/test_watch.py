"""Hot reload: real file operations under a running watcher, both plugin kinds.

Every test waits on something that says the watcher acted: a manager event caught by a
listener, `Watcher.wait_for_batch`, or a condition polled with `wait_until`. To show that
something did *not* happen (editor temp files, a stopped watcher), a "barrier" plugin is
dropped in after it: the watcher applies changes in order, so once the barrier is loaded,
everything before it has been seen.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from plughost import Event, Loader, Manager, ManifestError, PlughostError
from plughost.runtimes.wasm import WasmEngine
from plughost.watch import Watcher

from .conftest import names, wait_until, wat_bytes, write_plugin_dir, write_wasm

GRPC_PLUGIN = Path(__file__).parent / "fixtures" / "hostops" / "grpc_plugin.py"
DEBOUNCE_MS = 100
WAIT = 20.0  # generous upper bound for one event; tests normally see it in well under 1 s


# -- helpers -----------------------------------------------------------------------------


class Recorder:
    """A manager listener that keeps every event and lets a test wait for one."""

    def __init__(self, manager: Manager) -> None:
        self.events: list[Event] = []
        self._cond = threading.Condition()
        manager.add_listener(self)

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def since(self, mark: int, plugin: str | None = None) -> list[Event]:
        with self._cond:
            return [e for e in self.events[mark:] if plugin is None or e.plugin == plugin]

    def wait(self, kind: str, plugin: str, detail: str | None = None, *, after: int = 0,
             timeout: float = WAIT) -> Event:
        def find() -> Event | None:
            return next((e for e in self.events[after:]
                         if e.kind == kind and e.plugin == plugin
                         and (detail is None or e.detail == detail)), None)

        with self._cond:
            if not self._cond.wait_for(lambda: find() is not None, timeout):
                raise AssertionError(f"no {kind!r} event for {plugin!r} (detail={detail!r}) "
                                     f"within {timeout}s; events: {self.events[after:]}")
            found = find()
        assert found is not None
        return found


def replace_atomic(path: Path, data: bytes | str) -> None:
    """Write a hidden temp file next to `path` and rename it over `path` (a deploy)."""
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def grpc_source(name: str, version: str = "1.0.0", markers: Path | None = None) -> str:
    return (GRPC_PLUGIN.read_text().replace("__NAME__", name)
            .replace("__VERSION__", version)
            .replace("__MARKERS__", str(markers) if markers else ""))


def write_grpc_plugin(parent: Path, name: str, version: str = "1.0.0",
                      manifest: dict[str, Any] | None = None) -> Path:
    """`<parent>/<name>/` with plugin.yaml and the hostops grpc fixture as plugin.py."""
    pdir = parent / name
    pdir.mkdir(parents=True, exist_ok=True)
    (pdir / "plugin.py").write_text(grpc_source(name, version))
    data: dict[str, Any] = {"name": name, "version": version, "runtime": "grpc",
                            "binary": "plugin.py"}
    data.update(manifest or {})
    (pdir / "plugin.yaml").write_text(yaml.safe_dump(data))
    return pdir


def write_kind(parent: Path, kind: str, name: str, version: str = "1.0.0",
               manifest: dict[str, Any] | None = None) -> Path:
    """One plugin of the given kind: a single .wasm, a wasm plugin dir, or a grpc dir."""
    if kind == "wasm-file":
        return write_wasm(parent, name, version=version)
    if kind == "wasm-dir":
        return write_plugin_dir(parent, name, manifest, version=version)
    return write_grpc_plugin(parent, name, version, manifest)


def code_file(kind: str, plugins: Path, name: str) -> Path:
    """The file holding the plugin's code (module or executable)."""
    return {"wasm-file": plugins / f"{name}.wasm",
            "wasm-dir": plugins / name / f"{name}.wasm",
            "grpc": plugins / name / "plugin.py"}[kind]


def new_code(kind: str, name: str, version: str) -> bytes:
    if kind == "grpc":
        return grpc_source(name, version).encode()
    return wat_bytes(name=name, version=version)


def proc_alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("State:")), "")
    return state not in ("Z", "X")


def host_call(manager: Manager, name: str, fn: str, args: str) -> Any:
    """testkit's `host` function: forwards `fn|args` to gk.host_call."""
    return manager.call(name, "host", f"{fn}|{args}".encode())


class Setup:
    """A loader over `plugins`, its watcher and an event recorder."""

    def __init__(self, plugins: Path, manager: Manager, loader: Loader, watcher: Watcher,
                 rec: Recorder) -> None:
        self.plugins = plugins
        self.manager = manager
        self.loader = loader
        self.watcher = watcher
        self.rec = rec
        self._barriers = 0

    def barrier(self) -> None:
        """Drop in a fresh plugin and wait until it is loaded: every change made before
        has been applied by then (the watcher works through changes in order)."""
        self._barriers += 1
        name = f"zz-barrier-{self._barriers}"
        # the batch that loads the barrier may also hold earlier changes, applied after the
        # load within that batch: note the batch count when the load event fires (the
        # listener runs on the watcher thread) and wait for that batch to be complete
        at_load: list[int] = []

        def listener(event: Event) -> None:
            if event.kind == "load" and event.plugin == name:
                at_load.append(self.watcher.batches)

        self.manager.add_listener(listener)
        try:
            replace_atomic(self.plugins / f"{name}.wasm", wat_bytes(name=name))
            wait_until(lambda: bool(at_load), WAIT)
        finally:
            self.manager.remove_listener(listener)
        assert self.watcher.wait_for_batch(at_load[0], WAIT)


Start = Callable[..., Setup]


@pytest.fixture
def start(plugins: Path, manager: Manager, engine: WasmEngine) -> Iterator[Start]:
    """start(lazy=False, directory=plugins): load_all, then watch (debounce 100 ms)."""
    loaders: list[Loader] = []

    def make(lazy: bool = False, directory: Path | None = None) -> Setup:
        rec = Recorder(manager)
        loader = Loader(directory or plugins, manager, lazy=lazy, engine=engine)
        loaders.append(loader)
        loader.load_all()
        watcher = loader.watch_dir(debounce_ms=DEBOUNCE_MS)
        return Setup(directory or plugins, manager, loader, watcher, rec)

    yield make
    for loader in loaders:
        loader.close()


KINDS = ["wasm-file", "wasm-dir", "grpc"]


# -- changed code --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_atomic_rename_of_a_new_version_reloads(plugins: Path, start: Start, kind: str
                                                ) -> None:
    write_kind(plugins, kind, "a")
    s = start()
    assert s.manager.call("a", "version") == "1.0.0"
    old = s.manager.get("a")
    mark = s.rec.mark()
    replace_atomic(code_file(kind, plugins, "a"), new_code(kind, "a", "2.0.0"))
    s.rec.wait("reload", "a", "2.0.0", after=mark)
    assert s.manager.call("a", "version") == "2.0.0"
    assert s.manager.get("a") is not old
    assert not [e for e in s.rec.since(mark, "a") if e.kind == "error"]


@pytest.mark.parametrize("kind", ["wasm-file", "wasm-dir"])
def test_in_place_truncate_and_write_reloads(plugins: Path, start: Start, kind: str) -> None:
    write_kind(plugins, kind, "a")
    s = start()
    assert s.manager.call("a", "version") == "1.0.0"
    mark = s.rec.mark()
    with open(code_file(kind, plugins, "a"), "wb") as f:  # truncate + write, same inode
        f.write(wat_bytes(name="a", version="2.0.0"))
    s.rec.wait("reload", "a", "2.0.0", after=mark)
    assert s.manager.call("a", "version") == "2.0.0"


def test_grpc_changed_executable_reloads_new_process(plugins: Path, start: Start) -> None:
    pdir = write_grpc_plugin(plugins, "g")
    s = start()
    pid1 = s.manager.call("g", "pid")
    assert s.manager.call("g", "version") == "1.0.0"
    mark = s.rec.mark()
    replace_atomic(pdir / "plugin.py", grpc_source("g", "2.0.0"))
    s.rec.wait("reload", "g", "2.0.0", after=mark)
    assert s.manager.call("g", "version") == "2.0.0"
    pid2 = s.manager.call("g", "pid")
    assert pid2 != pid1
    wait_until(lambda: not proc_alive(pid1))  # the old process was shut down


# -- removed, added, moved ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_delete_unloads_and_forgets(plugins: Path, start: Start, kind: str) -> None:
    path = write_kind(plugins, kind, "a")
    write_wasm(plugins, "other")
    s = start()
    pid = s.manager.call("a", "pid") if kind == "grpc" else None
    mark = s.rec.mark()
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    s.rec.wait("unload", "a", after=mark)
    wait_until(lambda: "a" not in names(s.loader))
    assert s.manager.get("a") is None
    assert "a" not in [d.name for d in s.loader.discovered_plugins()]
    assert s.manager.call("other", "version") == "1.0.0"  # the rest keeps serving
    if pid is not None:
        wait_until(lambda: not proc_alive(pid))


@pytest.mark.parametrize("kind", ["wasm-dir", "grpc"])
def test_directory_moved_in_and_out(plugins: Path, tmp_path: Path, start: Start,
                                    kind: str) -> None:
    outside = tmp_path / "staging"  # same filesystem: os.rename is one atomic move
    built = write_kind(outside, kind, "m")
    s = start()
    assert "m" not in names(s.loader)
    mark = s.rec.mark()
    os.rename(built, plugins / "m")
    s.rec.wait("load", "m", after=mark)
    assert s.manager.call("m", "version") == "1.0.0"
    assert "m" in names(s.loader)
    assert s.loader.discovered_plugins()[0].path == plugins / "m"

    mark = s.rec.mark()
    os.rename(plugins / "m", outside / "m-back")
    s.rec.wait("unload", "m", after=mark)
    wait_until(lambda: "m" not in names(s.loader))
    assert s.manager.get("m") is None


def test_mkdir_then_manifest_then_module(plugins: Path, start: Start) -> None:
    s = start()
    mark = s.rec.mark()
    pdir = plugins / "late"
    pdir.mkdir()
    batches = s.watcher.batches
    (pdir / "plugin.yaml").write_text(yaml.safe_dump(
        {"name": "late", "version": "1.0.0", "runtime": "wasm"}))
    assert s.watcher.wait_for_batch(batches, WAIT)  # seen while the module is missing
    assert s.manager.get("late") is None
    replace_atomic(pdir / "late.wasm", wat_bytes(name="late", version="3.0.0"))
    s.rec.wait("load", "late", "3.0.0", after=mark)
    assert s.manager.call("late", "version") == "3.0.0"
    # an error reported in between (manifest without its module) is fine; nothing else is
    assert {e.kind for e in s.rec.since(mark, "late")} <= {"error", "load"}
    found = {d.name: d for d in s.loader.discovered_plugins()}
    assert found["late"].loaded and found["late"].error is None


def test_new_nested_subdirectory_with_a_module(plugins: Path, start: Start) -> None:
    s = start()
    mark = s.rec.mark()
    deep = plugins / "team" / "tools" / "v1"
    deep.mkdir(parents=True)
    replace_atomic(deep / "nested.wasm", wat_bytes(name="nested"))
    s.rec.wait("load", "nested", after=mark)
    assert s.manager.call("nested", "version") == "1.0.0"
    assert s.loader.discovered_plugins()[0].path == deep / "nested.wasm"


def test_a_bare_module_is_served_by_its_registered_name_whatever_its_file(
        plugins: Path, start: Start) -> None:
    (plugins / "typo.wasm").write_bytes(wat_bytes(name="good"))
    s = start()
    assert s.manager.get("typo") is None and s.manager.call("good", "version") == "1.0.0"
    assert names(s.loader) == ["good"]


def test_rename_of_a_loaded_wasm_keeps_its_name(plugins: Path, start: Start) -> None:
    """The file moves, the plugin is unloaded with it and loaded again from the new path,
    under the name the module registers (still "a")."""
    write_wasm(plugins, "a")
    s = start()
    assert s.manager.call("a", "version") == "1.0.0"
    mark = s.rec.mark()
    os.rename(plugins / "a.wasm", plugins / "b.wasm")
    s.rec.wait("unload", "a", after=mark)
    s.rec.wait("load", "a", after=mark)
    assert s.manager.call("a", "version") == "1.0.0"
    assert s.manager.get("b") is None
    wait_until(lambda: names(s.loader) == ["a"])
    assert [d.path for d in s.loader.discovered_plugins()] == [plugins / "b.wasm"]


# -- manifest changes -----------------------------------------------------------------------


def test_changed_manifest_config_is_seen_by_the_plugin(plugins: Path, start: Start) -> None:
    manifest = {"permissions": ["config"], "config": {"k": "v1"}}
    pdir = write_plugin_dir(plugins, "cfg", manifest)
    s = start()
    assert host_call(s.manager, "cfg", "config_get", '{"key":"k"}') == {"value": "v1"}
    mark = s.rec.mark()
    data = yaml.safe_load((pdir / "plugin.yaml").read_text())
    data["config"] = {"k": "v2"}
    replace_atomic(pdir / "plugin.yaml", yaml.safe_dump(data))
    s.rec.wait("reload", "cfg", after=mark)
    assert host_call(s.manager, "cfg", "config_get", '{"key":"k"}') == {"value": "v2"}


def test_grpc_changed_manifest_config_reaches_init(plugins: Path, start: Start) -> None:
    pdir = write_grpc_plugin(plugins, "g", manifest={"config": {"k": "v1"}})
    s = start()
    assert s.manager.call("g", "config") == {"k": "v1"}
    mark = s.rec.mark()
    data = yaml.safe_load((pdir / "plugin.yaml").read_text())
    data["config"] = {"k": "v2"}
    (pdir / "plugin.yaml").write_text(yaml.safe_dump(data))  # in place this time
    s.rec.wait("reload", "g", after=mark)
    assert s.manager.call("g", "config") == {"k": "v2"}


# -- what must not reload -------------------------------------------------------------------


def test_editor_temp_files_trigger_no_reload(plugins: Path, start: Start) -> None:
    write_wasm(plugins, "a")
    pdir = write_plugin_dir(plugins, "d")
    s = start()
    before = {n: s.manager.get(n) for n in ("a", "d")}
    mark = s.rec.mark()
    for where, stem in ((plugins, "a"), (pdir, "d")):
        for temp in (f".{stem}.wasm.swp", f"{stem}.wasm~", f".#{stem}.wasm", "4913",
                     f"{stem}.wasm.part"):
            (where / temp).write_bytes(b"editor junk")
        (where / f".{stem}.wasm.swp").write_bytes(b"more junk")  # modified, too
        (where / f"{stem}.wasm~").unlink()  # and removed
    s.barrier()
    assert [e for e in s.rec.since(mark) if e.plugin in ("a", "d")] == []
    assert {n: s.manager.get(n) for n in ("a", "d")} == before
    assert names(s.loader) == ["a", "d", "zz-barrier-1"]


def test_broken_new_version_keeps_the_old_one_serving(plugins: Path, start: Start) -> None:
    write_wasm(plugins, "a")
    s = start()
    old = s.manager.get("a")
    mark = s.rec.mark()
    replace_atomic(plugins / "a.wasm", b"\x00asm garbage, not a module" * 10)
    err = s.rec.wait("error", "a", after=mark)
    assert "a" in err.detail
    assert s.manager.get("a") is old
    assert s.manager.call("a", "version") == "1.0.0"
    assert {e.kind for e in s.rec.since(mark, "a")} == {"error"}
    mark = s.rec.mark()
    replace_atomic(plugins / "a.wasm", wat_bytes(name="a", version="1.0.1"))
    s.rec.wait("reload", "a", "1.0.1", after=mark)
    assert s.manager.call("a", "version") == "1.0.1"


def test_broken_manifest_keeps_the_old_one_serving(plugins: Path, start: Start) -> None:
    pdir = write_plugin_dir(plugins, "d")
    s = start()
    good = (pdir / "plugin.yaml").read_text()
    mark = s.rec.mark()
    replace_atomic(pdir / "plugin.yaml", "name: d\nruntime: cobol\n")
    err = s.rec.wait("error", "d", after=mark)
    assert "runtime" in err.detail
    assert s.manager.call("d", "version") == "1.0.0"
    mark = s.rec.mark()
    replace_atomic(pdir / "d.wasm", wat_bytes(name="d", version="1.1.0"))
    replace_atomic(pdir / "plugin.yaml", good)
    s.rec.wait("reload", "d", "1.1.0", after=mark)
    assert s.manager.call("d", "version") == "1.1.0"


def test_grpc_broken_new_version_keeps_the_old_process(plugins: Path, start: Start) -> None:
    pdir = write_grpc_plugin(plugins, "g")
    s = start()
    pid = s.manager.call("g", "pid")
    mark = s.rec.mark()
    replace_atomic(pdir / "plugin.py", "import sys\nsys.exit('this version cannot start')\n")
    err = s.rec.wait("error", "g", after=mark)
    assert "g" in err.detail
    assert s.manager.call("g", "pid") == pid
    assert s.manager.call("g", "version") == "1.0.0"
    mark = s.rec.mark()
    replace_atomic(pdir / "plugin.py", grpc_source("g", "1.0.1"))
    s.rec.wait("reload", "g", "1.0.1", after=mark)
    assert s.manager.call("g", "version") == "1.0.1"


# -- lazy mode ------------------------------------------------------------------------------


def test_lazy_new_plugins_are_discovered_then_loaded_by_a_call(plugins: Path,
                                                               start: Start) -> None:
    write_wasm(plugins, "used")
    write_wasm(plugins, "idle")
    s = start(lazy=True)
    assert s.manager.names() == []
    assert s.manager.call("used", "version") == "1.0.0"
    mark = s.rec.mark()
    batches = s.watcher.batches
    replace_atomic(plugins / "fresh.wasm", wat_bytes(name="fresh"))
    wait_until(lambda: "fresh" in names(s.loader) and s.watcher.batches > batches,
               WAIT)
    assert s.manager.get("fresh") is None  # discovered only
    assert s.rec.since(mark) == []

    # a changed plugin that nobody loaded stays unloaded; a loaded one is reloaded
    batches = s.watcher.batches
    replace_atomic(plugins / "idle.wasm", wat_bytes(name="idle", version="2.0.0"))
    replace_atomic(plugins / "used.wasm", wat_bytes(name="used", version="2.0.0"))
    s.rec.wait("reload", "used", "2.0.0", after=mark)
    assert s.watcher.wait_for_batch(batches, WAIT)
    assert s.manager.get("idle") is None

    assert s.manager.call("fresh", "version") == "1.0.0"  # the call loads it
    assert s.manager.get("fresh") is not None
    assert s.manager.call("idle", "version") == "2.0.0"
    assert [e.kind for e in s.rec.since(mark, "fresh")] == ["load"]


# -- stopping -------------------------------------------------------------------------------


def test_stop_watch_stops_everything(plugins: Path, start: Start) -> None:
    write_wasm(plugins, "a")
    s = start()
    # prove it is live first
    s.barrier()
    watcher = s.watcher
    s.loader.stop_watch()
    assert not watcher.running
    assert not watcher.alive  # stop() joined its thread
    assert s.loader.watcher is None
    batches = watcher.batches
    mark = s.rec.mark()
    replace_atomic(plugins / "a.wasm", wat_bytes(name="a", version="9.9.9"))
    replace_atomic(plugins / "late.wasm", wat_bytes(name="late"))
    assert not watcher.wait_for_batch(batches, 0.5)  # a stopped thread applies nothing
    assert s.rec.since(mark) == []
    assert s.manager.call("a", "version") == "1.0.0"
    assert s.manager.get("late") is None
    # a fresh rescan sees the new file on disk, and it was never loaded
    s.loader.discover_all()
    found = {d.name: d for d in s.loader.discovered_plugins()}
    assert "late" in found and not found["late"].loaded
    # watching again picks changes up again
    mark = s.rec.mark()
    s.loader.watch_dir(debounce_ms=DEBOUNCE_MS)
    replace_atomic(plugins / "a.wasm", wat_bytes(name="a", version="10.0.0"))
    s.rec.wait("reload", "a", "10.0.0", after=mark)


# -- load -----------------------------------------------------------------------------------


def test_calls_never_fail_across_30_watched_reloads(plugins: Path, start: Start) -> None:
    # A pool of instances, so the six callers do not queue for one instance (with a single
    # instance, a tight loop of callers starves the others: see the fairness test below).
    pdir = write_plugin_dir(plugins, "a", {"resources": {"max_instances": 8}}, version="0")
    s = start()
    stop = threading.Event()
    failures: list[BaseException] = []
    seen: list[set[str]] = [set() for _ in range(6)]
    calls = [0] * 6

    def caller(i: int) -> None:
        while not stop.is_set():
            try:
                seen[i].add(s.manager.call("a", "version"))
                calls[i] += 1
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(6)]
    for t in threads:
        t.start()
    try:
        for v in range(1, 31):
            mark = s.rec.mark()
            replace_atomic(pdir / "a.wasm", wat_bytes(name="a", version=str(v)))
            s.rec.wait("reload", "a", str(v), after=mark)
        final = {s.manager.call("a", "version")}
        # every caller gets at least one answer from the final version
        wait_until(lambda: all("30" in got for got in seen), WAIT)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert failures == []
    assert final == {"30"}
    assert all(c > 0 for c in calls)
    assert [e.kind for e in s.rec.events if e.plugin == "a"].count("reload") == 30
    assert not [e for e in s.rec.events if e.plugin == "a" and e.kind == "error"]


def test_slow_writer_never_takes_the_old_version_down(plugins: Path, start: Start) -> None:
    """A module written in three flushed chunks, each chunk seen by the watcher on its own:
    partial files fail to load (errors are fine), the old version answers every time, and
    the complete file is loaded in the end."""
    path = write_wasm(plugins, "a", version="1.0.0")
    s = start()
    data = wat_bytes(name="a", version="2.0.0")
    third = len(data) // 3
    chunks = [data[:third], data[third:2 * third], data[2 * third:]]
    mark = s.rec.mark()
    answers: list[Any] = []
    with open(path, "wb") as f:  # truncates in place, like `cp` over an existing file
        for i, chunk in enumerate(chunks):
            batches = s.watcher.batches
            f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
            answers.append(s.manager.call("a", "version"))
            if i < 2:
                # hand-shake: the watcher has applied a batch since this chunk landed
                assert s.watcher.wait_for_batch(batches, WAIT)
                answers.append(s.manager.call("a", "version"))
    s.rec.wait("reload", "a", "2.0.0", after=mark)
    assert set(answers) == {"1.0.0"}
    assert s.manager.call("a", "version") == "2.0.0"
    kinds = [e.kind for e in s.rec.since(mark, "a")]
    # partial files may be reported as errors; the only version ever swapped in is 2.0.0
    assert set(kinds) <= {"error", "reload"}
    assert {e.detail for e in s.rec.since(mark, "a") if e.kind == "reload"} == {"2.0.0"}


# -- bugs -----------------------------------------------------------------------------------


def test_relative_plugin_dir_reloads_changed_module(tmp_path: Path, manager: Manager,
                                                    engine: WasmEngine,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rel").mkdir()
    write_wasm(tmp_path / "rel", "a")
    monkeypatch.chdir(tmp_path)
    rec = Recorder(manager)
    loader = Loader("rel", manager, engine=engine)  # the documented form: Loader("plugins/", ...)
    try:
        loader.load_all()
        watcher = loader.watch_dir(debounce_ms=DEBOUNCE_MS)
        batches = watcher.batches
        replace_atomic(tmp_path / "rel" / "a.wasm", wat_bytes(name="a", version="2.0.0"))
        assert watcher.wait_for_batch(batches, WAIT)  # the batch holding the change
        assert [e.kind for e in rec.events] == ["load", "reload"]
        assert manager.call("a", "version") == "2.0.0"
    finally:
        loader.close()


def test_plugin_writing_data_into_its_dir_is_not_restarted(plugins: Path,
                                                           start: Start) -> None:
    write_grpc_plugin(plugins, "g")
    s = start()
    pid = s.manager.call("g", "pid")
    mark = s.rec.mark()
    written = s.manager.call("g", "touch", {"file": "state.db", "text": "rows"})
    assert Path(written) == plugins / "g" / "state.db"
    s.barrier()
    assert [e.kind for e in s.rec.since(mark, "g")] == []
    assert s.manager.call("g", "pid") == pid



def test_single_instance_calls_are_served_fairly_under_load(
        plugins: Path, make_loader: Callable[..., Loader], manager: Manager) -> None:
    """Six threads call one single-instance plugin in a loop until 3000 calls were made in
    all. Served in any roughly fair order, each gets ~500; the assertion only asks for 10%
    of that. (Found by the reload load test: one caller waited 30 s, then PluginTimeout.)"""
    write_wasm(plugins, "a")
    loader = make_loader()
    loader.load_all()
    total = 3000
    counts = [0] * 6
    timeouts: list[PlughostError] = []
    done = threading.Event()
    lock = threading.Lock()
    start_line = threading.Barrier(6)

    def caller(i: int) -> None:
        start_line.wait()
        while not done.is_set():
            try:
                manager.call("a", "version", timeout=5)
            except PlughostError as exc:
                timeouts.append(exc)
                continue
            with lock:
                counts[i] += 1
                if sum(counts) >= total:
                    done.set()

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(6)]
    for t in threads:
        t.start()
    try:
        assert done.wait(60)
    finally:
        done.set()
        for t in threads:
            t.join(10)
        loader.close()
    assert timeouts == []
    assert min(counts) >= total // 6 // 10, counts


def test_one_broken_version_is_one_error_event(plugins: Path, start: Start) -> None:
    write_wasm(plugins, "a")
    s = start()
    mark = s.rec.mark()
    replace_atomic(plugins / "a.wasm", b"not a module")  # one rename: one change, one batch
    s.rec.wait("error", "a", after=mark)
    s.barrier()
    assert [e.kind for e in s.rec.since(mark, "a")] == ["error"]


def test_watcher_survives_the_plugin_dir_being_replaced(plugins: Path, start: Start) -> None:
    write_wasm(plugins, "a")
    s = start()
    batches = s.watcher.batches
    shutil.rmtree(plugins)
    assert s.watcher.wait_for_batch(batches, WAIT)  # the removal was seen
    assert s.watcher.running
    mark = s.rec.mark()
    plugins.mkdir()
    replace_atomic(plugins / "b.wasm", wat_bytes(name="b"))
    s.rec.wait("load", "b", after=mark, timeout=5.0)  # normally well under 1 s


def test_broken_manifest_in_a_dir_named_differently_keeps_serving(
        plugins: Path, manager: Manager, engine: WasmEngine) -> None:
    """A plugin dir `tk-plugin/` whose manifest says `name: tk`: breaking the manifest must
    not make the watcher take `tk` for removed (the broken file cannot say its name)."""
    pdir = write_plugin_dir(plugins, "tk-plugin", {"name": "tk", "wasm": "tk-plugin.wasm"})
    (pdir / "tk-plugin.wasm").write_bytes(wat_bytes(name="tk"))
    loader = Loader(plugins, manager, engine=engine)
    assert loader.load_all() == (1, [])
    watcher = loader.watch_dir(debounce_ms=50)
    try:
        before = watcher.batches
        (pdir / "plugin.yaml").write_text("name: [broken\n")
        assert watcher.wait_for_batch(before, 20.0)
        assert manager.call("tk", "count") == 1  # still the serving version
        [d] = loader.discovered_plugins()
        assert d.name == "tk" and isinstance(d.error, ManifestError)
    finally:
        loader.stop_watch()
