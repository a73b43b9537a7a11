"""reconcile.plan: what a batch of changes means, as a plain function of two scans (no
watcher thread, no files needed for single-file plugins). The watcher end to end is in
test_watch.py; Loader.sync is exercised there and below."""

from __future__ import annotations

from pathlib import Path

from plughost import Loader, Manager
from plughost.discovery import Found
from plughost.errors import ManifestError
from plughost.reconcile import Action, plan
from plughost.runtimes.wasm import WasmEngine

from .conftest import write_plugin_dir, write_wasm

ROOT = Path("/plugins")


def wasm(name: str, error: ManifestError | None = None, where: Path = ROOT) -> Found:
    return Found(name, where / f"{name}.wasm", "wasm", error=error)


def kinds(actions: list[Action]) -> list[tuple[str, str]]:
    return [(a.kind, a.name) for a in actions]


def test_appeared_disappeared_and_changed() -> None:
    before = {"a": wasm("a"), "b": wasm("b"), "c": wasm("c")}
    after = {"b": wasm("b"), "c": wasm("c"), "d": wasm("d")}
    changed = {ROOT / "c.wasm", ROOT / "a.wasm", ROOT / "d.wasm"}
    actions = plan(before, after, changed, lazy=False, loaded=lambda n: n == "c")
    assert kinds(actions) == [("remove", "a"), ("load", "d"), ("reload", "c")]


def test_lazy_loads_nothing_but_still_reloads_what_is_loaded() -> None:
    before = {"c": wasm("c"), "e": wasm("e")}
    after = {"c": wasm("c"), "e": wasm("e"), "d": wasm("d")}
    changed = {ROOT / "c.wasm", ROOT / "e.wasm", ROOT / "d.wasm"}
    actions = plan(before, after, changed, lazy=True, loaded=lambda n: n == "c")
    assert kinds(actions) == [("reload", "c")]


def test_unrelated_files_change_nothing_and_a_sidecar_counts() -> None:
    before = after = {"a": wasm("a")}
    assert plan(before, after, {ROOT / "notes.txt"}, lazy=False, loaded=lambda n: True) == []
    assert kinds(plan(before, after, {ROOT / "a.wasm.sig"}, lazy=False,
                      loaded=lambda n: True)) == [("reload", "a")]


def test_a_move_or_a_change_of_health_counts_even_without_its_files_in_the_batch() -> None:
    moved = plan({"a": wasm("a")}, {"a": wasm("a", where=ROOT / "sub")}, set(), lazy=False,
                 loaded=lambda n: True)
    assert kinds(moved) == [("reload", "a")]
    broken = ManifestError("bad", plugin="a")
    went_bad = plan({"a": wasm("a")}, {"a": wasm("a", broken)}, set(), lazy=False,
                    loaded=lambda n: True)
    assert went_bad == [Action("report", "a", broken)]  # the old version keeps serving
    healed = plan({"a": wasm("a", broken)}, {"a": wasm("a")}, set(), lazy=False,
                  loaded=lambda n: False)
    assert kinds(healed) == [("load", "a")]
    new_and_broken = plan({}, {"x": wasm("x", broken)}, set(), lazy=True,
                          loaded=lambda n: False)
    assert new_and_broken == [Action("report", "x", broken)]


def test_loader_sync_applies_a_batch_without_a_watcher(plugins: Path, manager: Manager,
                                                       engine: WasmEngine) -> None:
    write_wasm(plugins, "keep")
    write_wasm(plugins, "gone")
    loader = Loader(plugins, manager, engine=engine)
    assert loader.load_all() == (2, [])
    (plugins / "gone.wasm").unlink()
    write_plugin_dir(plugins, "new")
    (plugins / "broken").mkdir()
    (plugins / "broken" / "plugin.yaml").write_text("name: [unclosed\n")
    actions = loader.sync({plugins / "gone.wasm", plugins / "new" / "plugin.yaml",
                           plugins / "broken" / "plugin.yaml"})
    assert kinds(actions) == [("remove", "gone"), ("report", "broken"), ("load", "new")]
    assert sorted(manager.names()) == ["keep", "new"]
    assert any("change not applied" in r.message for r in manager.log_for("broken").records())
    loader.close()
