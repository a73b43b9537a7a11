"""The route table: which plugin serves which method and path (docs/server.md, "Routes").

A registration's `routes` are mounted at the paths they declare, as GoatFlow mounts them
(and, in the server, also under `/plugins/<name>/`). The table is filled when a plugin
registers and emptied when it goes, so it never disagrees with the registry. Its rules:

- Method: `GET`, `POST`, `PUT`, `DELETE` or `PATCH` exactly as written; anything else,
  lower case included, is GET (GoatFlow's rule).
- Path: gin's syntax (`:name` one segment, `*name` the rest, its value starting with `/`)
  or plughost's (`{name}`, `{name:path}` the rest without the leading `/`).
- Middleware: `auth`, `admin`, `agent`, `customer`, `webhook`, `group:<group>`,
  `plugin:<plugin>:<group>`; a route naming anything else (or a malformed entry) is not
  mounted, and the plugin's log says why, as GoatFlow skips it.
- Collisions are refused when the plugin registers, with an error naming both sides: a path
  that could reach one of the host's reserved endpoints (`reserve`), or a method and path
  that could reach another plugin's route. Within one plugin, overlapping routes are
  allowed (a literal segment beats a parameter, a parameter beats a wildcard, as in gin);
  an exact duplicate is skipped with a log line.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from .errors import PluginLoadError
from .registration import Route

#: The methods GoatFlow registers as written; any other is GET.
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH"})
#: Middleware names that take no argument.
SIMPLE_MIDDLEWARE = frozenset({"auth", "admin", "agent", "customer", "webhook"})

SegmentKind = Literal["literal", "param", "rest"]
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_GIN = re.compile(rf"^([:*])({_NAME})$")
_BRACE = re.compile(rf"^\{{({_NAME})(:path)?\}}$")
_LITERAL = re.compile(r"^[A-Za-z0-9\-._~!$&'()+,;=@%]*$")


def method_of(raw: str) -> str:
    """GoatFlow's method rule: one of METHODS exactly as written, else GET."""
    return raw if raw in METHODS else "GET"


@dataclass(frozen=True)
class Segment:
    kind: SegmentKind
    text: str  # the literal, or the parameter's name
    gin: bool = False  # `*name` (value keeps its leading slash) rather than `{name:path}`


@dataclass(frozen=True)
class Pattern:
    """A route path, parsed once; `match` gives its parameters as strings."""

    text: str
    segments: tuple[Segment, ...]

    @property
    def rank(self) -> tuple[int, ...]:
        """Sort key: literal (0) before parameter (1) before wildcard (2), per segment."""
        order = {"literal": 0, "param": 1, "rest": 2}
        return tuple(order[s.kind] for s in self.segments)

    @property
    def shape(self) -> tuple[tuple[str, str], ...]:
        """What the pattern matches, whatever its parameters are called."""
        return tuple((s.kind, s.text if s.kind == "literal" else "") for s in self.segments)

    def match(self, path: str) -> dict[str, str] | None:
        parts = path.strip("/").split("/") if path.strip("/") else []
        params: dict[str, str] = {}
        for i, seg in enumerate(self.segments):
            if seg.kind == "rest":
                rest = "/".join(parts[i:])
                params[seg.text] = "/" + rest if seg.gin else rest
                return params
            if i >= len(parts):
                return None
            if seg.kind == "literal":
                if parts[i] != seg.text:
                    return None
            elif not parts[i]:
                return None
            else:
                params[seg.text] = parts[i]
        return params if len(parts) == len(self.segments) else None

    def overlaps(self, other: Pattern) -> bool:
        """Could one request path match both? (A wildcard may match nothing.)"""
        a, b = self.segments, other.segments
        for i in range(max(len(a), len(b)) + 1):
            sa = a[i] if i < len(a) else None
            sb = b[i] if i < len(b) else None
            if (sa is not None and sa.kind == "rest") or (sb is not None and sb.kind == "rest"):
                return True
            if sa is None or sb is None:
                return sa is None and sb is None
            if sa.kind == sb.kind == "literal" and sa.text != sb.text:
                return False
        return True


def parse_pattern(path: str) -> Pattern:
    """`path` as a Pattern; ValueError says what is wrong with it."""
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} must start with '/'")
    if "//" in path or "\\" in path:  # `//host` is another site's URL to a browser
        raise ValueError(f"path {path!r} has an empty segment or a backslash")
    body = path.strip("/")
    segments: list[Segment] = []
    names: set[str] = set()
    raw_parts = body.split("/") if body else []
    for i, part in enumerate(raw_parts):
        gin, brace = _GIN.match(part), _BRACE.match(part)
        if gin is not None:
            seg = Segment("rest" if gin[1] == "*" else "param", gin[2], gin=gin[1] == "*")
        elif brace is not None:
            seg = Segment("rest" if brace[2] else "param", brace[1])
        elif part and _LITERAL.match(part) and part not in (".", ".."):
            seg = Segment("literal", part)
        else:
            raise ValueError(f"path {path!r}: segment {part!r} is not a literal, a "
                             ":param, a *wildcard or a {param}")
        if seg.kind == "rest" and i != len(raw_parts) - 1:
            raise ValueError(f"path {path!r}: a wildcard must be the last segment")
        if seg.kind != "literal":
            if seg.text in names:
                raise ValueError(f"path {path!r} repeats the parameter {seg.text!r}")
            names.add(seg.text)
        segments.append(seg)
    return Pattern(path, tuple(segments))


@dataclass(frozen=True)
class Middleware:
    """One parsed middleware entry: `kind` is a SIMPLE_MIDDLEWARE name, `group` or
    `plugin`; `group`/`plugin` carry their arguments."""

    kind: str
    group: str = ""
    plugin: str = ""

    @property
    def needs_auth(self) -> bool:
        return self.kind != "webhook"


def parse_middleware(entries: Iterable[object]) -> tuple[Middleware, ...]:
    """The route's middleware; ValueError names the first unknown or malformed entry."""
    out: list[Middleware] = []
    for entry in entries:
        text = entry if isinstance(entry, str) else ""
        if text in SIMPLE_MIDDLEWARE:
            out.append(Middleware(text))
            continue
        kind, _, rest = text.partition(":")
        if kind == "group" and rest:
            out.append(Middleware("group", group=rest))
            continue
        plugin, _, group = rest.partition(":")
        if kind == "plugin" and plugin and group:
            out.append(Middleware("plugin", group=group, plugin=plugin))
            continue
        raise ValueError(f"unknown middleware {entry!r}")
    return tuple(out)


@dataclass(frozen=True)
class MountedRoute:
    """A route as the table serves it."""

    plugin: str
    method: str
    pattern: Pattern
    handler: str
    middleware: tuple[Middleware, ...]

    @property
    def path(self) -> str:
        return self.pattern.text

    @property
    def public(self) -> bool:
        """No middleware: anyone may call it (GoatFlow's rule)."""
        return not self.middleware

    def serves(self, method: str) -> bool:
        return self.method == method or (method == "HEAD" and self.method == "GET")


def mount(plugin: str, routes: Iterable[Route]) -> tuple[list[MountedRoute], list[str]]:
    """The routes of `plugin` that can be served, most specific first, and a warning for
    each one that cannot (an unknown middleware, a bad path, an exact duplicate)."""
    mounted: list[MountedRoute] = []
    warnings: list[str] = []
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for r in routes:
        method = method_of(r.method)
        label = f"{method} {r.path}"
        try:
            pattern = parse_pattern(r.path)
            middleware = parse_middleware(getattr(r, "middleware", None) or [])
        except ValueError as exc:
            warnings.append(f"not registering plugin route {label}: {exc}")
            continue
        if (method, pattern.shape) in seen:
            warnings.append(f"Route collision: {label} is declared twice; the first stays")
            continue
        seen.add((method, pattern.shape))
        mounted.append(MountedRoute(plugin, method, pattern, r.handler, middleware))
    mounted.sort(key=lambda m: m.pattern.rank)  # stable: declared order breaks ties
    return mounted, warnings


class RouteTable:
    """Every plugin's mounted routes and the host's reserved paths. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reserved: list[tuple[Pattern, str]] = []
        self._routes: dict[str, list[MountedRoute]] = {}
        #: every plugin's routes, most specific first: made when the table changes, not
        #: on each request
        self._ranked: tuple[MountedRoute, ...] = ()

    def reserve(self, path: str, owner: str = "plughost") -> None:
        """Keep `path` (a pattern) for the host: no plugin route may reach it. The
        embedding application reserves its own endpoints the same way."""
        pattern = parse_pattern(path)
        with self._lock:
            self._reserved.append((pattern, owner))

    def install(self, plugin: str, routes: Iterable[Route]) -> list[str]:
        """Mount `plugin`'s routes in place of its current ones; returns the warnings of
        `mount`. PluginLoadError (and nothing changes) when one collides."""
        mounted, warnings = mount(plugin, routes)
        with self._lock:
            for route in mounted:
                for pattern, owner in self._reserved:
                    if route.pattern.overlaps(pattern):
                        raise PluginLoadError(
                            f"route {route.method} {route.path} collides with {owner}'s "
                            f"own endpoint {pattern.text}", plugin=plugin)
                for other, theirs in self._routes.items():
                    if other == plugin:
                        continue
                    for t in theirs:
                        if t.method == route.method and route.pattern.overlaps(t.pattern):
                            raise PluginLoadError(
                                f"route {route.method} {route.path} collides with plugin "
                                f"{other!r}'s route {t.method} {t.path}", plugin=plugin)
            self._routes[plugin] = mounted
            self._rank()
        return warnings

    def remove(self, plugin: str) -> None:
        with self._lock:
            if self._routes.pop(plugin, None) is not None:
                self._rank()

    def _rank(self) -> None:  # lock held
        every = [r for rs in self._routes.values() for r in rs]
        self._ranked = tuple(sorted(every, key=lambda m: m.pattern.rank))

    def routes_of(self, plugin: str) -> list[MountedRoute]:
        with self._lock:
            return list(self._routes.get(plugin, ()))

    def all(self) -> list[MountedRoute]:
        with self._lock:
            return [r for name in sorted(self._routes) for r in self._routes[name]]

    def is_reserved(self, path: str) -> bool:
        """Does `path` reach one of the reserved endpoints?"""
        with self._lock:
            reserved = list(self._reserved)
        return any(p.match(path) is not None for p, _ in reserved)

    def match(self, method: str, path: str, plugin: str | None = None
              ) -> tuple[MountedRoute | None, dict[str, str], list[str]]:
        """The route for `method path` (of `plugin` only, if given), its parameters, and
        the methods the path allows when no route serves `method`."""
        with self._lock:
            routes = self._routes.get(plugin, []) if plugin is not None else self._ranked
        allowed: list[str] = []
        for route in routes:
            params = route.pattern.match(path)
            if params is None:
                continue
            if route.serves(method):
                return route, params, allowed
            if route.method not in allowed:
                allowed.append(route.method)
        return None, {}, allowed
