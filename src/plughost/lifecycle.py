"""The words of a plugin's life, in one place: its states, the events it goes through, and
the state shown for it in listings (the CLI, the JSON API and the admin page use the same).

Everything that emits, filters or shows these imports them from here, so a new kind or
state is added once and checked by mypy everywhere it is used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, get_args

#: What a loaded plugin is doing. A wasm plugin is `running` until it is shut down; a
#: gRPC plugin goes through `starting`, `restarting` after a crash, and `failed` when its
#: circuit opens (until an explicit reload).
PluginState = Literal["starting", "running", "restarting", "failed", "stopped"]

#: The state in a listing: a loaded plugin's own state, or `discovered` (found, not
#: loaded) or `error` (found, but broken or its last load failed).
ListedState = Literal["starting", "running", "restarting", "failed", "stopped", "discovered",
                      "error"]

#: Lifecycle events (`Manager.add_listener`):
#: - load / unload / reload / enable / disable: the registry changed;
#: - error: a load or reload failed (detail: why);
#: - crash / restart / failed: a gRPC plugin's process died, came back, or gave up;
#: - call_error: a call failed (detail: the error type and reason);
#: - plugin_event: a plugin's `publish_event` (channel, event_type; detail: its data);
#: - job_run / job_error: a scheduled job's run ended well or failed (detail: job and how);
#: - health: the health checker's verdict changed, or it restarted or gave up on a plugin.
EventKind = Literal["load", "unload", "reload", "enable", "disable", "error", "crash",
                    "restart", "failed", "call_error", "plugin_event", "job_run",
                    "job_error", "health"]
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)

#: The kinds that are a plugin's latest error (the admin page's "last error" column).
ERROR_KINDS: frozenset[EventKind] = frozenset({"error", "crash", "failed", "call_error",
                                              "job_error"})


@dataclass(frozen=True)
class Event:
    """A lifecycle change (`Manager.add_listener`); its kinds are `EventKind`'s."""

    kind: EventKind
    plugin: str
    time: float = field(default_factory=time.time)
    detail: str = ""
    #: a `plugin_event`'s channel and type (its data is `detail`)
    channel: str = ""
    event_type: str = ""

