"""What the two runtimes share, written once: identity, log, the call-deadline rule and
the host context a plugin has before it has registered."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ..deadline import Deadline
from ..host import HostContext, PluginCaller, context_for
from ..leftovers import remove
from ..logs import PluginLog
from ..plugin import PluginSource
from ..registration import Registration


class PluginBase:
    def __init__(self, source: PluginSource, log: PluginLog,
                 caller: PluginCaller | None = None) -> None:
        self._source = source
        self._log = log
        self._caller = caller  # where this plugin's plugin_calls go
        self._registration: Registration | None = None
        self.call_timeout = source.manifest.resources.call_timeout_ms / 1000
        # Until the plugin has registered, its host calls get no permissions.
        self.host_context = HostContext(plugin=source.name, log=log, caller=caller)

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

    def _context(self, registration: Registration) -> HostContext:
        """The host's view of this plugin once it has registered (its rate windows carry
        over within one load)."""
        return context_for(self._source, self._log, registration, self._caller,
                           self.host_context.rates)

    def refresh_grants(self) -> None:
        """Apply the operator's current policy now (`Manager.set_policy`)."""
        if self._registration is not None:
            self.host_context = self._context(self._registration)

    def _release_private_copy(self) -> None:
        """A version owns its private copy; call last in `shutdown()`."""
        release_private_copy(self._source)

    def _deadline(self, deadline: Deadline | None) -> Deadline:
        """The call's deadline as the manager made it (already capped there); a direct
        call without one gets call_timeout_ms."""
        return deadline if deadline is not None else Deadline.after(self.call_timeout)


def release_private_copy(source: PluginSource) -> None:
    """Remove a version's private copy (verified copy or unpacked package), if it has one."""
    if source.private_dir is not None:
        remove(source.private_dir)


_P = TypeVar("_P")


def owning_private_copy(source: PluginSource, start: Callable[[], _P]) -> _P:
    """Run a runtime's start; if it fails, the version's private copy goes with it (on
    success the started plugin owns it until its shutdown)."""
    try:
        return start()
    except BaseException:
        release_private_copy(source)
        raise
