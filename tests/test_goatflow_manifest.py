"""GoatFlow's plugin.yaml schema, read natively: Go durations, permission objects, the
template runtime, GoatFlow's defaults, and no warning for any GoatFlow key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from plughost import Loader, Manager, ManifestError, PluginCallError, load_manifest
from plughost.durations import parse_go_duration

from .conftest import names

GRPC_FIXTURE = Path(__file__).parent / "fixtures" / "hostops" / "grpc_plugin.py"

# GoatFlow's gRPC example manifest, as its facts describe it (a quoted version, Go
# durations), and every other key GoatFlow's PluginManifest knows.
HELLO_GRPC = """\
name: hello-grpc
version: "1.0.0"
runtime: grpc
binary: hello-grpc
resources:
  memory_mb: 64
  call_timeout: 5s
  init_timeout: 5s
  shutdown_timeout: 2s
"""

EVERY_KEY = """\
name: full
version: "2.0.0"
runtime: grpc
binary: full
wasm: full.wasm
icon: fa-chart-bar
description: every key
author: someone
license: MIT
homepage: https://example.com
type: plugin
dependencies: [stats]
sidecars:
  - name: cache
    image: redis:7
    ports: ["6379"]
    env: {A: b}
    volumes: [data]
    privileged: false
    memory_mb: 0
    cpu_millis: 0
    healthcheck: {command: [redis-cli, ping], interval: 10s}
resources:
  memory_mb: 32
  call_timeout: 1m30s
  init_timeout: 1.5s
  shutdown_timeout: 250ms
  max_file_storage_bytes: 1048576
  permissions:
    - {type: db, access: readwrite, scope: [test]}
    - {type: http, scope: [example.com]}
    - {type: cache, access: readwrite}
"""


def pdir_with(tmp_path: Path, text: str, name: str, files: tuple[str, ...] = ()) -> Path:
    pdir = tmp_path / name
    pdir.mkdir()
    (pdir / "plugin.yaml").write_text(text)
    for f in files:
        (pdir / f).write_bytes(b"\0asm\1\0\0\0")
    return pdir


def test_goatflow_grpc_example_manifest_loads_without_a_warning(tmp_path: Path) -> None:
    lm = load_manifest(pdir_with(tmp_path, HELLO_GRPC, "hello-grpc", ("hello-grpc",)))
    r = lm.manifest.resources
    assert lm.warnings == ()
    assert (lm.manifest.version, r.memory_mb, r.call_timeout_ms, r.start_timeout_ms,
            r.shutdown_timeout_ms) == ("1.0.0", 64, 5000, 5000, 2000)


def test_every_goatflow_key_is_known(tmp_path: Path) -> None:
    lm = load_manifest(pdir_with(tmp_path, EVERY_KEY, "full", ("full",)))
    m = lm.manifest
    assert lm.warnings == ("'wasm' is ignored for a grpc plugin",)  # a real contradiction
    assert (m.icon, m.type, m.dependencies) == ("fa-chart-bar", "plugin", ["stats"])
    assert m.sidecars[0]["healthcheck"] == {"command": ["redis-cli", "ping"],
                                            "interval": "10s"}
    r = m.resources
    assert (r.call_timeout_ms, r.start_timeout_ms, r.shutdown_timeout_ms) == (90_000, 1500,
                                                                              250)
    assert r.max_file_storage_bytes == 1048576
    assert [(p.type, p.access, p.scope) for p in r.permissions] == [
        ("db", "readwrite", ["test"]), ("http", "", ["example.com"]),
        ("cache", "readwrite", [])]


@pytest.mark.parametrize(("resources", "field", "says"), [
    ("call_timeout: 5s\n  call_timeout_ms: 5000", "resources", "not both"),
    ("call_timeout: 5", "resources", "missing unit"),
    ("init_timeout: 10 s", "resources", "invalid duration"),
    ("shutdown_timeout: -1s", "resources", "negative"),
    ("call_timeout: 2d", "resources", "invalid duration"),
    ("permissions: [{access: read}]", "resources.permissions.0.type", "required"),
    ("permissions: [{type: DB}]", "resources.permissions.0.type", "pattern"),
    ("max_file_storage_bytes: -1", "resources.max_file_storage_bytes", "greater"),
])
def test_bad_goatflow_resources_name_the_field(tmp_path: Path, resources: str, field: str,
                                               says: str) -> None:
    pdir = pdir_with(tmp_path, f"name: x\nruntime: grpc\nresources:\n  {resources}\n", "x",
                     ("x",))
    with pytest.raises(ManifestError) as info:
        load_manifest(pdir)
    assert info.value.field == field and says in info.value.message, info.value


def test_a_zero_go_duration_means_the_default(tmp_path: Path) -> None:
    pdir = pdir_with(tmp_path, "name: x\nruntime: grpc\nresources: {call_timeout: 0s}\n", "x",
                     ("x",))
    assert load_manifest(pdir).manifest.resources.call_timeout_ms == 30_000


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0.0), ("10s", 10.0), ("1m30s", 90.0), ("1.5h", 5400.0), ("300ms", 0.3),
    ("2us", 2e-6), ("2\u00b5s", 2e-6), ("2\u03bcs", 2e-6), ("7ns", 7e-9), (".5s", 0.5),
    ("1.s", 1.0), ("+3s", 3.0), ("-2m", -120.0), ("1h2m3s4ms", 3723.004),
])
def test_go_durations_as_go_parses_them(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "5", "1d", "1 s", ".s", "1e3s", "--1s", "5S",
                                  "1h 2m", "9999999999999h"])
def test_go_durations_go_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


def test_a_template_plugin_loads_and_has_nothing_to_call(
        plugins: Path, make_loader: type[Loader], manager: Manager) -> None:
    pdir = plugins / "theme-dark"
    (pdir / "templates" / "partials").mkdir(parents=True)
    (pdir / "templates" / "base.html").write_text("<html>{{ body }}</html>")
    (pdir / "templates" / "partials" / "nav.html").write_text("<nav/>")
    (pdir / "plugin.yaml").write_text(yaml.safe_dump(
        {"name": "theme-dark", "version": "1.2.0", "runtime": "template", "type": "theme"}))
    loader = make_loader()
    assert loader.load_all() == (1, [])
    plugin = manager.get("theme-dark")
    assert plugin is not None and plugin.kind == "template"
    assert [t.name for t in plugin.registration.templates] == ["base.html",
                                                                   "partials/nav.html"]
    with pytest.raises(PluginCallError, match="template plugin"):
        manager.call("theme-dark", "anything")
    assert names(loader) == ["theme-dark"]


def test_a_goatflow_grpc_dir_loads_with_no_warning(plugins: Path, make_loader: type[Loader],
                                                   manager: Manager) -> None:
    pdir = plugins / "hello-grpc"
    pdir.mkdir()
    (pdir / "hello-grpc.py").write_text(GRPC_FIXTURE.read_text().replace(
        "__NAME__", "hello-grpc").replace("__VERSION__", "1.0.0").replace("__MARKERS__", ""))
    (pdir / "plugin.yaml").write_text(HELLO_GRPC.replace("binary: hello-grpc",
                                                         "binary: hello-grpc.py"))
    loader = make_loader()
    assert loader.load_all() == (1, [])
    assert manager.call("hello-grpc", "version") == "1.0.0"
    warnings = [r.message for r in manager.log_for("hello-grpc").records()
                if r.level == "warning"]
    # the only warning: no signature checking in this test's host
    assert warnings == ["unsigned plugin loaded: signature verification is off"]
    loader.close()
