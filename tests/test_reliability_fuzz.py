"""Property-based fuzzing of the parsers a plugin author controls: plugin.yaml, the
registration JSON and `.zip` packages. The property is the same for all three: the input is
accepted, or refused with a typed plughost error; nothing else ever comes out.

Seeded (`derandomize`) so a failure reproduces, and bounded by example counts so the suite
stays fast. `PLUGHOST_FUZZ_EXAMPLES` raises the count for a longer local run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plughost.errors import ManifestError, PluginLoadError
from plughost.manifest import load_manifest
from plughost.packaging import PackageLimits, extract
from plughost.registration import parse_registration

EXAMPLES = int(os.environ.get("PLUGHOST_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

KEYS = ["name", "version", "runtime", "wasm", "binary", "permissions", "config", "resources",
        "memory_mb", "call_timeout_ms", "allowed_hosts", "env", "handshake", "<<", "x"]
FRAGMENTS = ["!!int", "!!float", "!!bool", "!!str", "!!binary", "!!timestamp", "!!set",
             "!!omap", "&a", "*a", "&b", "*b", "<<:", "- ", ": ", "{", "}", "[", "]", ",",
             "\n", "\n  ", "'", '"', "#", "?", "|", ">", "%YAML 1.1", "---", "...",
             "2023-02-30", "9" * 4400, "1e400", ".nan", "yes", "maybe", "~", "\t", "\x00",
             "wasm", "grpc", "log", "http", "../x", "/etc/passwd", "a" * 300]

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)


def _dump_yaml(data: Any) -> str:
    return json.dumps(data, allow_nan=True)  # JSON is YAML: a structured document


yaml_texts = st.one_of(
    values.map(_dump_yaml),
    st.lists(st.sampled_from(FRAGMENTS) | st.sampled_from(KEYS).map(lambda k: f"{k}: "),
             max_size=30).map("".join),
    st.text(max_size=200),
    st.tuples(st.dictionaries(st.sampled_from(KEYS), values, max_size=5),
              st.lists(st.sampled_from(FRAGMENTS), max_size=5)).map(
        lambda t: _dump_yaml(t[0]) + "".join(t[1])),
)


def test_manifest_parser_accepts_or_refuses_typed(tmp_path: Path) -> None:
    pdir = tmp_path / "p"
    pdir.mkdir()
    (pdir / "p.wasm").write_bytes(b"\0asm\1\0\0\0")
    seen = {"accepted": 0, "refused": 0}

    @FUZZ
    @given(text=yaml_texts)
    def check(text: str) -> None:
        try:
            (pdir / "plugin.yaml").write_bytes(text.encode("utf-8", "surrogatepass"))
        except UnicodeEncodeError:
            return
        try:
            load_manifest(pdir)
            seen["accepted"] += 1
        except ManifestError as exc:
            assert exc.plugin and exc.path
            seen["refused"] += 1

    check()
    assert seen["refused"] > 0 and sum(seen.values()) >= EXAMPLES // 2, seen


registration_bytes = st.one_of(
    st.binary(max_size=300),
    values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.dictionaries(st.sampled_from(["name", "version", "routes", "widgets", "jobs",
                                     "i18n", "menu_items", "permissions", "x"]), values,
                    max_size=6).map(lambda d: json.dumps({"name": "p", **d}).encode()),
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=4000, max_value=6000).map(lambda n: b'{"name":"p","v":'
                                                    + b"9" * n + b"}"),
)


@FUZZ
@given(raw=registration_bytes)
def test_registration_parser_accepts_or_refuses_typed(raw: bytes) -> None:
    try:
        reg = parse_registration(raw, expected_name="p")
    except ManifestError as exc:
        assert exc.plugin == "p" and "registration " in exc.message
    else:
        assert reg.name == "p"


def _zip(files: dict[str, bytes], method: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


names = st.sampled_from(["plugin.yaml", "p.wasm", "a/b.txt", "../evil", "/abs", "a", "a/",
                         "dir/", "x\\y", "c:/w", "ok.txt"])
archives = st.tuples(
    st.dictionaries(names, st.binary(max_size=2000) | st.just(b"\0" * 100_000), max_size=5),
    st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                     zipfile.ZIP_LZMA]),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)),
             max_size=8),
)


def test_zip_extraction_accepts_or_refuses_typed(tmp_path: Path) -> None:
    limits = PackageLimits(max_total_bytes=1024 * 1024, max_files=50, max_ratio=50)
    counter = [0]

    @FUZZ
    @given(archive=archives)
    def check(archive: tuple[dict[str, bytes], int, list[tuple[int, int]]]) -> None:
        files, method, flips = archive
        data = bytearray(_zip(files, method))
        for pos, value in flips:  # corrupt headers, names and compressed streams
            data[pos % len(data)] = value
        counter[0] += 1
        dest = tmp_path / f"x{counter[0]}"
        try:
            out = extract(bytes(data), dest, plugin="p", source=tmp_path / "p.zip",
                          limits=limits)
        except PluginLoadError as exc:
            assert exc.plugin == "p" and "package refused" in exc.message
            assert not dest.exists()  # nothing of a refused archive stays
        else:
            for f in out.rglob("*"):
                assert f.resolve().is_relative_to(dest.resolve())
            shutil.rmtree(dest)

    check()
    assert counter[0] >= EXAMPLES // 2


@pytest.mark.parametrize("text", ["name: p\nruntime: wasm\n", "runtime: wasm\n"])
def test_the_fuzzed_manifest_parser_still_accepts_good_input(tmp_path: Path,
                                                             text: str) -> None:
    pdir = tmp_path / "p"
    pdir.mkdir()
    (pdir / "p.wasm").write_bytes(b"\0asm\1\0\0\0")
    (pdir / "plugin.yaml").write_text(text)
    assert load_manifest(pdir).name == "p"


# -- the wire formats and line parsers a plugin process feeds the host ---------------------


@FUZZ
@given(raw=st.binary(max_size=400))
def test_gob_from_a_hostile_peer_is_a_gob_error_or_a_value(raw: bytes) -> None:
    from plughost.wire.gob import GobError
    from plughost.wire.gobdecode import Decoder
    from plughost.wire.messages import CallResponse

    for kind in (None, CallResponse):
        with contextlib.suppress(GobError):  # anything else fails the test
            Decoder.from_bytes(raw).decode(kind)


@FUZZ
@given(line=st.text(max_size=300) | st.sampled_from([
    '{"@level":"warn","@message":"m","k":[1,{"a":null}]}',
    '2026-01-01T00:00:00.000Z [INFO]  p: msg: a=1 b="x y" c=[1, "2 3"]',
    "[ERROR] x", "{" * 2000]))
def test_hclog_parse_never_raises(line: str) -> None:
    from plughost.runtimes import hclog

    got = hclog.parse(line)
    assert got is None or (isinstance(got[1], str) and isinstance(got[2], dict))


@FUZZ
@given(path=st.text(alphabet="/:*{}ab._-%?\\ ", max_size=40))
def test_a_route_path_parses_or_is_a_value_error(path: str) -> None:
    from plughost.routing import parse_pattern

    try:
        pattern = parse_pattern(path)
    except ValueError:
        return
    assert pattern.overlaps(pattern)  # a pattern always meets itself
