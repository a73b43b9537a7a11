"""The route table on its own: patterns, overlaps, precedence, collisions, middleware."""

from __future__ import annotations

import pytest

from plughost.errors import PluginLoadError
from plughost.registration import Route
from plughost.routing import (
    RouteTable,
    method_of,
    mount,
    parse_middleware,
    parse_pattern,
)


def routes(*specs: tuple[str, str]) -> list[Route]:
    return [Route(method=m, path=p, handler=f"h{i}") for i, (m, p) in enumerate(specs)]


@pytest.mark.parametrize("path, value, params", [
    ("/a/:id", "/a/7", {"id": "7"}),
    ("/a/:id", "/a/7/", {"id": "7"}),
    ("/a/:id", "/a/", None),
    ("/a/:id", "/a/7/8", None),
    ("/f/*rest", "/f/x/y", {"rest": "/x/y"}),
    ("/f/*rest", "/f", {"rest": "/"}),
    ("/f/{rest:path}", "/f/x/y", {"rest": "x/y"}),
    ("/b/{id}", "/b/q", {"id": "q"}),
    ("/", "/", {}),
    ("/", "/x", None),
])
def test_patterns_match_as_gin_and_plughost_write_them(path: str, value: str,
                                                       params: dict[str, str] | None) -> None:
    assert parse_pattern(path).match(value) == params


@pytest.mark.parametrize("path", ["no-slash", "/a/*rest/b", "/a/:id/:id", "/a/../b",
                                  "/a/?q", "/a/{bad", "/a/:", "//evil.example/x", "/a//b",
                                  "/\\evil.example"])
def test_bad_patterns_are_refused(path: str) -> None:
    with pytest.raises(ValueError):
        parse_pattern(path)


@pytest.mark.parametrize("a, b, overlap", [
    ("/a/:id", "/a/new", True),
    ("/a/:id", "/b/:id", False),
    ("/a/:id", "/a/:x/y", False),
    ("/a/*rest", "/a", True),
    ("/*rest", "/anything/at/all", True),
    ("/x", "/x/y", False),
    ("/", "/:a", False),
])
def test_overlap_is_symmetric_and_exact(a: str, b: str, overlap: bool) -> None:
    pa, pb = parse_pattern(a), parse_pattern(b)
    assert pa.overlaps(pb) is overlap and pb.overlaps(pa) is overlap


def test_within_a_plugin_literal_beats_param_beats_wildcard() -> None:
    table = RouteTable()
    table.install("p", routes(("GET", "/a/*rest"), ("GET", "/a/:id"), ("GET", "/a/new")))
    for path, handler in (("/a/new", "h2"), ("/a/7", "h1"), ("/a/7/8", "h0")):
        route, _, _ = table.match("GET", path)
        assert route is not None and route.handler == handler, path


def test_a_duplicate_within_a_plugin_is_skipped_and_said() -> None:
    mounted, warnings = mount("p", routes(("GET", "/a/:x"), ("GET", "/a/:y")))
    assert [m.handler for m in mounted] == ["h0"]
    assert warnings == ["Route collision: GET /a/:y is declared twice; the first stays"]


def test_a_collision_changes_nothing() -> None:
    table = RouteTable()
    table.install("one", routes(("GET", "/x")))
    table.install("two", routes(("GET", "/y")))
    with pytest.raises(PluginLoadError, match="collides with plugin 'one'"):
        table.install("two", routes(("GET", "/z"), ("GET", "/x")))
    assert [r.path for r in table.routes_of("two")] == ["/y"]  # the old routes stay
    table.remove("one")
    table.install("two", routes(("GET", "/z"), ("GET", "/x")))  # free now
    assert sorted(r.path for r in table.routes_of("two")) == ["/x", "/z"]


def test_an_application_reserves_its_own_paths() -> None:
    table = RouteTable()
    table.reserve("/app/*rest", owner="the application")
    with pytest.raises(PluginLoadError, match="the application's own endpoint /app/"):
        table.install("p", routes(("POST", "/app/settings")))
    assert table.is_reserved("/app/x") and not table.is_reserved("/other")


@pytest.mark.parametrize("raw, method", [("GET", "GET"), ("PATCH", "PATCH"), ("get", "GET"),
                                         ("HEAD", "GET"), ("OPTIONS", "GET"), ("", "GET")])
def test_goatflows_method_rule(raw: str, method: str) -> None:
    assert method_of(raw) == method


def test_middleware_names() -> None:
    parsed = parse_middleware(["auth", "group:ops", "plugin:billing:finance", "webhook"])
    assert [(m.kind, m.group, m.plugin) for m in parsed] == [
        ("auth", "", ""), ("group", "ops", ""), ("plugin", "finance", "billing"),
        ("webhook", "", "")]
    for bad in ("group:", "plugin:billing", "plugin::x", "Auth", "", 3):
        with pytest.raises(ValueError, match="unknown middleware"):
            parse_middleware([bad])
