"""Crash leftovers are swept: a host that was SIGKILLed leaves its socket directories and
its private copies of plugins behind; the next host's start removes them, and nothing of
a host that still runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from plughost.packaging import pack

from .conftest import write_plugin_dir
from .test_grpc_runtime import sdk_plugin

SCRIPT = Path(__file__).parent / "fixtures" / "scripts" / "host_wait.py"


@pytest.fixture
def tmpdir_short() -> Iterator[Path]:
    """A TMPDIR short enough for unix sockets, private to this test."""
    d = Path(tempfile.mkdtemp(prefix="phs", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def start_host(plugins: Path, tmpdir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(plugins)], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ready 2"), line
    return proc


def owned(tmpdir: Path, pid: int) -> set[str]:
    return {p.name for p in tmpdir.iterdir() if p.name.split("-")[1:2] == [str(pid)]}


def test_next_host_sweeps_what_a_killed_host_left(tmp_path: Path, tmpdir_short: Path
                                                  ) -> None:
    plugins = tmp_path / "plugins"
    src = tmp_path / "src"
    sdk_plugin(plugins, "svc")  # a socket directory
    pack(write_plugin_dir(src, "zipped"), plugins / "zipped.zip")  # unpacked privately
    first = start_host(plugins, tmpdir_short)
    left = owned(tmpdir_short, first.pid)
    assert {n.split("-")[0] for n in left} == {"ph", "plughost"}, left
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert owned(tmpdir_short, first.pid) == left  # nobody cleaned up

    second = start_host(plugins, tmpdir_short)
    try:
        assert owned(tmpdir_short, first.pid) == set()
        mine = owned(tmpdir_short, second.pid)
        assert {n.split("-")[0] for n in mine} == {"ph", "plughost"}, mine
        # a third host leaves the live second host's directories alone
        third = start_host(plugins, tmpdir_short)
        assert owned(tmpdir_short, second.pid) == mine
        assert third.stdin is not None
        third.stdin.close()
        assert third.wait(30) == 0
        assert owned(tmpdir_short, third.pid) == set()  # a clean exit removes its own
    finally:
        assert second.stdin is not None
        second.stdin.close()
        second.wait(30)
