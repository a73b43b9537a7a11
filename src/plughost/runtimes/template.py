"""The template runtime: a plugin with templates and assets and no code (GoatFlow's
`runtime: template`, also what a theme is).

Nothing runs. The registration is made from plugin.yaml (name, version, the descriptive
keys) plus the template files found under the plugin's `templates/` folder, so a listing
shows what the plugin brings; every call is refused with a `PluginCallError` that says the
plugin has no code. It is the third runtime, added the way architecture.md says one is:
this module and one registration line in `Loader.__init__`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..deadline import Deadline
from ..errors import PluginCallError
from ..lifecycle import PluginState
from ..logs import PluginLog
from ..plugin import Kind, PluginSource, Staged, StartContext
from ..registration import parse_registration
from .base import PluginBase, owning_private_copy

__all__ = ["TemplatePlugin", "TemplateRuntime"]

#: where a template plugin keeps its templates, and how many are listed at most
TEMPLATE_DIR = "templates"
MAX_TEMPLATES = 1000


def _templates(plugin_dir: Path) -> list[dict[str, object]]:
    root = plugin_dir / TEMPLATE_DIR
    if not root.is_dir():
        return []
    out: list[dict[str, object]] = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
            rel = path.relative_to(root).as_posix()
            out.append({"name": rel, "path": f"{TEMPLATE_DIR}/{rel}", "override": False})
            if len(out) >= MAX_TEMPLATES:
                break
    return out


class TemplatePlugin(PluginBase):
    """A loaded template plugin: a registration and files, nothing to call."""

    kind: Kind = "template"

    def __init__(self, source: PluginSource, log: PluginLog) -> None:
        super().__init__(source, log)
        m = source.manifest
        raw = json.dumps({"name": m.name, "version": m.version, "description": m.description,
                          "author": m.author, "license": m.license, "homepage": m.homepage,
                          "icon": m.icon, "templates": _templates(source.plugin_dir)})
        self._registration = parse_registration(raw.encode(), expected_name=source.name,
                                                path=str(source.path))
        self.host_context = self._context(self._registration)
        self._closed = False

    @property
    def state(self) -> PluginState:
        return "stopped" if self._closed else "running"

    def call(self, function: str, args: bytes, *, deadline: Deadline | None = None) -> bytes:
        raise PluginCallError("is a template plugin: it has templates and no code to call",
                              plugin=self.name, function=function)

    def shutdown(self) -> None:
        self._closed = True
        self._release_private_copy()


class TemplateRuntime:
    """Starts template plugins (nothing to start: the files are the plugin)."""

    kind = "template"

    def start(self, staged: Staged, context: StartContext) -> TemplatePlugin:
        return owning_private_copy(staged.source,
                                   lambda: TemplatePlugin(staged.source, context.log))

    def close(self) -> None:
        pass
