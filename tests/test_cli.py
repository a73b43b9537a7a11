"""The command line, run as users run it: a real `plughost` process on the examples."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import write_wasm

ROOT = Path(__file__).parent.parent


def plughost(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PLUGHOST_CACHE_DIR=str(cache), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "plughost", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_list_json_and_table(examples: Path, tmp_path: Path) -> None:
    r = plughost("list", str(examples), "--json", cache=tmp_path / "c")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["hello"]["state"] == "running" and rows["hello"]["version"] == "1.0.0"
    assert rows["counter"]["state"] == "running" and rows["counter"]["type"] == "wasm"
    table = plughost("list", str(examples), cache=tmp_path / "c")
    assert table.returncode == 0
    assert "counter" in table.stdout and "running" in table.stdout
    (examples / "broken").mkdir()
    (examples / "broken" / "plugin.yaml").write_text("runtime: lua\n")
    r = plughost("list", str(examples), "--json", cache=tmp_path / "c")
    assert r.returncode == 1  # the list is printed whole, and the exit says one is broken
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["broken"]["state"] == "error" and "runtime" in rows["broken"]["error"]
    assert rows["hello"]["state"] == "running"


def test_call_prints_json(examples: Path, tmp_path: Path) -> None:
    r = plughost("call", "--dir", str(examples), "counter", "increment", '{"by": 7}',
                 cache=tmp_path / "c")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"count": 7}
    r = plughost("call", "--dir", str(examples), "hello", "hello", cache=tmp_path / "c")
    assert json.loads(r.stdout) == {"message": "Hello from a wasm plugin!"}


@pytest.mark.parametrize("args, needle", [
    (["call", "--dir", "{d}", "ghost", "x"], "PluginNotFound: plugin 'ghost'"),
    (["call", "--dir", "{d}", "counter", "fail"], "counter was asked to fail"),
    (["call", "--dir", "{d}", "counter", "increment", "{bad json"], "not valid JSON"),
    (["list", "{d}/nope"], "does not exist"),
])
def test_errors_are_one_line_and_nonzero(examples: Path, tmp_path: Path, args: list[str],
                                         needle: str) -> None:
    r = plughost(*[a.replace("{d}", str(examples)) for a in args], cache=tmp_path / "c")
    assert r.returncode != 0
    assert needle in " ".join(r.stderr.split())
    assert "Traceback" not in r.stderr


def test_call_reports_a_trap_without_traceback(tmp_path: Path) -> None:
    write_wasm(tmp_path / "p", "tk")
    r = plughost("call", "--dir", str(tmp_path / "p"), "tk", "trap", cache=tmp_path / "c")
    assert r.returncode == 1 and "PluginTrap" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang (wasm32-wasi) not installed")
def test_c_example_is_built_from_its_source() -> None:
    r = subprocess.run(["bash", str(ROOT / "scripts" / "build-examples.sh"), "--check"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_wat_examples_are_built_from_their_source() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_wat.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("runtime", ["wasm", "grpc"])
def test_new_scaffold_builds_loads_and_answers_hello(tmp_path: Path, runtime: str) -> None:
    dest = tmp_path / "plugins"
    r = plughost("new", "fresh-one", "--runtime", runtime, "--dir", str(dest),
                 cache=tmp_path / "c")
    assert r.returncode == 0, r.stderr
    pdir = dest / "fresh-one"
    assert (pdir / "plugin.yaml").is_file() and (pdir / "README.md").is_file()
    if runtime == "wasm":
        shipped = (pdir / "fresh-one.wasm").read_bytes()
        (pdir / "fresh-one.wasm").unlink()
        build = subprocess.run([sys.executable, str(pdir / "build.py")], capture_output=True,
                               text=True, timeout=60)
        assert build.returncode == 0, build.stderr
        assert (pdir / "fresh-one.wasm").read_bytes() == shipped  # the build reproduces it
    r = plughost("call", "--dir", str(dest), "fresh-one", "hello", cache=tmp_path / "c")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"message": "Hello from fresh-one!"}


def test_new_refuses_bad_names_and_existing_dirs(tmp_path: Path) -> None:
    bad = plughost("new", "Bad Name", "--dir", str(tmp_path), cache=tmp_path / "c")
    assert bad.returncode != 0 and "not a valid plugin name" in bad.stderr
    assert plughost("new", "ok", "--dir", str(tmp_path), cache=tmp_path / "c").returncode == 0
    again = plughost("new", "ok", "--dir", str(tmp_path), cache=tmp_path / "c")
    assert again.returncode != 0 and "already exists" in again.stderr
    odd = plughost("new", "x", "--runtime", "lua", "--dir", str(tmp_path), cache=tmp_path / "c")
    assert odd.returncode != 0 and "unknown runtime" in odd.stderr
    assert "Traceback" not in bad.stderr + again.stderr + odd.stderr
