"""Shared fixtures: real modules assembled from WAT in tests/fixtures, real wasmtime."""

from __future__ import annotations

import email
import email.policy
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import wasmtime
import yaml
from aiosmtpd.controller import Controller

from plughost import Loader, Manager
from plughost.host import HostSettings
from plughost.runtimes.wasm import WasmEngine

FIXTURES = Path(__file__).parent / "fixtures"
WAT = FIXTURES / "wat"
EXAMPLES = Path(__file__).parent.parent / "examples" / "plugins"


def wat_bytes(wat: str = "testkit", name: str = "tk", version: str = "1.0.0") -> bytes:
    """Assemble tests/fixtures/wat/<wat>.wat with its registration name set to `name`."""
    text = (WAT / f"{wat}.wat").read_text()
    return wasmtime.wat2wasm(text.replace("__NAME__", name).replace("__VERSION__", version))


def write_wasm(directory: Path, name: str, wat: str = "testkit", version: str = "1.0.0"
               ) -> Path:
    """A single-file plugin `<directory>/<name>.wasm`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.wasm"
    path.write_bytes(wat_bytes(wat, name, version))
    return path


def write_plugin_dir(directory: Path, name: str, manifest: dict[str, Any] | None = None,
                     wat: str = "testkit", version: str = "1.0.0") -> Path:
    """A plugin directory `<directory>/<name>/` with plugin.yaml and `<name>.wasm`."""
    pdir = directory / name
    pdir.mkdir(parents=True, exist_ok=True)
    (pdir / f"{name}.wasm").write_bytes(wat_bytes(wat, name, version))
    data: dict[str, Any] = {"name": name, "version": version, "runtime": "wasm"}
    data.update(manifest or {})
    (pdir / "plugin.yaml").write_text(yaml.safe_dump(data))
    return pdir


def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition that has no event to wait on (e.g. a call entering wasm)."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.001)


@pytest.fixture(scope="session", autouse=True)
def unconfined_by_default() -> Iterator[None]:
    """The gRPC tests at large watch plugin processes by the pids the plugins report and
    the files they write (markers, pid files); a PID namespace and a read-only file system
    hide both. So they run with PLUGHOST_SANDBOX=off, the documented unconfined mode, and
    tests/test_reliability_sandbox.py runs the same paths (load, calls, host calls, kill -9
    and restart, shutdown, host SIGKILL) confined, with explicit Sandbox objects."""
    old = os.environ.get("PLUGHOST_SANDBOX")
    os.environ["PLUGHOST_SANDBOX"] = "off"
    yield
    if old is None:
        os.environ.pop("PLUGHOST_SANDBOX", None)
    else:
        os.environ["PLUGHOST_SANDBOX"] = old


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WasmEngine]:
    """One engine for the session, with its own module cache (compiles are the slow part)."""
    eng = WasmEngine(tmp_path_factory.mktemp("modcache"))
    yield eng
    eng.close()


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    d = tmp_path / "plugins"
    d.mkdir()
    return d


@pytest.fixture(autouse=True)
def private_data_dir(tmp_path_factory: pytest.TempPathFactory,
                     monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own default data dir (`$XDG_DATA_HOME/plughost`): the admin
    state, policies, keys and databases a test leaves behind must not reach another."""
    home = tmp_path_factory.mktemp("xdg-data")
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    return home / "plughost"


@pytest.fixture
def manager() -> Iterator[Manager]:
    m = Manager(drain_timeout=10.0)
    yield m
    m.close()


@pytest.fixture
def make_loader(plugins: Path, manager: Manager, engine: WasmEngine
                ) -> Callable[..., Loader]:
    def make(lazy: bool = False, directory: Path | None = None) -> Loader:
        return Loader(directory or plugins, manager, lazy=lazy, engine=engine)

    return make


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """A private copy of examples/plugins (tests may modify it)."""
    dest = tmp_path / "examples"
    shutil.copytree(EXAMPLES, dest)
    return dest


MakeHost = Callable[..., Manager]


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[MakeHost]:
    """`hosts(host=None, **settings)`: a Manager whose data dir is inside tmp_path."""
    made: list[Manager] = []

    def make(host: Any = None, **settings: Any) -> Manager:
        m = Manager(host=host, settings=HostSettings(data_dir=tmp_path / "data", **settings),
                    drain_timeout=10.0)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Envelope:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


class SmtpCollector:
    """An aiosmtpd handler keeping every message it receives."""

    def __init__(self) -> None:
        self.received: list[Envelope] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.received.append(Envelope(envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, SmtpCollector]]:
    """A real SMTP server (aiosmtpd) on a free loopback port."""
    handler = SmtpCollector()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, handler
    controller.stop()


def status_mib(field: str) -> float:
    """A size from /proc/self/status in MiB: "VmRSS" (resident now), "VmHWM" (its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def names(loader: Loader) -> list[str]:
    """The names a loader has discovered, sorted, once each."""
    return sorted({d.name for d in loader.discovered_plugins()})


REG_PERMISSIONS = '\\"permissions\\":[\\"config\\",\\"log\\"],'


def variant_module(name: str, registration: dict[str, Any] | None = None) -> bytes:
    """testkit whose registration declares no flat permissions, plus `registration`'s keys
    (e.g. GoatFlow's `resources`)."""
    text = (WAT / "testkit.wat").read_text()
    assert REG_PERMISSIONS in text
    extra = ""
    if registration:
        extra = json.dumps(registration, separators=(",", ":"))[1:-1].replace('"', '\\"') + ","
    return wasmtime.wat2wasm(text.replace(REG_PERMISSIONS, extra).replace("__NAME__", name)
                             .replace("__VERSION__", "1.0.0"))


def variant_dir(plugins: Path, name: str, registration: dict[str, Any] | None = None,
                manifest: dict[str, Any] | None = None) -> Path:
    pdir = plugins / name
    pdir.mkdir(parents=True)
    (pdir / f"{name}.wasm").write_bytes(variant_module(name, registration))
    (pdir / "plugin.yaml").write_text(yaml.safe_dump(
        {"name": name, "version": "1.0.0", "runtime": "wasm", **(manifest or {})}))
    return pdir
