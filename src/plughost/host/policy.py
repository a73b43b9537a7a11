"""Policies: what a plugin declares, what the operator says, and the grants that result;
and the per-plugin rate limits that go with them.

Declared (GoatFlow's rule, per load): the manifest's `resources.permissions` plus its flat
shorthands; a plugin whose manifest declares nothing (a bare module, or a GoatFlow plugin
dir whose plugin.yaml has no permissions) gets its registration's `resources.permissions`
(plus its legacy flat list). Declaring anything replaces the default grant entirely (db
read, cache and file readwrite), which is what a plugin that declares nothing gets.
`entity` `hard_delete` is never granted by a declaration, only by the operator.

The operator's policy for a plugin (a `Manager(policies=...)` / `Loader(policies=...)`
argument, or `<data dir>/policies.yaml`; the argument wins, as GoatFlow's in-memory policy
wins over its stored one) then replaces (`permissions`), widens (`grant`) or narrows
(`revoke`) the declared set, blocks the plugin (`status: blocked`) or sets its limits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ManifestError
from ..manifest import Permission
from ..plugin import PluginSource
from ..registration import Registration
from ..yaml_input import load_yaml
from .grants import DEFAULT_PERMISSIONS, Grants, expand_shorthands

logger = logging.getLogger(__name__)

POLICY_FILE = "policies.yaml"

#: GoatFlow's fixed email rate: 10 per minute, whatever the policy says.
EMAIL_PER_MIN = 10


class Policy(BaseModel):
    """The operator's word on one plugin (GoatFlow's `ResourcePolicy` keys, plus `grant`
    and `revoke`). Unset fields leave the declared value alone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["pending_review", "approved", "restricted", "blocked"] = "approved"
    #: replaces the declared entries entirely
    permissions: list[Permission] | None = None
    #: added to them
    grant: list[Permission] = Field(default_factory=list)
    #: removed: an entry here drops the entries of its type (and of its access, if it has
    #: one: revoking `{type: db, access: write}` turns `readwrite` into `read`)
    revoke: list[Permission] = Field(default_factory=list)
    max_db_queries_per_min: int | None = Field(None, ge=0)
    max_http_req_per_min: int | None = Field(None, ge=0)
    max_file_storage_bytes: int | None = Field(None, ge=0)
    # GoatFlow's remaining policy keys, accepted so its policy JSON reads unchanged; the
    # manifest sets these in plughost (GoatFlow does not enforce max_calls_per_second).
    plugin_name: str | None = None
    memory_mb: int | None = None
    call_timeout: str | None = None
    init_timeout: str | None = None
    shutdown_timeout: str | None = None
    max_calls_per_second: int | None = None


class Limits(BaseModel):
    """The effective rate limits and quota (0: unlimited; the file quota 0: 500 MiB)."""

    model_config = ConfigDict(frozen=True)

    max_db_queries_per_min: int = 600
    max_http_req_per_min: int = 60
    max_file_storage_bytes: int = 0


def declared_permissions(source: PluginSource, registration: Registration
                         ) -> list[Permission] | None:
    """What the plugin asks for (module docstring); None when it declares nothing. A
    declaration that expands to no entry (`permissions: [log]`, an `http` shorthand
    without hosts) is a declaration: it asks for nothing, not for the default."""
    m = source.manifest
    r = registration.resources
    if source.has_manifest and (m.resources.permissions or m.permissions):
        entries = [*m.resources.permissions, *expand_shorthands(m.permissions,
                                                                m.allowed_hosts)]
    elif r.permissions or registration.permissions:
        entries = [*r.permissions, *expand_shorthands(registration.permissions, ())]
    else:
        return None
    return [e for e in entries if not (e.type == "entity" and e.access == "hard_delete")]


def _revoked(entry: Permission, revoke: list[Permission]) -> Permission | None:
    for r in revoke:
        if r.type != entry.type:
            continue
        if not r.access or r.access == entry.access:
            return None
        if entry.access == "readwrite" and r.access in ("read", "write"):
            keep = "write" if r.access == "read" else "read"
            entry = Permission(type=entry.type, access=keep, scope=list(entry.scope))
    return entry


def effective(source: PluginSource, registration: Registration,
              policy: Policy | None) -> tuple[Grants, Limits]:
    """The grants and limits a plugin runs with (module docstring)."""
    declared = declared_permissions(source, registration)
    entries = list(DEFAULT_PERMISSIONS) if declared is None else declared
    quota = source.manifest.resources.max_file_storage_bytes or \
        registration.resources.max_file_storage_bytes
    limits = Limits(max_file_storage_bytes=quota)
    blocked = False
    if policy is not None:
        if policy.permissions is not None:
            entries = list(policy.permissions)
        entries = [e for e in (_revoked(e, policy.revoke) for e in entries) if e is not None]
        entries.extend(policy.grant)
        blocked = policy.status == "blocked"
        changes = {k: v for k, v in (
            ("max_db_queries_per_min", policy.max_db_queries_per_min),
            ("max_http_req_per_min", policy.max_http_req_per_min),
            ("max_file_storage_bytes", policy.max_file_storage_bytes)) if v is not None}
        limits = limits.model_copy(update=changes)
    return Grants(source.name, tuple(entries), blocked), limits


class OperatorPolicies(Protocol):
    """Where the policies an operator edits through the API are kept (adminstate.py)."""

    def policy(self, name: str) -> Policy | None: ...

    def set_policy(self, name: str, policy: Policy | None) -> None: ...


class PolicyBook:
    """The operator's policies, in layers: the application's (`policies`, `set`) over the
    ones edited through the API (`operator`, `save`), over those in a file that is re-read
    when it changes (so an edit applies at the plugin's next load or reload)."""

    def __init__(self, policies: Mapping[str, Policy | Mapping[str, Any]] | None = None,
                 path: Path | None = None, operator: OperatorPolicies | None = None) -> None:
        self.path = path
        self.operator = operator
        self._given = {name: _policy(name, p, "the policies argument")
                       for name, p in (policies or {}).items()}
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._file: dict[str, Any] = {}

    def set(self, name: str, policy: Policy | Mapping[str, Any] | None) -> None:
        with self._lock:
            if policy is None:
                self._given.pop(name, None)
            else:
                self._given[name] = _policy(name, policy, "the policies argument")

    def save(self, name: str, policy: Policy | Mapping[str, Any] | None) -> None:
        """Keep `name`'s policy where the operator's edits are kept (None: drop it)."""
        if self.operator is None:
            raise ValueError("no store for the operator's policies")
        self.operator.set_policy(name, None if policy is None else
                                 _policy(name, policy, "the policy"))

    def get(self, name: str) -> Policy | None:
        """`name`'s policy; a broken policy file or entry is `ManifestError` naming the
        file (the plugin's load fails: ignoring it could grant what the operator took
        away), a broken stored one `AdminStateError`."""
        with self._lock:
            if name in self._given:
                return self._given[name]
        saved = self.operator.policy(name) if self.operator is not None else None
        if saved is not None:
            return saved
        with self._lock:
            raw = self._read().get(name)
        return None if raw is None else _policy(name, raw, str(self.path))

    def _read(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._file = None, {}
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                data = load_yaml(self.path.read_text("utf-8"), plugin=None, path=self.path)
            except Exception as exc:
                raise ManifestError(f"the policy file cannot be read: {exc}",
                                    path=self.path) from None
            if data is None:
                data = {}
            if not isinstance(data, dict):
                raise ManifestError("the policy file must map plugin names to policies",
                                    path=self.path)
            self._stamp, self._file = stamp, data
        return self._file


def _policy(name: str, raw: Policy | Mapping[str, Any], where: str) -> Policy:
    if isinstance(raw, Policy):
        return raw
    try:
        return Policy.model_validate(dict(raw) if isinstance(raw, Mapping) else raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ManifestError(f"policy for {name!r} in {where}: {loc}: {first['msg']}",
                            plugin=name) from None


class Window:
    """A sliding one-minute window: at most `limit` events in the last `period` seconds
    (GoatFlow's limiter; a limit of 0 is unlimited)."""

    def __init__(self, period: float = 60.0) -> None:
        self.period = period
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def admit(self, limit: int, count: int = 1) -> bool:
        """Take `count` events (all or none) if the window has room for them."""
        if limit <= 0:
            return True
        now = time.monotonic()
        with self._lock:
            while self._times and now - self._times[0] >= self.period:
                self._times.popleft()
            if len(self._times) + count > limit:
                return False
            self._times.extend([now] * count)
            return True


class RateLimits:
    """One plugin's windows, per load (a reload starts them afresh, as in GoatFlow)."""

    def __init__(self) -> None:
        self.db = Window()
        self.http = Window()
        self.email = Window()
