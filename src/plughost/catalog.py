"""What the plugins add to the application's pages: widgets, menu items, template
overrides and error codes, as GoatFlow orders and names them (docs/embedding.md,
"Widgets, menus, templates, error codes").

plughost renders none of these itself (the admin page's dashboard aside): the application
asks the catalog and renders them its own way. Everything is read from the registry at the
time of asking, so a reload or an unload is seen at once.

- Widgets and menu items are sorted by `order`, then plugin name, then id; only enabled
  plugins contribute.
- Error codes are namespaced `<plugin>:<code>`.
- A template override is the registration's `templates` entry with `override: true`; its
  handler is `template_` plus the template name with every character outside
  `[A-Za-z0-9]` replaced by `_`. It is called with `{"template": <name>, "data": {...}}`
  and must answer `{"html": "..."}`; any failure falls back to the application's own
  template (None) and is logged in the plugin's log. When two plugins override one
  template, the plugin whose name sorts first wins (GoatFlow: whichever registered last).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import PlughostError
from .registration import MenuItem, Registration, Widget

if TYPE_CHECKING:
    from .manager import Manager

#: GoatFlow's widget location when a request names none.
DEFAULT_WIDGET_LOCATION = "dashboard"
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")


@dataclass(frozen=True)
class WidgetEntry:
    """One plugin's widget, where the application shows it."""

    plugin: str
    widget: Widget

    def as_goatflow(self) -> dict[str, Any]:
        """GoatFlow's widget list entry (`refresh_sec` only when set)."""
        w = self.widget
        out: dict[str, Any] = {"id": w.id, "title": w.title, "plugin_name": self.plugin,
                               "size": w.size, "refreshable": w.refreshable}
        if w.refresh_sec:
            out["refresh_sec"] = w.refresh_sec
        return out


@dataclass(frozen=True)
class MenuEntry:
    """A menu item with its plugin; `text` is the label translated (the label itself
    when it is no known i18n key)."""

    plugin: str
    item: MenuItem
    text: str
    children: tuple[MenuEntry, ...] = field(default=())

    def as_json(self) -> dict[str, Any]:
        i = self.item
        return {"plugin": self.plugin, "id": i.id, "label": i.label, "text": self.text,
                "icon": i.icon, "path": i.path, "location": i.location, "parent": i.parent,
                "order": i.order, "children": [c.as_json() for c in self.children]}


@dataclass(frozen=True)
class ErrorCodeEntry:
    key: str  # "<plugin>:<code>"
    plugin: str
    code: str
    message: str
    http_status: int


@dataclass(frozen=True)
class TemplateOverride:
    name: str
    plugin: str
    handler: str


def _registrations(manager: Manager, *, enabled: bool) -> Iterator[tuple[str, Registration]]:
    """Each registered plugin's name and registration, by name (only the enabled ones, or
    every one); a plugin unloaded meanwhile is skipped."""
    infos = manager.list() if enabled else None
    names = [i.name for i in infos if i.enabled] if infos is not None else manager.names()
    for name in names:
        plugin = manager.get(name)
        if plugin is not None:
            yield name, plugin.registration


def widgets(manager: Manager, location: str | None = DEFAULT_WIDGET_LOCATION
            ) -> list[WidgetEntry]:
    """The widgets of the enabled plugins at `location` (None: everywhere), in order."""
    out = [WidgetEntry(name, w) for name, reg in _registrations(manager, enabled=True)
           for w in reg.widgets
           if location is None or (w.location or DEFAULT_WIDGET_LOCATION) == location]
    return sorted(out, key=lambda e: (e.widget.order, e.plugin, e.widget.id))


def widget(manager: Manager, plugin: str, widget_id: str) -> Widget | None:
    """Plugin `plugin`'s widget `widget_id` (None: no such plugin loaded, or no such id)."""
    p = manager.get(plugin)
    if p is None:
        return None
    return next((w for w in p.registration.widgets if w.id == widget_id), None)


def _menu(manager: Manager, plugin: str, item: MenuItem, lang: str) -> MenuEntry:
    text = manager.host.translations.translate(item.label, lang) if item.label else ""
    kids = sorted(item.children, key=lambda c: (c.order, c.id))
    return MenuEntry(plugin, item, text, tuple(_menu(manager, plugin, c, lang) for c in kids))


def menu_items(manager: Manager, location: str | None = None, lang: str = "en"
               ) -> list[MenuEntry]:
    """The enabled plugins' menu items (at `location`, if given), labels in `lang`."""
    out = [_menu(manager, name, item, lang) for name, reg in _registrations(manager, enabled=True)
           for item in reg.menu_items if location is None or item.location == location]
    return sorted(out, key=lambda e: (e.item.order, e.plugin, e.item.id))


def error_codes(manager: Manager) -> dict[str, ErrorCodeEntry]:
    """Every registered plugin's error codes, by `<plugin>:<code>`."""
    return {f"{name}:{e.code}": ErrorCodeEntry(f"{name}:{e.code}", name, e.code, e.message,
                                               e.http_status)
            for name, reg in _registrations(manager, enabled=False) for e in reg.error_codes}


def template_handler(name: str) -> str:
    """GoatFlow's handler name for an override of template `name`."""
    return "template_" + _NOT_ALNUM.sub("_", name)


def template_overrides(manager: Manager) -> dict[str, TemplateOverride]:
    """Template name -> the override that wins (see the module docstring)."""
    out: dict[str, TemplateOverride] = {}
    for name, reg in _registrations(manager, enabled=False):  # by name: the first keeps it
        for t in reg.templates:
            if t.override and t.name not in out:
                out[t.name] = TemplateOverride(t.name, name, template_handler(t.name))
    return out


def render_template(manager: Manager, name: str, data: dict[str, Any]) -> str | None:
    """A plugin's HTML for template `name`, or None: render the application's own (no
    override, or the override failed; the plugin's log says why)."""
    override = template_overrides(manager).get(name)
    if override is None:
        return None
    log = manager.log_for(override.plugin)
    try:
        result = manager.call(override.plugin, override.handler,
                              {"template": name, "data": data})
    except PlughostError as exc:
        log.warning(f"template override {name!r} failed, the host's is used: {exc}")
        return None
    html = result.get("html") if isinstance(result, dict) else None
    if not isinstance(html, str):
        log.warning(f"template override {name!r} answered no html, the host's is used: "
                    f"{json.dumps(result)[:200]}")
        return None
    return html
