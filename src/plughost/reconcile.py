"""What a batch of file changes means for the plugins: a plain function of before and after.

`plan(before, after, changed, ...)` compares two discovery scans of the same tree and the
paths that changed in between, and says what to do, plugin by plugin:

- a plugin that disappeared is removed (unloaded and forgotten);
- one that appeared is loaded (unless the loader is lazy), or its discovery error reported;
- one whose own files changed, or that moved, or that became broken or whole again, is
  reloaded when loaded (through the atomic path: a broken new version leaves the old one
  serving) or loaded when not, or its discovery error is reported.

Other files in a plugin directory (data a plugin writes, say) change nothing. `Loader.sync`
carries the plan out; the watcher only produces the batches. Renames, moved-in directories
and new subdirectories are combinations of the three cases.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from .discovery import Found
from .errors import PlughostError, PluginLoadError
from .manifest import MANIFEST_FILE
from .signing import DIR_SIGNATURE, sidecar

logger = logging.getLogger(__name__)

ActionKind = Literal["remove", "load", "reload", "report"]


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    name: str
    error: PlughostError | None = None  # for "report": why it cannot load


def plan(before: Mapping[str, Found], after: Mapping[str, Found], changed: set[Path], *,
         lazy: bool, loaded: Callable[[str], bool]) -> list[Action]:
    """The actions for one batch, removals first, each group in name order."""
    actions = [Action("remove", name) for name in sorted(before.keys() - after.keys())]
    for name in sorted(after.keys() - before.keys()):
        error = after[name].error
        if error is not None:
            actions.append(Action("report", name, error))
        elif not lazy:
            actions.append(Action("load", name))
    for name in sorted(before.keys() & after.keys()):
        old, new = before[name], after[name]
        if not (touches(changed, old) or touches(changed, new) or old.path != new.path
                or (old.error is None) != (new.error is None)):
            continue
        if new.error is not None:  # the running version (if any) keeps serving
            actions.append(Action("report", name, new.error))
        elif loaded(name):
            actions.append(Action("reload", name))
        elif not lazy:
            actions.append(Action("load", name))
    return actions


def touches(changed: set[Path], found: Found) -> bool:
    """Did a file that defines this plugin change: its module/package file and sidecar, or
    in a plugin dir the manifest, the module/executable and the signature?"""
    root = found.path.absolute()
    if root.suffix in (".wasm", ".zip") and not root.is_dir():
        owned = {root, sidecar(root)}
    else:
        owned = {root, root / MANIFEST_FILE, root / DIR_SIGNATURE}
        if found.manifest is not None:
            owned.add(found.manifest.entry.absolute())
    return any(p.absolute() in owned for p in changed)


class Target(Protocol):
    """What carrying out a plan needs (the `Loader` implements it)."""

    def forget(self, name: str) -> None: ...

    def ensure_loaded(self, name: str) -> None: ...

    def reload(self, name: str) -> None: ...

    def not_applied(self, name: str, exc: PlughostError, *, emit: bool) -> None: ...


def carry_out(action: Action, target: Target) -> None:
    """Do one action of a plan. Its failure is that plugin's (logged, and evented unless
    the load path already published it); the rest of the batch goes on."""
    name = action.name
    if action.kind == "report":
        assert action.error is not None
        target.not_applied(name, action.error, emit=True)
        return
    fn = {"remove": target.forget, "load": target.ensure_loaded,
          "reload": target.reload}[action.kind]
    try:
        fn(name)
        logger.info("sync: %s %s", action.kind, name)
    except PlughostError as exc:  # the load path already published its error event
        target.not_applied(name, exc, emit=False)
    except Exception as exc:  # a bug of ours: this plugin's error; the batch goes on
        logger.exception("sync: %s %s failed", action.kind, name)
        target.not_applied(name, PluginLoadError(f"unexpected error: {exc!r}", plugin=name),
                            emit=True)
