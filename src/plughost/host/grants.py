"""What a plugin may do: GoatFlow's permission entries `{type, access, scope}`, and every
scope check, in one place.

A grant is a list of entries. For a check that wants `(type, access)`:

- an entry *grants* when its type matches and its access does: a wanted access of ""
  (http, email, plugin_call) is granted by any entry of the type; otherwise the same
  string, or `readwrite` for `read` and `write`. So an entry without `access` grants no
  read or write (GoatFlow's rule, kept: a `{type: db}` entry gives no database access);
- the scope is the union of the granting entries' scopes, and unrestricted as soon as one
  granting entry has no scope.

The scope checks are GoatFlow's: db table wildcards, http host patterns, email recipients,
config key patterns with the sensitive-key rule, plugin_call targets, and exact values for
an application's own types. The error texts are GoatFlow's too (without the `plugin "x":`
prefix, which `wire_text` adds), because its plugins and its operators read them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import HostCallError, PermissionDenied
from ..manifest import Permission

__all__ = ["DEFAULT_PERMISSIONS", "SENSITIVE_CONFIG", "Grants", "Scope", "expand_shorthands",
           "is_sensitive_key", "wildcard_match", "wire_text"]

#: GoatFlow's default grant, for a plugin that declares nothing: read its database, use
#: its cache and its file storage.
DEFAULT_PERMISSIONS: tuple[Permission, ...] = (
    Permission(type="db", access="read"),
    Permission(type="cache", access="readwrite"),
    Permission(type="file", access="readwrite"),
)

#: Fragments that make a config key sensitive (substring of the lower-cased key). Such a
#: key is readable only through a scope pattern that names it.
SENSITIVE_CONFIG: tuple[str, ...] = (
    "database.", "db.", "mysql.", "postgres.", "mariadb.", "smtp.", "mail.", "email.",
    "secret", "password", "credential", "token", "key", "private", "auth", "session",
    "cookie", "ldap.", "oauth.", "saml.", "aws.", "gcp.", "azure.", "cloud.")

#: plughost's flat permission names, each the GoatFlow entry it stands for. `http` takes
#: its scope from the manifest's `allowed_hosts`; `log` is no longer needed (logging is
#: open to every plugin) and grants nothing.
_SHORTHANDS: dict[str, tuple[Permission, ...]] = {
    "db.read": (Permission(type="db", access="read"),),
    "db.write": (Permission(type="db", access="write"),),
    "cache": (Permission(type="cache", access="readwrite"),),
    "email": (Permission(type="email"),),
    "config": (Permission(type="config", access="read"),),
    "plugin.call": (Permission(type="plugin_call"),),
    "file": (Permission(type="file", access="readwrite"),),
    "file.read": (Permission(type="file", access="read"),),
    "file.write": (Permission(type="file", access="write"),),
    "log": (),
}
SHORTHANDS: frozenset[str] = frozenset({*_SHORTHANDS, "http"})


def expand_shorthands(names: Iterable[str], allowed_hosts: Iterable[str]) -> list[Permission]:
    """plughost's flat names as GoatFlow entries. `http` is scoped to `allowed_hosts`;
    with none it grants no host (plughost's old meaning, kept: an `http` shorthand alone
    never means "any host")."""
    out: list[Permission] = []
    hosts = list(allowed_hosts)
    for name in names:
        if name == "http":
            if hosts:
                out.append(Permission(type="http", scope=hosts))
            continue
        out.extend(_SHORTHANDS[name])
    return out


def wildcard_match(pattern: str, value: str) -> bool:
    """`*` is any run of characters, the whole value, case-insensitive; nothing else is
    special (unlike fnmatch's `?` and `[...]`)."""
    regex = ".*".join(re.escape(part) for part in pattern.lower().split("*"))
    return re.fullmatch(regex, value.lower(), re.DOTALL) is not None


def is_sensitive_key(key: str) -> bool:
    lowered = key.lower()
    return any(fragment in lowered for fragment in SENSITIVE_CONFIG)


def wire_text(exc: HostCallError) -> str:
    """A refusal as GoatFlow words it: `plugin "<p>": <cause>`."""
    return f'plugin "{exc.plugin}": {exc.message}' if exc.plugin else exc.message


def _grants_access(entry: str, wanted: str) -> bool:
    return wanted == "" or entry == wanted or (entry == "readwrite" and wanted in
                                               ("read", "write"))


@dataclass(frozen=True)
class Scope:
    """What the granting entries allow: everything (`any`) or the listed patterns."""

    any: bool
    patterns: tuple[str, ...]

    def shown(self) -> list[str]:
        return ["*"] if self.any else list(self.patterns)

    def go_list(self) -> str:
        """As Go's `%v` prints a []string: `[a b]`."""
        return "[" + " ".join(self.shown()) + "]"


@dataclass(frozen=True)
class Grants:
    """A plugin's effective permissions. `blocked` (the operator's `status: blocked`)
    refuses every check."""

    plugin: str
    entries: tuple[Permission, ...]
    blocked: bool = False

    def scope(self, type_: str, access: str = "") -> Scope | None:
        """The scope granted for `(type_, access)`, or None when nothing grants it."""
        if self.blocked:
            return None
        granting = [e for e in self.entries if e.type == type_ and _grants_access(e.access,
                                                                                   access)]
        if not granting:
            return None
        if any(not e.scope for e in granting):
            return Scope(True, ())
        return Scope(False, tuple(dict.fromkeys(p for e in granting for p in e.scope)))

    def allows(self, type_: str, access: str = "") -> bool:
        return self.scope(type_, access) is not None

    def _denied(self, message: str) -> PermissionDenied:
        if self.blocked:
            message = f"{message} (the operator's policy blocks this plugin)"
        return PermissionDenied(message, plugin=self.plugin)

    def require(self, type_: str, access: str = "", what: str | None = None) -> Scope:
        """The scope for `(type_, access)`, or `PermissionDenied` worded as GoatFlow does
        (`database read access not granted`)."""
        scope = self.scope(type_, access)
        if scope is None:
            label = what or ("database" if type_ == "db" else type_)
            raise self._denied(f"{label} {access + ' ' if access else ''}access not granted")
        return scope

    # -- the scope checks, one per type ---------------------------------------------------

    def check_tables(self, reads: Iterable[str], writes: Iterable[str]) -> None:
        """db: a written table needs a write entry whose scope matches it, any other table
        a read entry; `information_schema.*` passes with any read grant."""
        written = set(writes)
        write = self.scope("db", "write") if written else None
        for table in written:
            if write is None or not _matches_any(write, table):
                raise self._denied(f'write access to table "{table}" not permitted')
        read_only = set(reads) - written
        read = self.scope("db", "read") if read_only else None
        for table in read_only:
            if read is not None and table.lower().startswith("information_schema."):
                continue
            if read is None or not _matches_any(read, table):
                raise self._denied(f'access to table "{table}" not permitted')

    def check_url(self, url: str) -> None:
        """http: the URL's host against the scope's host patterns (`*`, `*.example.com`,
        an exact name, or `name:port` for one port only). The host is the one the request
        will really go to (not GoatFlow's text cut, which `http://ok.com:1@evil.com/`
        fools), and user info in a URL is refused outright."""
        scope = self.scope("http")
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname or port == -1:
            raise HostCallError(f"http_request: {url!r} is not an http(s) URL",
                                plugin=self.plugin)
        if "@" in parts.netloc:
            raise self._denied(f'HTTP access to "{url}" not permitted (user info in a URL '
                               "is refused)")
        host = parts.hostname.lower().rstrip(".")
        if scope is None or not (scope.any or any(_host_matches(p, host, port)
                                                  for p in scope.patterns)):
            allowed = scope.go_list() if scope is not None else "[]"
            raise self._denied(f'HTTP access to "{url}" not permitted (allowed: {allowed})')

    def check_recipient(self, to: str) -> None:
        """email: `@domain` patterns match by suffix, others the exact address."""
        scope = self.scope("email")
        lowered = to.lower()
        if scope is None or not (scope.any or any(
                lowered.endswith(p.lower()) if p.startswith("@") else lowered == p.lower()
                for p in scope.patterns)):
            raise self._denied(f'email recipient "{to}" not allowed')

    def check_config_key(self, key: str) -> None:
        """config: a key matching a scope pattern is readable (sensitive or not); with an
        unscoped config entry any other key is, unless it is sensitive."""
        granting = [] if self.blocked else [
            e for e in self.entries if e.type == "config" and _grants_access(e.access, "read")]
        named = any(wildcard_match(p, key) for e in granting for p in e.scope)
        open_ = any(not e.scope for e in granting) and not is_sensitive_key(key)
        if not (named or open_):
            raise self._denied(f'config key "{key}" access denied')

    def check_target(self, target: str) -> None:
        """plugin_call: the target's exact name, or `*`."""
        scope = self.scope("plugin_call")
        if scope is None or not (scope.any or target in scope.patterns
                                 or "*" in scope.patterns):
            allowed = scope.go_list() if scope is not None else "[]"
            raise self._denied(f'not permitted to call plugin "{target}" (allowed: '
                               f"{allowed})")

    def check_value(self, type_: str, access: str, value: str) -> None:
        """An application's own type: `value` (an entity type, ...) must be in the scope,
        exactly (no wildcard, as GoatFlow's entity check)."""
        scope = self.require(type_, access)
        if not (scope.any or value in scope.patterns):
            raise self._denied(f'{type_} {access} access to "{value}" not granted')

    # -- for people ---------------------------------------------------------------------

    def unsafe(self) -> list[str]:
        """The grants an operator should look at twice."""
        flags = []
        if (s := self.scope("http")) is not None and (s.any or "*" in s.patterns):
            flags.append("http to any host")
        if (s := self.scope("email")) is not None and s.any:
            flags.append("email to anyone")
        if (s := self.scope("plugin_call")) is not None and (s.any or "*" in s.patterns):
            flags.append("plugin_call to any plugin")
        if any(e.type == "config" and p.strip("*") == "" for e in self.entries
               for p in e.scope):
            flags.append("config: every key, sensitive ones too")
        if (s := self.scope("db", "write")) is not None and s.any:
            flags.append("db write to every table")
        return flags

    def as_list(self) -> list[dict[str, object]]:
        """The entries as GoatFlow writes them (`access` and `scope` only when set)."""
        out: list[dict[str, object]] = []
        for e in self.entries:
            item: dict[str, object] = {"type": e.type}
            if e.access:
                item["access"] = e.access
            if e.scope:
                item["scope"] = list(e.scope)
            out.append(item)
        return out


def _matches_any(scope: Scope, table: str) -> bool:
    return scope.any or any(wildcard_match(p, table) for p in scope.patterns)


def _host_matches(pattern: str, host: str, port: int | None) -> bool:
    """One http scope pattern against a URL's host (lower-cased, brackets stripped, as
    urlsplit gives it) and port. IPv6 literals may be written `[::1]`, `[::1]:8080` or
    bare `::1`."""
    p = pattern.lower().strip().rstrip(".")
    if p == "*":
        return True
    want_port: int | None = None
    if p.startswith("["):  # [v6] or [v6]:port
        inside, _, rest = p[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            want_port = int(rest[1:])
        elif rest:
            return False
        p = inside
    elif p.count(":") == 1:  # name:port (several colons: a bare IPv6 address)
        name, _, digits = p.partition(":")
        if not digits.isdigit():
            return False
        p, want_port = name, int(digits)
    if want_port is not None and want_port != port:
        return False
    if p.startswith("*."):
        return host == p[2:] or host.endswith(p[1:])
    return host == p
