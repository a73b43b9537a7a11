"""What the two runtimes share, written once: identity, log, the call-deadline rule and
the host context a plugin has before it has registered."""

from __future__ import annotations

import math

from ..host import HostContext
from ..logs import PluginLog
from ..plugin import PluginSource
from ..registration import Registration


class PluginBase:
    def __init__(self, source: PluginSource, log: PluginLog) -> None:
        self._source = source
        self._log = log
        self._registration: Registration | None = None
        self.call_timeout = source.manifest.resources.call_timeout_ms / 1000
        # Until the plugin has registered, its host calls get no permissions.
        self.host_context = HostContext(plugin=source.name, permissions=frozenset(), log=log)

    @property
    def name(self) -> str:
        return self._source.name

    @property
    def source(self) -> PluginSource:
        return self._source

    @property
    def registration(self) -> Registration:
        assert self._registration is not None, "not registered yet"
        return self._registration

    @property
    def log(self) -> PluginLog:
        return self._log

    def _limit(self, timeout: float | None) -> float:
        """A caller's timeout can shorten the manifest's call_timeout_ms, never extend it."""
        return self.call_timeout if timeout is None else min(timeout, self.call_timeout)


def deadline_text(limit: float) -> str:
    """The deadline a timed-out call had, in whole ms, rounded up: the time left when the
    plugin was entered is a hair under what the caller asked for."""
    return f"{math.ceil(round(limit * 1000, 3))} ms"
