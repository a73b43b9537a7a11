"""The net/rpc fixtures proven against go-plugin itself: a GoatFlow-style plugin on
hashicorp/go-plugin 1.0.1's net/rpc protocol (tests/fixtures/goplugin/netrpc) driven by a
host written on go-plugin 1.0.1's own client (tests/fixtures/goplugin/gohost), both built
from source with Debian's Go in GOPATH mode. Nothing of plughost runs here: this shows the
fixtures are right before plughost's own yamux/gob/net-rpc transport is pointed at them.

Speed is reported by the Go host but never asserted on."""

from __future__ import annotations

import json
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "goplugin"
GO = "/usr/bin/go"
GOCODE = Path("/usr/share/gocode/src/github.com/hashicorp")
NEEDS = (Path(GO), GOCODE / "go-plugin", GOCODE / "yamux", GOCODE / "go-hclog")
NAME = "netrpc-demo"


def go_build(package: str, out_dir: Path) -> Path:
    """`tests/fixtures/goplugin/<package>` built with Debian's Go into `out_dir/<package>`.
    /usr/bin/go explicitly: the venv puts another Go first on PATH."""
    missing = [str(p) for p in NEEDS if not p.exists()]
    if missing:
        pytest.skip(f"needs Debian's Go and go-plugin 1.0.1 source ({', '.join(missing)} "
                    "missing: apt-get install golang-go golang-github-hashicorp-go-plugin-dev)")
    gopath = out_dir / "gopath"
    gopath.mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(out_dir), "GO111MODULE": "off",
           "GOPATH": f"{gopath}:/usr/share/gocode", "GOCACHE": str(out_dir / "cache"),
           "GOFLAGS": "", "CGO_ENABLED": "0"}
    binary = out_dir / package
    out = subprocess.run([GO, "build", "-o", str(binary), "."], cwd=FIXTURES / package,
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr
    return binary


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("goplugin-netrpc")
    return go_build("netrpc", d), go_build("gohost", d)


def run_host(binaries: tuple[Path, Path], tmp: Path, *flags: str,
             env: dict[str, str] | None = None) -> dict[str, Any]:
    plugin, gohost = binaries
    tmpdir = tmp / "tmp"
    tmpdir.mkdir(exist_ok=True)
    # go-plugin 1.0.1 hands the host's whole environment to the plugin, so this is the
    # plugin's environment too (plus the cookie and PLUGIN_* variables).
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "TMPDIR": str(tmpdir),
            "GOATFLOW_PLUGIN_NETRPC_DEMO_API_KEY": "s3cret"}
    out = subprocess.run([str(gohost), "-plugin", str(plugin), *flags], cwd=tmp,
                         env={**base, **(env or {})}, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.fixture(scope="module")
def run(binaries: tuple[Path, Path],
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Path]]:
    tmp = tmp_path_factory.mktemp("gohost-run")
    yield run_host(binaries, tmp, "-calls", "200"), tmp


def test_the_go_host_handshakes_over_netrpc_and_dispenses_gkplugin(
        run: tuple[dict[str, Any], Path]) -> None:
    r, tmp = run
    assert (r["protocol"], r["negotiated_version"], r["network"]) == ("netrpc", 1, "unix")
    # the socket lives under the plugin's TMPDIR and is gone once the plugin has quit
    assert Path(r["address"]).parent == tmp / "tmp"
    assert r["exited"] is True and not Path(r["address"]).exists()
    assert r["ping"] == "ok" and r["shutdown"] == "ok" and "init_error" not in r


def test_the_registration(run: tuple[dict[str, Any], Path]) -> None:
    reg = run[0]["registration"]
    assert (reg["name"], reg["version"]) == (NAME, "1.0.0")
    assert [(x["method"], x["path"], x["handler"]) for x in reg["routes"]] == [
        ("GET", f"/api/plugins/{NAME}/hello", "hello"),
        ("POST", f"/api/plugins/{NAME}/echo", "echo")]
    assert reg["routes"][1]["middleware"] == ["auth"]


def test_calls_and_errors(run: tuple[dict[str, Any], Path]) -> None:
    calls = run[0]["calls"]
    assert calls["echo"]["result"] == {"x": [1, 2, 3], "s": "é ☃", "n": None}
    assert "result" not in calls["echo_empty"] and "error" not in calls["echo_empty"]
    assert calls["hello"]["result"] == {"message": "Hello, gohost!"}
    assert calls["fail"]["error"] == "asked to fail" and "result" not in calls["fail"]
    assert calls["unknown"]["error"] == "unknown function: no_such_function"
    assert calls["slow"]["result"] == {"slept_ms": 50}
    assert calls["health"]["result"]["status"] == "ok"
    assert all("rpc_error" not in c for c in calls.values())
    assert run[0]["concurrent"] == {"ok": 16}


def test_init_config_keys_reach_the_plugin(run: tuple[dict[str, Any], Path]) -> None:
    r = run[0]
    want = {"host_version": "0.10.0", "plugin_name": NAME,
            "plugin_dir": f"config/plugins/{NAME}", "work_dir": f"data/plugins/{NAME}",
            "api_key": "s3cret"}  # from GOATFLOW_PLUGIN_NETRPC_DEMO_API_KEY
    assert r["init_config"] == want
    assert r["calls"]["config"]["result"] == want


def test_the_plugin_sees_its_environment(run: tuple[dict[str, Any], Path]) -> None:
    r, tmp = run
    env = r["calls"]["env"]["result"]
    assert env["TMPDIR"] == str(tmp / "tmp") and env["HOME"] == str(tmp)
    assert env["PATH"] == "/usr/bin:/bin"
    assert env["GOATFLOW_PLUGIN_NETRPC_DEMO_API_KEY"] == "s3cret"
    assert env["GOATKIT_PLUGIN"] == "goatkit-v1" and env["PLUGIN_PROTOCOL_VERSIONS"] == "1"


def test_host_calls_go_through_the_broker_with_the_call_token(
        run: tuple[dict[str, Any], Path]) -> None:
    r = run[0]
    calls = r["calls"]
    assert r["host_api_id"] >= 1
    info = calls["host_call_info"]
    assert info["result"] == {"call_token": info["call_token"], "caller_plugin": NAME,
                              "function": "host", "context": "call"}
    assert len(info["call_token"]) == 32
    assert calls["host_config_get"]["result"] == {"value": "GoatFlow"}
    assert calls["host_config_get_unknown"]["result"] == {
        "host_error": "unknown config key: db.password"}
    assert set(calls["host_time_now"]["result"]) == {"now"}
    assert calls["host_log"]["result"] == {"ok": True}
    assert r["host_logs"] == [{"level": "warn", "message": "from the plugin",
                               "fields": {"n": 1}}]
    assert calls["host_cache_set"]["result"] == {"ok": True}
    assert calls["host_cache_get"]["result"] == {"found": True, "value": "dmFsdWU="}
    assert calls["host_cache_miss"]["result"] == {"found": False, "value": None}
    assert calls["host_org_id"]["result"] == 0
    assert calls["host_unknown_method"]["result"] == {
        "host_error": "unknown host API method: no_such_method"}
    assert calls["host_bad_token"]["result"] == {
        "host_error": "unknown or finished call context"}
    assert calls["host_empty_token"]["result"]["context"] == "background"
    # every host-bound call carried the token of the plugin call it was made from
    by_token = {c["call_token"]: k for k, c in calls.items()}
    for rec in r["host_calls"]:
        if rec["context"] == "call":
            assert by_token[rec["call_token"]].startswith("host_")
        assert rec["caller_plugin"] == NAME


def test_stdout_and_stderr_after_serve_arrive_over_their_streams(
        run: tuple[dict[str, Any], Path]) -> None:
    r = run[0]
    assert r["streams"] == {"stdout": "netrpc-demo stdout: marker-7f3a\n",
                            "stderr": "netrpc-demo stderr: marker-7f3a\n"}
    # the hclog logger keeps the real stderr: JSON lines the host reads from the pipe
    logs = [json.loads(x) for x in r["plugin_stderr"] if x.startswith("{")]
    messages = [x["@message"] for x in logs]
    assert "plugin address" in messages and "shutdown" in messages
    init = next(x for x in logs if x["@message"] == "initialised")
    assert (init["@level"], init["@module"], init["keys"]) == ("info", NAME, 5)
    assert not any("marker-7f3a" in x and "stderr:" in x for x in r["plugin_stderr"])


def test_start_time_and_latency_are_reported(run: tuple[dict[str, Any], Path]) -> None:
    r = run[0]
    assert r["start_ms"] > 0
    assert set(r["timings_us"]) == {"handshake", "connect", "dispense", "first_answer", "init"}
    t = r["timings_us"]
    assert 0 < t["handshake"] <= t["connect"] <= t["dispense"] <= t["first_answer"] <= t["init"]
    echo = r["echo"]
    assert (echo["calls"], echo["errors"], echo["mismatches"]) == (200, 0, 0)
    assert 0 < echo["min_us"] <= echo["median_us"] <= echo["p90_us"] <= echo["max_us"]


def test_the_registered_name_follows_goatflow_plugin_name(binaries: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    r = run_host(binaries, tmp_path, "-calls", "1", env={"GOATFLOW_PLUGIN_NAME": "other-one",
                                                         "GOATFLOW_PLUGIN_OTHER_ONE_X": "y"})
    assert r["registration"]["name"] == "other-one"
    assert r["calls"]["config"]["result"]["plugin_name"] == "other-one"
    assert r["calls"]["config"]["result"]["x"] == "y"
    assert "api_key" not in r["calls"]["config"]["result"]


def test_without_the_cookie_the_plugin_refuses_to_run(binaries: tuple[Path, Path]) -> None:
    out = subprocess.run([str(binaries[0])], env={"PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 1 and out.stdout == ""
    assert "This binary is a plugin" in out.stderr


def yamux_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) for each frame: 12-byte big-endian header
    (version, type, flags, stream id, length); only data frames (type 0) carry a payload."""
    frames, i = [], 0
    while i < len(data):
        version, typ, flags, sid, length = struct.unpack(">BBHII", data[i:i + 12])
        assert version == 0
        i += 12
        payload = b""
        if typ == 0:
            payload, i = data[i:i + length], i + length
        frames.append((typ, flags, sid, payload))
    return frames


def test_the_recorded_session_has_go_plugins_stream_layout(binaries: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    fx = tmp_path / "fx"
    r = run_host(binaries, tmp_path, "-calls", "3", "-deterministic", "-emit-fixtures", str(fx))
    assert r["recorded"] is True and r["exited"] is True
    assert r["calls"]["host_call_info"]["result"]["call_token"] == r["calls"][
        "host_call_info"]["call_token"]
    h2p = yamux_frames((fx / "host_to_plugin.bin").read_bytes())
    p2h = yamux_frames((fx / "plugin_to_host.bin").read_bytes())
    syn = 1  # yamux window-update flag that opens a stream

    def data(frames: list[tuple[int, int, int, bytes]], sid: int) -> bytes:
        return b"".join(p for typ, _, s, p in frames if typ == 0 and s == sid)

    # the host (yamux client) opens odd ids: 1 control, 3 stdout, 5 stderr, 7 the dispensed
    # plugin's broker stream; the plugin (yamux server) opens 2 for the host API
    assert [sid for typ, flags, sid, _ in h2p if typ == 1 and flags & syn] == [1, 3, 5, 7]
    assert [sid for typ, flags, sid, _ in p2h if typ == 1 and flags & syn] == [2]
    # broker handshake: the dialer writes the id as a little-endian uint32, the acceptor
    # echoes it; the plugin's broker and the host's number their ids independently (both 1)
    assert data(h2p, 7)[:4] == data(p2h, 7)[:4] == struct.pack("<I", 1)
    assert data(p2h, 2)[:4] == data(h2p, 2)[:4] == struct.pack("<I", r["host_api_id"])
    control = data(h2p, 1)
    assert control.index(b"Dispenser.Dispense") < control.index(b"Control.Ping") < \
        control.index(b"Control.Quit")
    assert b"gkplugin" in control
    plugin_rpcs = data(h2p, 7)
    assert plugin_rpcs.index(b"Plugin.GKRegister") < plugin_rpcs.index(b"Plugin.Init") < \
        plugin_rpcs.index(b"Plugin.Call") < plugin_rpcs.index(b"Plugin.Shutdown")
    assert b"HostAPIRequest" in data(p2h, 2)  # gob sends the type's name with its fields
    assert data(p2h, 3) == b"netrpc-demo stdout: marker-7f3a\n"
    assert data(p2h, 5) == b"netrpc-demo stderr: marker-7f3a\n"
    assert data(h2p, 3) == data(h2p, 5) == b""  # the host never writes on those streams
    assert json.loads((fx / "result.json").read_text())["registration"]["name"] == NAME
    chunks = json.loads((fx / "chunks.json").read_text())
    for direction, name in (("h2p", "host_to_plugin.bin"), ("p2h", "plugin_to_host.bin")):
        assert sum(c["n"] for c in chunks if c["dir"] == direction) == (fx / name).stat().st_size
