"""What the two runtimes share, written once: identity, log, the call-deadline rule and
the host context a plugin has before it has registered."""

from __future__ import annotations

from ..deadline import Deadline, within
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

    def _deadline(self, deadline: Deadline | None) -> Deadline:
        """The call's deadline (from the manager), never later than call_timeout_ms from
        now; a direct call without one gets call_timeout_ms."""
        return within(deadline, self.call_timeout) or Deadline.after(self.call_timeout)
