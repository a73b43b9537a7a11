"""One row per plugin, for every listing: `plughost list`, the JSON API and the admin page.

A row joins what the loader found on disk with what the manager has registered, so a
plugin that is discovered but not loaded, broken, or registered by other means (not from
this directory) is listed too. The state words are `lifecycle.ListedState`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .lifecycle import ListedState
from .routing import method_of

if TYPE_CHECKING:
    from .loader import Loader
    from .manager import Manager, PluginInfo


def plugin_rows(manager: Manager, loader: Loader, *,
                last_error: Callable[[str], str | None] = lambda name: None,
                route_root: str = "") -> list[dict[str, Any]]:
    """Every plugin, sorted by name. `last_error(name)` supplies the error shown for a
    plugin that is not broken (e.g. its last failed call); `route_root` prefixes the
    `url` of each of its routes (the app's mount path)."""
    rows: list[dict[str, Any]] = []
    listed: set[str] = set()
    infos = {i.name: i for i in manager.list()}
    for d in loader.discovered_plugins():
        info = infos.get(d.name) if d.loaded else None
        state: ListedState = "error" if d.error else "discovered"
        row: dict[str, Any] = {
            "name": d.name, "type": d.type, "path": str(d.path),
            "version": d.manifest.version if d.manifest and d.manifest.version else "",
            "description": d.manifest.description if d.manifest else "",
            "state": state, "loaded_at": None, "enabled": None, "inflight": 0, "routes": [],
            "grants": None, "unsafe": [],
            "error": str(d.error) if d.error else last_error(d.name),
            "warnings": list(d.warnings)}
        if info is not None:
            _fill_loaded(manager, row, info, route_root)
            listed.add(d.name)
        rows.append(row)
    for name, info in infos.items():  # registered by other means (not from this directory)
        if name not in listed:
            row = {"name": name, "type": info.kind, "path": info.path, "version": "",
                   "description": "", "error": last_error(name), "warnings": []}
            _fill_loaded(manager, row, info, route_root)
            rows.append(row)
    rows.sort(key=lambda r: (r["name"], r["state"] == "error"))
    return rows


def _fill_loaded(manager: Manager, row: dict[str, Any], info: PluginInfo, root: str) -> None:
    name = row["name"]
    plugin = manager.get(name)
    if plugin is None:  # unloaded a moment ago
        row.update(state="discovered", loaded_at=None, enabled=None, inflight=0, routes=[],
                   grants=None, unsafe=[])
        return
    reg = plugin.registration
    grants = manager.grants(name)
    row.update(grants=grants.as_list() if grants is not None else None,
               unsafe=grants.unsafe() if grants is not None else [],
               blocked=bool(grants is not None and grants.blocked))
    row.update(state=info.state, version=info.version, loaded_at=info.loaded_at,
               enabled=info.enabled, inflight=info.inflight,
               description=reg.description or row["description"],
               routes=_routes(manager, name, root))


def _routes(manager: Manager, name: str, root: str) -> list[dict[str, Any]]:
    """The registration's route specs as GoatFlow lists them, each with where plughost
    serves it: `url` (its declared path), `plugin_url` (under `/plugins/<name>/`) and
    `mounted` (false: skipped, e.g. for an unknown middleware; the log says why)."""
    plugin = manager.get(name)
    if plugin is None:
        return []
    mounted = {(r.method, r.path) for r in manager.routes.routes_of(name)}
    out = []
    for r in plugin.registration.routes:
        method = method_of(r.method)
        out.append({"method": method, "path": r.path, "handler": r.handler,
                    "middleware": list(r.middleware), "description": r.description,
                    "url": f"{root}{r.path}",
                    "plugin_url": f"{root}/plugins/{name}/{r.path.lstrip('/')}",
                    "mounted": (method, r.path) in mounted})
    return out


def grants_text(row: dict[str, Any]) -> str:
    """A row's grants in one line, for a terminal: `db:read cache:readwrite
    http[api.example.com]`, unsafe ones flagged with `!`."""
    if row.get("grants") is None:
        return ""
    if row.get("blocked"):
        return "BLOCKED by policy"
    parts = []
    for g in row["grants"]:
        text = str(g["type"]) + (f":{g['access']}" if g.get("access") else "")
        if g.get("scope"):
            text += "[" + ",".join(map(str, g["scope"])) + "]"
        parts.append(text)
    flags = [f"! {u}" for u in row.get("unsafe") or []]
    return " ".join(parts) + ("  " + "; ".join(flags) if flags else "") if parts or flags \
        else "(none)"


#: States a listing counts as broken (`plughost list` exits 1 on any).
BROKEN: frozenset[ListedState] = frozenset({"error", "failed"})
