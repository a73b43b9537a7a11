"""hclog lines, as go-hclog itself writes them (a Go helper built with Debian's Go and
go-hclog), read back into log records with their levels and fields; and a gRPC plugin's
stderr read through the same parser."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest

from plughost.logs import LineWriter, PluginLog
from plughost.runtimes import hclog

HELPER = Path(__file__).parent / "fixtures" / "gowire" / "hclog"
GO = "/usr/bin/go"
HCLOG_SRC = Path("/usr/share/gocode/src/github.com/hashicorp/go-hclog")


@pytest.fixture(scope="module")
def go_lines(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    if not (os.access(GO, os.X_OK) and HCLOG_SRC.is_dir()):
        pytest.skip("needs Debian's golang-go and golang-github-hashicorp-go-hclog-dev")
    home = tmp_path_factory.mktemp("gohclog")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "GO111MODULE": "off",
           "GOPATH": f"{home}:/usr/share/gocode", "GOCACHE": str(home / "cache"),
           "GOFLAGS": "", "CGO_ENABLED": "0"}
    out = subprocess.run([GO, "run", "main.go"], cwd=HELPER, env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_go_hclogs_json_lines(go_lines: list[str]) -> None:
    parsed = [hclog.parse(line) for line in go_lines[:5]]
    assert parsed == [
        (logging.DEBUG, "tracing", {"step": "1"}),
        (logging.DEBUG, "debugging", {}),
        (logging.INFO, "plugin started: ready",
         {"dir": "/srv/a b", "ok": "true", "port": "7001"}),
        (logging.WARNING, "slow call", {"ms": "250.5", "names": '["a", "b c"]'}),
        (logging.ERROR, "failed", {"error": "boom: it broke"}),
    ]


def test_go_hclogs_text_lines(go_lines: list[str]) -> None:
    parsed = [hclog.parse(line) for line in go_lines[5:]]
    assert parsed == [
        (logging.DEBUG, "plugin.ticket: tracing", {"step": "1"}),
        (logging.DEBUG, "plugin.ticket: debugging", {}),
        (logging.INFO, "plugin.ticket: plugin started: ready",
         {"port": "7001", "dir": "/srv/a b", "ok": "true"}),
        (logging.WARNING, "plugin.ticket: slow call", {"ms": "250.5", "names": '[a, "b c"]'}),
        (logging.ERROR, "plugin.ticket: failed", {"error": "boom: it broke"}),
    ]


@pytest.mark.parametrize("line, expected", [
    ("[WARN] legacy log line", (logging.WARNING, "legacy log line", {})),
    ("panic: runtime error", None),
    ('{"not": "hclog"}', None),
    ("{broken json", None),
    ('{"@message": 7}', None),
    ("", None),
])
def test_other_lines(line: str, expected: object) -> None:
    assert hclog.parse(line) == expected


def test_a_line_writer_logs_levels_and_capped_fields() -> None:
    log = PluginLog("p")
    w = LineWriter(log, "stderr", logging.WARNING, parse=hclog.parse)
    fields = ",".join(f'"k{i}":"{"v" * 50}"' for i in range(70))
    w.write(b'{"@level":"info","@message":"hi","a":1}\nplain words\n'
            + ('{"@level":"error","@message":"many",' + fields + "}\n").encode()
            + ('{"@message":"long","big":"' + "w" * 2000 + '"}\n').encode())
    first, second, third, fourth = log.records()
    assert (first.level, first.message, dict(first.fields)) == ("info", "hi", {"a": "1"})
    assert first.as_dict()["fields"] == {"a": "1"}
    assert (second.level, second.message, second.fields) == ("warning", "plain words", {})
    assert "fields" not in second.as_dict()
    assert len(third.fields) == 64 and third.level == "error"  # the first 64 fields
    assert fourth.level == "info" and len(fourth.fields["big"]) == 1024
    assert log.chars == sum(len(r.message) + sum(len(k) + len(v) for k, v in r.fields.items())
                            for r in log.records())


CHATTY = """
import sys
from plughost import sdk

plugin = sdk.Plugin("chatty", version="1.0.0")

@plugin.function
def hi(args):
    return "hi"

if __name__ == "__main__":
    sys.stderr.write('{"@level":"error","@message":"disk low","free_mb":12}\\n'
                     '2026-01-01T00:00:00.000Z [DEBUG] chatty: tick: n=3\\n')
    sys.stderr.flush()
    plugin.serve()
"""


def test_a_grpc_plugins_hclog_stderr_reaches_its_log(tmp_path: Path) -> None:
    from plughost import Loader, Manager
    from plughost.host import HostSettings

    pdir = tmp_path / "plugins" / "chatty"
    pdir.mkdir(parents=True)
    (pdir / "chatty.py").write_text(CHATTY)
    (pdir / "plugin.yaml").write_text("name: chatty\nversion: 1.0.0\nruntime: grpc\n"
                                      "binary: chatty.py\n")
    with Manager(settings=HostSettings(data_dir=tmp_path / "data")) as manager:
        loader = Loader(tmp_path / "plugins", manager, cache_dir=None)
        try:
            assert loader.load_all()[1] == []
            from .conftest import wait_until

            def seen() -> list[tuple[str, str, dict[str, str]]]:
                return [(r.level, r.message, dict(r.fields))
                        for r in manager.log_for("chatty").records() if r.source == "stderr"]

            wait_until(lambda: len(seen()) >= 2)
            assert seen()[:2] == [("error", "disk low", {"free_mb": "12"}),
                                  ("debug", "chatty: tick", {"n": "3"})]
        finally:
            loader.close()
