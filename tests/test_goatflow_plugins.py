"""GoatFlow-style plugins (tests/fixtures/goatflow: Go built for wasip1 from the facts,
never from GoatFlow's code) dropped in as GoatFlow's docs say: a folder per plugin, the
module named otherwise than the plugin, no plugin.yaml. They load unchanged, named by
their registrations, and answer with exact bytes."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from plughost import Loader, Manager

CORPUS = Path(__file__).parent / "fixtures" / "goatflow" / "plugins"
MakeLoader = Callable[..., Loader]


def test_goatflow_layout_loads_unchanged_under_registered_names(
        plugins: Path, make_loader: MakeLoader, manager: Manager) -> None:
    for sub in ("hello-wasm", "test-hostapi-wasm", "stats"):
        shutil.copytree(CORPUS / sub, plugins / sub)
    loader = make_loader()
    assert loader.load_all() == (3, [])
    assert manager.names() == ["hello-wasm", "stats", "test-hostapi"]
    for name in manager.names():
        assert not [r.message for r in manager.log_for(name).records()
                    if "plugin.yaml" in r.message or "unknown key" in r.message]
    assert manager.call_raw("hello-wasm", "hello", b'{"name":"Ada"}') == (
        b'{"message":"Hello from WASM, Ada!","runtime":"tinygo-wasm"}')
    # GoatFlow passes empty arguments as nothing at all: (0, 0)
    assert manager.call_raw("hello-wasm", "hello", b"") == (
        b'{"message":"Hello from WASM, World!","runtime":"tinygo-wasm"}')
    assert manager.call_raw("hello-wasm", "nope", b"") == b'{"error":"unknown function: nope"}'
    assert manager.call_raw("stats", "__health_ping__", b"") == (
        b'{"status":"ok","runtime":"tinygo-wasm","version":"2.1.0","routes":10,'
        b'"widgets":5,"jobs":1}')
    reg = manager.get("hello-wasm")
    assert reg is not None and reg.source.path == plugins / "hello-wasm" / "hello.wasm"
