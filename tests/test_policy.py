"""Grants and policies: GoatFlow's access and scope rules (host/grants.py), declared
permissions and the operator's policy (host/policy.py), and where they are shown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from plughost import Loader, Manager
from plughost.errors import ManifestError, PermissionDenied
from plughost.host import HostSettings
from plughost.host.grants import Grants, expand_shorthands, is_sensitive_key, wildcard_match
from plughost.manifest import Permission
from plughost.runtimes.wasm import WasmEngine

from .conftest import write_plugin_dir, write_wasm


def grants(*entries: dict[str, object], blocked: bool = False) -> Grants:
    return Grants("p", tuple(Permission.model_validate(e) for e in entries), blocked)


def test_access_rules_are_goatflows() -> None:
    g = grants({"type": "db", "access": "readwrite"}, {"type": "cache"},
               {"type": "file", "access": "write"})
    assert g.allows("db", "read") and g.allows("db", "write") and g.allows("db")
    assert not g.allows("db", "hard_delete")
    # an entry without access grants only what wants none
    assert g.allows("cache") and not g.allows("cache", "read")
    assert g.allows("file", "write") and not g.allows("file", "read")  # write is not read
    with pytest.raises(PermissionDenied) as info:
        grants().require("db", "read")
    assert info.value.message == "database read access not granted"
    from plughost.host.grants import wire_text

    assert wire_text(info.value) == 'plugin "p": database read access not granted'  # GoatFlow
    with pytest.raises(PermissionDenied, match="file read access not granted"):
        g.require("file", "read")


def test_scopes_are_united_and_unscoped_means_all() -> None:
    g = grants({"type": "db", "access": "read", "scope": ["ticket"]},
               {"type": "db", "access": "readwrite", "scope": ["queue*"]})
    g.check_tables(["ticket", "queue_x", "QUEUE"], [])
    g.check_tables([], ["queue_archive"])
    with pytest.raises(PermissionDenied, match='write access to table "ticket" not permitted'):
        g.check_tables([], ["ticket"])
    with pytest.raises(PermissionDenied, match='access to table "users" not permitted'):
        g.check_tables(["users"], [])
    g.check_tables(["information_schema.tables"], [])  # with any read grant
    open_ = grants({"type": "db", "access": "read", "scope": ["x"]},
                   {"type": "db", "access": "read"})
    open_.check_tables(["anything"], [])


def test_wildcards_are_whole_name_star_only() -> None:
    assert wildcard_match("ticket*", "TICKET_history")
    assert wildcard_match("*", "")
    assert not wildcard_match("ticket", "ticket_history")
    assert not wildcard_match("t?cket", "ticket")  # ? is not special
    assert wildcard_match("a.[b]", "A.[B]")


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://api.example.com/x", True),
    ("http://API.EXAMPLE.COM:8080/", True),  # no port in the pattern: any port
    ("https://cdn.example.org/a", True),
    ("https://example.org/", True),  # *.example.org covers the domain itself
    ("https://evil-example.org/", False),
    ("https://pinned.example.net:8443/", True),
    ("https://pinned.example.net/", False),  # only that port
    ("https://api.example.com.evil.test/", False),
    ("http://api.example.com:1@evil.test/", False),  # user info: refused outright
    ("https://10.0.0.1/", False),
])
def test_http_host_patterns(url: str, allowed: bool) -> None:
    g = grants({"type": "http", "scope": ["api.example.com", "*.example.org",
                                          "pinned.example.net:8443"]})
    if allowed:
        g.check_url(url)
    else:
        with pytest.raises(PermissionDenied, match="HTTP access to"):
            g.check_url(url)


def test_non_http_urls_are_not_urls() -> None:
    from plughost.errors import HostCallError

    for url in ("file:///etc/passwd", "gopher://x/", "http://", "http://x:99999/"):
        with pytest.raises(HostCallError, match="not an http"):
            grants({"type": "http"}).check_url(url)


def test_email_config_and_target_scopes() -> None:
    g = grants({"type": "email", "scope": ["@example.com", "Boss@Other.org"]},
               {"type": "config", "access": "read", "scope": ["smtp.host"]},
               {"type": "config", "access": "read"},
               {"type": "plugin_call", "scope": ["a", "b"]})
    g.check_recipient("x@EXAMPLE.com")
    g.check_recipient("boss@other.org")
    with pytest.raises(PermissionDenied, match=r'email recipient "x@example\.com\.evil" not'):
        g.check_recipient("x@example.com.evil")
    g.check_config_key("app.name")
    g.check_config_key("smtp.host")  # sensitive, but named by a pattern
    for key in ("smtp.password", "api_token", "DB.host", "session_secret"):
        assert is_sensitive_key(key)
        with pytest.raises(PermissionDenied, match=f'config key "{key}" access denied'):
            g.check_config_key(key)
    g.check_target("b")
    with pytest.raises(PermissionDenied, match=r'call plugin "c" \(allowed: \[a b\]\)'):
        g.check_target("c")


def test_blocked_refuses_everything() -> None:
    g = grants({"type": "db", "access": "readwrite"}, blocked=True)
    with pytest.raises(PermissionDenied, match="blocks this plugin"):
        g.require("db", "read")


def test_shorthands_expand_to_goatflow_entries() -> None:
    entries = expand_shorthands(["db.read", "http", "log", "plugin.call"], ["a.example"])
    assert [(e.type, e.access, e.scope) for e in entries] == [
        ("db", "read", []), ("http", "", ["a.example"]), ("plugin_call", "", [])]
    assert expand_shorthands(["http"], []) == []  # never "any host"


def test_unsafe_grants_are_flagged() -> None:
    g = grants({"type": "http"}, {"type": "email"}, {"type": "plugin_call", "scope": ["*"]},
               {"type": "config", "access": "read", "scope": ["*"]},
               {"type": "db", "access": "write"})
    assert g.unsafe() == ["http to any host", "email to anyone", "plugin_call to any plugin",
                          "config: every key, sensitive ones too", "db write to every table"]
    assert grants({"type": "http", "scope": ["a.example"]}).unsafe() == []


# -- policies, on real plugins ------------------------------------------------------------


def loaded(plugins: Path, engine: WasmEngine, data: Path, **policies: object
           ) -> tuple[Manager, Loader]:
    manager = Manager(settings=HostSettings(data_dir=data), drain_timeout=10.0,
                      policies=policies or None)  # type: ignore[arg-type]
    loader = Loader(plugins, manager, engine=engine)
    return manager, loader


def entries(manager: Manager, name: str) -> list[dict[str, object]]:
    g = manager.grants(name)
    assert g is not None
    return g.as_list()


def test_operator_policy_replaces_widens_narrows_and_blocks(
        plugins: Path, engine: WasmEngine, tmp_path: Path) -> None:
    write_plugin_dir(plugins, "r", {"resources": {"permissions": [
        {"type": "db", "access": "readwrite", "scope": ["t"]}, {"type": "cache",
                                                               "access": "readwrite"}]}})
    write_plugin_dir(plugins, "w", {"permissions": ["db.read"]})
    write_plugin_dir(plugins, "x", {"permissions": ["db.read"]})
    write_plugin_dir(plugins, "b", {"permissions": ["db.read"]})
    manager, loader = loaded(
        plugins, engine, tmp_path / "data",
        r={"revoke": [{"type": "db", "access": "write"}, {"type": "cache"}]},
        w={"grant": [{"type": "http", "scope": ["api.example.com"]}]},
        x={"permissions": [{"type": "config", "access": "read"}]},
        b={"status": "blocked"})
    try:
        assert loader.load_all() == (4, [])
        assert entries(manager, "r") == [{"type": "db", "access": "read", "scope": ["t"]}]
        assert entries(manager, "w") == [{"type": "db", "access": "read"},
                                         {"type": "http", "scope": ["api.example.com"]}]
        assert entries(manager, "x") == [{"type": "config", "access": "read"}]
        g = manager.grants("b")
        assert g is not None and g.blocked
        assert manager.call("b", "host", b'config_get|{"key":"k"}') is None
        # set_policy reaches a running plugin at once
        assert manager.call("x", "host", b'config_get|{"key":"app.name"}') == {
            "value": "plughost"}
        manager.set_policy("x", {"status": "blocked"})
        assert manager.call("x", "host", b'config_get|{"key":"app.name"}') is None
        manager.set_policy("x", None)  # back to what it declared
        assert entries(manager, "x") == [{"type": "db", "access": "read"}]
    finally:
        loader.close()
        manager.close()


def test_the_policy_file_in_the_data_dir(plugins: Path, engine: WasmEngine,
                                         tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_wasm(plugins, "tk")  # registers [config, log]
    (data / "policies.yaml").write_text(yaml.safe_dump(
        {"tk": {"grant": [{"type": "email", "scope": ["@example.com"]}],
                "max_http_req_per_min": 5}}))
    manager, loader = loaded(plugins, engine, data)
    try:
        assert loader.load_all() == (1, [])
        assert entries(manager, "tk") == [{"type": "config", "access": "read"},
                                          {"type": "email", "scope": ["@example.com"]}]
        plugin = manager.get("tk")
        assert plugin is not None and plugin.host_context.limits.max_http_req_per_min == 5
        # an edit applies at the next load; a broken file fails the load, naming the file
        (data / "policies.yaml").write_text("tk: {status: blocked, nonsense: 1}\n")
        with pytest.raises(ManifestError, match=r"policy for 'tk'.*nonsense") as info:
            loader.reload("tk")
        assert "policies.yaml" in str(info.value)
        assert manager.call("tk", "host", b'config_get|{"key":"app.name"}') == {
            "value": "plughost"}  # the running version keeps serving
        (data / "policies.yaml").write_text("[not, a, mapping]\n")
        with pytest.raises(ManifestError, match="must map plugin names"):
            loader.reload("tk")
        (data / "policies.yaml").write_text("tk: {status: blocked}\n")
        loader.reload("tk")
        g = manager.grants("tk")
        assert g is not None and g.blocked
    finally:
        loader.close()
        manager.close()


def test_plughost_list_shows_effective_grants_and_flags_unsafe_ones(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    write_plugin_dir(plugins, "wide", {"resources": {"permissions": [
        {"type": "http"}, {"type": "db", "access": "read", "scope": ["ticket"]}]}})
    write_plugin_dir(plugins, "narrow", {"permissions": ["cache"]})
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}  # its own data dir
    out = subprocess.run([sys.executable, "-m", "plughost", "list", str(plugins), "--json"],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["wide"]["grants"] == [{"type": "http"},
                                      {"type": "db", "access": "read", "scope": ["ticket"]}]
    assert rows["wide"]["unsafe"] == ["http to any host"]
    assert rows["wide"]["grants_text"] == "http db:read[ticket]  ! http to any host"
    assert rows["narrow"]["grants"] == [{"type": "cache", "access": "readwrite"}]
    assert rows["narrow"]["unsafe"] == []
    table = subprocess.run([sys.executable, "-m", "plughost", "list", str(plugins)],
                           capture_output=True, text=True, env={**env, "COLUMNS": "200"},
                           timeout=120, check=False)
    assert table.returncode == 0, table.stderr
    assert "! http to any host" in table.stdout and "cache:readwrite" in table.stdout
