"""plugin.yaml through `load_manifest`, and the registration.

Every test writes a real plugin.yaml and real files into a temp directory. Errors must be
`ManifestError`s that name the field (`.field`), the plugin.yaml (`.path`), the plugin
(`.plugin`) and say the problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from plughost import LoadedManifest, ManifestError, Registration, Resources, load_manifest
from plughost.manifest import PERMISSIONS
from plughost.registration import Job, Route, Widget, parse_registration

# -- helpers ---------------------------------------------------------------------------------


def plugin_dir(parent: Path, name: str = "demo", files: tuple[str, ...] | None = None) -> Path:
    """`parent/name/` holding the given (empty-ish) files; by default `<name>.wasm`."""
    pdir = parent / name
    pdir.mkdir(parents=True, exist_ok=True)
    for rel in (f"{name}.wasm",) if files is None else files:
        f = pdir / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"\0asm\1\0\0\0")
    return pdir


def write_manifest(pdir: Path, content: str | dict[str, Any]) -> Path:
    path = pdir / "plugin.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def load_error(pdir: Path) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        load_manifest(pdir)
    return info.value


def check_error(exc: ManifestError, pdir: Path, *, field: str | None, plugin: str,
                says: tuple[str, ...] = ()) -> None:
    """The error names the field, the manifest path, the plugin, and says the problem."""
    assert exc.field == field, exc
    assert exc.path == str(pdir / "plugin.yaml")
    assert exc.plugin == plugin
    text = str(exc)
    assert str(pdir / "plugin.yaml") in text
    assert repr(plugin) in text
    if field is not None:
        assert exc.message.startswith(f"{field}: "), exc.message
    for fragment in says:
        assert fragment.lower() in exc.message.lower(), (fragment, exc.message)


def wasm_yaml(extra: str = "", name: str = "demo") -> str:
    return f"name: {name}\nruntime: wasm\n{extra}"


# -- a valid manifest --------------------------------------------------------------------------


def test_full_wasm_manifest_parses_into_typed_values(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path, "stats-dir", files=("mod/stats.wasm",))
    path = write_manifest(pdir, """\
name: stats
version: 1.2.0
runtime: wasm
wasm: mod/stats.wasm
description: Counts things
author: Jane Doe
license: Apache-2.0
homepage: https://example.com/stats
permissions: [db.read, db.write, cache, http, email, config, plugin.call, log]
config:
  greeting: hi
  limit: 10
  nested: {a: [1, 2], b: true}
resources: {memory_mb: 128, call_timeout_ms: 1500, max_instances: 4,
            start_timeout_ms: 2000, shutdown_timeout_ms: 0}
allowed_hosts: [api.example.com, cdn.example.com]
env: [LANG, TZ]
""")
    lm = load_manifest(pdir)
    assert isinstance(lm, LoadedManifest)
    m = lm.manifest
    assert (m.name, lm.name, m.version, m.runtime) == ("stats", "stats", "1.2.0", "wasm")
    assert m.wasm == "mod/stats.wasm" and m.binary is None
    assert (m.description, m.author, m.license, m.homepage) == (
        "Counts things", "Jane Doe", "Apache-2.0", "https://example.com/stats")
    assert m.permissions == ["db.read", "db.write", "cache", "http", "email", "config",
                             "plugin.call", "log"]
    assert m.config == {"greeting": "hi", "limit": 10, "nested": {"a": [1, 2], "b": True}}
    assert isinstance(m.resources, Resources)
    assert (m.resources.memory_mb, m.resources.call_timeout_ms, m.resources.max_instances,
            m.resources.start_timeout_ms, m.resources.shutdown_timeout_ms) == (
        128, 1500, 4, 2000, 0)
    assert m.allowed_hosts == ["api.example.com", "cdn.example.com"]
    assert m.env == ["LANG", "TZ"]
    assert lm.path == path
    assert lm.plugin_dir == pdir
    assert lm.entry == (pdir / "mod" / "stats.wasm").resolve()
    assert lm.warnings == ()


def test_full_grpc_manifest_parses(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path, "svc", files=("bin/svc",))
    write_manifest(pdir, """\
version: 2.0.0
runtime: grpc
binary: bin/svc
env: [LANG]
handshake: {magic_cookie_key: BASIC_PLUGIN, magic_cookie_value: hello}
resources: {call_timeout_ms: 500}
""")
    lm = load_manifest(pdir)
    m = lm.manifest
    assert (m.name, m.runtime, m.binary, m.wasm) == ("svc", "grpc", "bin/svc", None)
    assert lm.entry == (pdir / "bin" / "svc").resolve()
    assert (m.handshake.magic_cookie_key, m.handshake.magic_cookie_value) == (
        "BASIC_PLUGIN", "hello")
    assert (m.resources.memory_mb, m.resources.call_timeout_ms,
            m.resources.max_instances) == (64, 500, 1)
    assert lm.warnings == ()


def test_minimal_manifest_gets_the_defaults(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path, "mini")
    write_manifest(pdir, "runtime: wasm\n")
    lm = load_manifest(pdir)
    m = lm.manifest
    assert m.name == "mini"  # the directory name
    assert m.version == "0.0.0"
    assert (m.resources.memory_mb, m.resources.call_timeout_ms,
            m.resources.max_instances) == (64, 30000, 1)
    assert m.permissions == [] and m.config == {} and m.allowed_hosts == [] and m.env == []
    assert (m.handshake.magic_cookie_key, m.handshake.magic_cookie_value) == (
        "PLUGHOST_PLUGIN", "v1")
    assert lm.entry == (pdir / "mini.wasm").resolve()  # default <name>.wasm


def test_default_wasm_file_follows_the_manifest_name_not_the_dir(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path, "somedir", files=("real.wasm",))
    write_manifest(pdir, "name: real\nruntime: wasm\n")
    assert load_manifest(pdir).entry == (pdir / "real.wasm").resolve()


def test_name_in_manifest_overrides_an_invalid_directory_name(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path, "My Plugin", files=("good.wasm",))
    write_manifest(pdir, "name: good\nruntime: wasm\n")
    assert load_manifest(pdir).name == "good"


def test_partial_resources_keep_the_other_defaults(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path)
    write_manifest(pdir, wasm_yaml("resources: {memory_mb: 16}\n"))
    r = load_manifest(pdir).manifest.resources
    assert (r.memory_mb, r.call_timeout_ms, r.max_instances) == (16, 30000, 1)


@pytest.mark.parametrize(("raw", "expected"), [
    ("1.2", "1.2"),      # YAML float
    ("3", "3"),          # YAML int
    ("0.5", "0.5"),
    ("1.2.0", "1.2.0"),  # YAML string
    ("'1.0'", "1.0"),
])
def test_version_is_always_text(tmp_path: Path, raw: str, expected: str) -> None:
    pdir = plugin_dir(tmp_path)
    write_manifest(pdir, wasm_yaml(f"version: {raw}\n"))
    version = load_manifest(pdir).manifest.version
    assert isinstance(version, str)
    assert version == expected


def test_version_with_trailing_zero_is_not_mangled(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path)
    write_manifest(pdir, wasm_yaml("version: 1.10\n"))
    try:
        version = load_manifest(pdir).manifest.version
    except ManifestError as exc:  # refusing an ambiguous float version is acceptable too
        assert exc.field == "version"
        return
    assert version == "1.10"


def test_version_of_wrong_type_is_an_error(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path)
    write_manifest(pdir, wasm_yaml("version: [1, 2]\n"))
    check_error(load_error(pdir), pdir, field="version", plugin="demo", says=("string",))


# -- runtime -----------------------------------------------------------------------------------


def test_runtime_inferred_from_wasm_key(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path, files=("m.wasm",))
    write_manifest(pdir, "wasm: m.wasm\n")
    lm = load_manifest(pdir)
    assert lm.manifest.runtime == "wasm"
    assert lm.entry == (pdir / "m.wasm").resolve()


def test_runtime_inferred_from_binary_key(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path, files=("server",))
    write_manifest(pdir, "binary: server\n")
    lm = load_manifest(pdir)
    assert lm.manifest.runtime == "grpc"
    assert lm.entry == (pdir / "server").resolve()


def test_missing_runtime_that_cannot_be_inferred_is_an_error(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path)
    write_manifest(pdir, "wasm: demo.wasm\nbinary: demo.wasm\n")  # both: ambiguous
    check_error(load_error(pdir), pdir, field="runtime", plugin="demo", says=("required",))


@pytest.mark.parametrize(("files", "runtime"), [(("demo.wasm",), "wasm"), ((), "template"),
                                                (("README.md",), "template")])
@pytest.mark.parametrize("written", ["", "runtime: ''\n"])
def test_no_runtime_and_no_code_key_is_wasm_with_a_module_else_a_template(
        tmp_path: Path, files: tuple[str, ...], runtime: str, written: str) -> None:
    """GoatFlow's packaging reads an empty runtime as `template` (assets, no code)."""
    pdir = plugin_dir(tmp_path, files=files)
    write_manifest(pdir, f"name: demo\nversion: 1.0.0\n{written}")
    lm = load_manifest(pdir)
    assert lm.manifest.runtime == runtime and lm.warnings == ()
    assert lm.entry == (pdir / "demo.wasm" if runtime == "wasm" else pdir)


@pytest.mark.parametrize("runtime", ["WASM", "Grpc", "TEMPLATE"])
def test_runtime_is_read_in_any_case_as_goatflow_packs_it(tmp_path: Path,
                                                          runtime: str) -> None:
    pdir = plugin_dir(tmp_path, files=("demo.wasm", "demo"))
    write_manifest(pdir, f"runtime: {runtime}\n")
    assert load_manifest(pdir).manifest.runtime == runtime.lower()


@pytest.mark.parametrize("runtime", ["lua", "native", "theme"])
def test_unknown_runtime_is_an_error(tmp_path: Path, runtime: str) -> None:
    pdir = plugin_dir(tmp_path)
    write_manifest(pdir, f"runtime: {runtime}\n")
    exc = load_error(pdir)
    check_error(exc, pdir, field="runtime", plugin="demo", says=("wasm", "grpc"))


# -- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    "Stats", "sTats", ".stats", "-stats", "_stats", "a" * 65, "my plugin", "stats/x", "stats!",
])
def test_invalid_names_are_errors(tmp_path: Path, bad: str) -> None:
    pdir = plugin_dir(tmp_path, "okdir")
    write_manifest(pdir, {"name": bad, "runtime": "wasm"})
    exc = load_error(pdir)
    check_error(exc, pdir, field="name", plugin=bad, says=("not a valid plugin name",))
    assert repr(bad) in exc.message


@pytest.mark.parametrize("content", ["name: ''\nruntime: wasm\n", "name: null\nruntime: wasm\n"])
def test_an_empty_name_is_the_directory_name(tmp_path: Path, content: str) -> None:
    """GoatFlow's loader falls back to the directory name for an empty `name`."""
    pdir = plugin_dir(tmp_path, "okdir")
    write_manifest(pdir, content)
    assert load_manifest(pdir).name == "okdir"


@pytest.mark.parametrize("content", ["name: 5\nruntime: wasm\n", "name: [a]\nruntime: wasm\n"])
def test_non_string_name_is_an_error_reported_under_the_dir_name(tmp_path: Path,
                                                                 content: str) -> None:
    pdir = plugin_dir(tmp_path, "okdir")
    write_manifest(pdir, content)
    check_error(load_error(pdir), pdir, field="name", plugin="okdir", says=("string",))


@pytest.mark.parametrize("good", ["a", "0", "a" * 64, "my-plugin_2.v1", "9lives"])
def test_valid_names_boundaries(tmp_path: Path, good: str) -> None:
    pdir = plugin_dir(tmp_path, "okdir", files=(f"{good}.wasm",))
    write_manifest(pdir, {"name": good, "runtime": "wasm"})
    assert load_manifest(pdir).name == good


@pytest.mark.parametrize("dirname", ["My Plugin", "UPPER", "-dash", "x" * 65])
def test_invalid_directory_name_without_name_key_is_an_error(tmp_path: Path,
                                                             dirname: str) -> None:
    pdir = plugin_dir(tmp_path, dirname)
    write_manifest(pdir, "runtime: wasm\n")
    exc = load_error(pdir)
    check_error(exc, pdir, field="name", plugin=dirname, says=("not a valid plugin name",))
    assert repr(dirname) in exc.message


# -- types and ranges --------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "field", "says"), [
    ("permissions: db.read\n", "permissions", "list"),
    ("permissions: [5]\n", "permissions.0", "string"),
    ("resources: {memory_mb: '64'}\n", "resources.memory_mb", "integer"),
    ("resources: {memory_mb: 64.5}\n", "resources.memory_mb", "integer"),
    ("resources: {memory_mb: true}\n", "resources.memory_mb", "integer"),
    ("resources: {call_timeout_ms: '30s'}\n", "resources.call_timeout_ms", "integer"),
    ("resources: {max_instances: [1]}\n", "resources.max_instances", "integer"),
    ("config: [1, 2]\n", "config", "dictionary"),
    ("config: hello\n", "config", "dictionary"),
    ("resources: 5\n", "resources", "dictionary"),
    ("resources: [64]\n", "resources", "dictionary"),
    ("allowed_hosts: {a: 1}\n", "allowed_hosts", "list"),
    ("allowed_hosts: api.example.com\n", "allowed_hosts", "list"),
    ("env: LANG\n", "env", "list"),
    ("description: [a, b]\n", "description", "string"),
    ("author: 42\n", "author", "string"),
    ("homepage: {url: x}\n", "homepage", "string"),
    ("handshake: cookie\n", "handshake", "dictionary"),
])
def test_wrong_types_are_errors(tmp_path: Path, extra: str, field: str, says: str) -> None:
    pdir = plugin_dir(tmp_path)
    write_manifest(pdir, wasm_yaml(extra))
    check_error(load_error(pdir), pdir, field=field, plugin="demo", says=(says,))


@pytest.mark.parametrize(("key", "value", "says"), [
    ("memory_mb", 0, "greater than or equal"),
    ("memory_mb", -64, "greater than or equal"),
    ("memory_mb", 1_000_000, "less than or equal"),
    ("call_timeout_ms", 0, "greater than or equal"),
    ("call_timeout_ms", -1, "greater than or equal"),
    ("max_instances", 0, "greater than or equal"),
    ("max_instances", -3, "greater than or equal"),
    ("start_timeout_ms", 0, "greater than or equal"),
    ("shutdown_timeout_ms", -1, "greater than or equal"),
])
def test_out_of_range_resources_are_errors(tmp_path: Path, key: str, value: int,
                                           says: str) -> None:
    pdir = plugin_dir(tmp_path)
    write_manifest(pdir, {"name": "demo", "runtime": "wasm", "resources": {key: value}})
    check_error(load_error(pdir), pdir, field=f"resources.{key}", plugin="demo", says=(says,))


def test_several_problems_are_all_mentioned(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path)
    write_manifest(pdir, wasm_yaml("resources: {memory_mb: 0, max_instances: '2'}\n"))
    exc = load_error(pdir)
    assert exc.field == "resources.memory_mb"
    assert "resources.max_instances" in exc.message


def test_unknown_permission_is_an_error(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path)
    write_manifest(pdir, wasm_yaml("permissions: [db.read, filesystem]\n"))
    exc = load_error(pdir)
    check_error(exc, pdir, field="permissions", plugin="demo",
                says=("unknown permission", "filesystem"))
    assert "db.read" in exc.message  # the known ones are listed as a hint


@pytest.mark.parametrize("perm", sorted(PERMISSIONS))
def test_every_known_permission_is_accepted(tmp_path: Path, perm: str) -> None:
    pdir = plugin_dir(tmp_path)
    write_manifest(pdir, {"name": "demo", "runtime": "wasm", "permissions": [perm]})
    assert load_manifest(pdir).manifest.permissions == [perm]


def test_permission_names_are_exactly_the_documented_shorthands() -> None:
    from plughost.host.grants import SHORTHANDS

    assert {"db.read", "db.write", "cache", "http", "email", "config", "plugin.call",
            "log", "file", "file.read", "file.write"} == PERMISSIONS == SHORTHANDS


# -- not a mapping, bad YAML, unreadable ---------------------------------------------------


@pytest.mark.parametrize(("content", "kind"), [
    ("- name: demo\n- runtime: wasm\n", "list"),
    ("just a string\n", "str"),
    ("42\n", "int"),
    ("", "NoneType"),
    ("# only a comment\n", "NoneType"),
    ("null\n", "NoneType"),
])
def test_manifest_that_is_not_a_mapping_is_an_error(tmp_path: Path, content: str,
                                                    kind: str) -> None:
    pdir = plugin_dir(tmp_path)
    write_manifest(pdir, content)
    check_error(load_error(pdir), pdir, field=None, plugin="demo", says=("mapping", kind))


@pytest.mark.parametrize(("content", "line"), [
    ("runtime: wasm\nversion: 1.0.0\n\tname: x\n", 3),             # tab indentation
    ("runtime: wasm\npermissions: [db.read, log\nversion: 1.0.0\n", 3),  # unclosed [
    ("runtime: wasm\nconfig: {a: 1\n\n\n", 5),                      # unclosed {
    ("name: x\n  runtime: wasm\n", 2),                             # bad indentation
])
def test_invalid_yaml_is_an_error_with_the_line_number(tmp_path: Path, content: str,
                                                       line: int) -> None:
    pdir = plugin_dir(tmp_path)
    write_manifest(pdir, content)
    exc = load_error(pdir)
    check_error(exc, pdir, field=None, plugin="demo", says=("invalid yaml",))
    assert f"line {line}," in exc.message, exc.message


def test_non_utf8_manifest_is_an_error(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path)
    (pdir / "plugin.yaml").write_bytes(b"runtime: wasm\ndescription: caf\xe9 \xff\xfe\n")
    exc = load_error(pdir)
    check_error(exc, pdir, field=None, plugin="demo", says=("cannot read", "utf-8"))


def test_unreadable_manifest_is_an_error(tmp_path: Path) -> None:
    # Tests may run as root, where chmod 000 does not stop reads: a directory in place of
    # the file is unreadable for everyone.
    pdir = plugin_dir(tmp_path)
    (pdir / "plugin.yaml").mkdir()
    check_error(load_error(pdir), pdir, field=None, plugin="demo", says=("cannot read",))


def test_missing_manifest_is_an_error(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path)
    check_error(load_error(pdir), pdir, field=None, plugin="demo", says=("cannot read",))


# -- paths -------------------------------------------------------------------------------------


def _entry_manifest(field: str, rel: str) -> dict[str, Any]:
    runtime = "wasm" if field == "wasm" else "grpc"
    return {"name": "demo", "runtime": runtime, field: rel}


PATH_FIELDS = pytest.mark.parametrize("field", ["wasm", "binary"])


@PATH_FIELDS
def test_relative_path_inside_is_resolved(tmp_path: Path, field: str) -> None:
    pdir = plugin_dir(tmp_path, files=("lib/x/entry",))
    write_manifest(pdir, _entry_manifest(field, "lib/x/entry"))
    assert load_manifest(pdir).entry == (pdir / "lib" / "x" / "entry").resolve()


@PATH_FIELDS
@pytest.mark.parametrize("rel", ["/etc/passwd", "/bin/sh", "//etc/passwd"])
def test_absolute_path_is_refused(tmp_path: Path, field: str, rel: str) -> None:
    pdir = plugin_dir(tmp_path)
    write_manifest(pdir, _entry_manifest(field, rel))
    check_error(load_error(pdir), pdir, field=field, plugin="demo", says=("absolute",))


@PATH_FIELDS
@pytest.mark.parametrize("rel", ["../x.wasm", "sub/../../x.wasm", "..", "./../x.wasm"])
def test_dotdot_escape_is_refused(tmp_path: Path, field: str, rel: str) -> None:
    (tmp_path / "x.wasm").write_bytes(b"outside")  # the escape target exists
    pdir = plugin_dir(tmp_path, files=("demo.wasm", "sub/keep"))
    write_manifest(pdir, _entry_manifest(field, rel))
    check_error(load_error(pdir), pdir, field=field, plugin="demo", says=("'..'",))


@PATH_FIELDS
def test_file_symlink_pointing_outside_is_refused(tmp_path: Path, field: str) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"evil")
    pdir = plugin_dir(tmp_path, files=())
    (pdir / "entry").symlink_to(outside)
    write_manifest(pdir, _entry_manifest(field, "entry"))
    exc = load_error(pdir)
    check_error(exc, pdir, field=field, plugin="demo", says=("outside the plugin dir",))


@PATH_FIELDS
def test_relative_file_symlink_pointing_outside_is_refused(tmp_path: Path, field: str) -> None:
    (tmp_path / "outside.bin").write_bytes(b"evil")
    pdir = plugin_dir(tmp_path, files=())
    (pdir / "entry").symlink_to(Path("..") / "outside.bin")
    write_manifest(pdir, _entry_manifest(field, "entry"))
    check_error(load_error(pdir), pdir, field=field, plugin="demo",
                says=("outside the plugin dir",))


@PATH_FIELDS
def test_directory_symlink_pointing_outside_is_refused(tmp_path: Path, field: str) -> None:
    outdir = tmp_path / "elsewhere"
    outdir.mkdir()
    (outdir / "entry").write_bytes(b"evil")
    pdir = plugin_dir(tmp_path, files=())
    (pdir / "lib").symlink_to(outdir, target_is_directory=True)
    write_manifest(pdir, _entry_manifest(field, "lib/entry"))
    check_error(load_error(pdir), pdir, field=field, plugin="demo",
                says=("outside the plugin dir",))


@PATH_FIELDS
def test_symlinks_pointing_inside_are_allowed(tmp_path: Path, field: str) -> None:
    pdir = plugin_dir(tmp_path, files=("real/entry",))
    (pdir / "link").symlink_to(Path("real") / "entry")           # file link, relative
    (pdir / "libdir").symlink_to(pdir / "real", target_is_directory=True)  # dir link, absolute
    write_manifest(pdir, _entry_manifest(field, "link"))
    assert load_manifest(pdir).entry == (pdir / "real" / "entry").resolve()
    write_manifest(pdir, _entry_manifest(field, "libdir/entry"))
    assert load_manifest(pdir).entry == (pdir / "real" / "entry").resolve()


def test_plugin_dir_reached_through_a_symlink_is_fine(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path / "real")
    write_manifest(pdir, "name: demo\nruntime: wasm\n")
    link = tmp_path / "linked"
    link.symlink_to(pdir, target_is_directory=True)
    lm = load_manifest(link)
    assert lm.name == "demo"
    assert lm.entry == (pdir / "demo.wasm").resolve()


@PATH_FIELDS
def test_missing_entry_file_is_an_error(tmp_path: Path, field: str) -> None:
    pdir = plugin_dir(tmp_path, files=())
    write_manifest(pdir, _entry_manifest(field, "nope/entry"))
    check_error(load_error(pdir), pdir, field=field, plugin="demo",
                says=("'nope/entry'", "does not exist"))


@PATH_FIELDS
def test_dangling_symlink_entry_is_an_error(tmp_path: Path, field: str) -> None:
    pdir = plugin_dir(tmp_path, files=())
    (pdir / "entry").symlink_to(pdir / "gone")
    write_manifest(pdir, _entry_manifest(field, "entry"))
    check_error(load_error(pdir), pdir, field=field, plugin="demo", says=("does not exist",))


def test_the_only_module_of_a_dir_is_its_default(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path, files=("other.wasm",))
    write_manifest(pdir, "runtime: wasm\n")
    assert load_manifest(pdir).entry == pdir / "other.wasm"


def test_missing_default_wasm_file_among_several_is_an_error(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path, files=("other.wasm", "third.wasm"))
    write_manifest(pdir, "runtime: wasm\n")
    check_error(load_error(pdir), pdir, field="wasm", plugin="demo",
                says=("'demo.wasm'", "does not exist"))


@PATH_FIELDS
@pytest.mark.parametrize("rel", ["sub", "sub/", "."])
def test_directory_where_a_file_is_expected_is_an_error(tmp_path: Path, field: str,
                                                        rel: str) -> None:
    pdir = plugin_dir(tmp_path, files=("sub/inner",))
    write_manifest(pdir, _entry_manifest(field, rel))
    check_error(load_error(pdir), pdir, field=field, plugin="demo",
                says=("is a directory, not a regular file",))


@pytest.mark.parametrize("binary", [None, ""])
def test_grpc_binary_defaults_to_the_plugin_name(tmp_path: Path, binary: str | None) -> None:
    """GoatFlow's default: the executable is named like the plugin."""
    pdir = plugin_dir(tmp_path, files=("demo", "demo.wasm"))
    data: dict[str, Any] = {"name": "demo", "runtime": "grpc"}
    if binary is not None:
        data["binary"] = binary
    write_manifest(pdir, data)
    assert load_manifest(pdir).entry == pdir / "demo"
    (pdir / "demo").unlink()
    check_error(load_error(pdir), pdir, field="binary", plugin="demo",
                says=("'demo'", "does not exist"))


def test_empty_wasm_path_is_an_error(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path)  # demo.wasm exists, so a silent fallback would load it
    write_manifest(pdir, "runtime: wasm\nwasm: ''\n")
    check_error(load_error(pdir), pdir, field="wasm", plugin="demo")


def test_manifest_symlinked_from_outside_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "foreign.yaml"
    outside.write_text("name: demo\nruntime: wasm\npermissions: [db.write, http]\n")
    pdir = plugin_dir(tmp_path)
    (pdir / "plugin.yaml").symlink_to(outside)
    with pytest.raises(ManifestError) as info:
        load_manifest(pdir)
    assert info.value.path == str(pdir / "plugin.yaml")
    assert "outside" in info.value.message


# -- unknown keys are warnings -----------------------------------------------------------------


def test_unknown_keys_are_warnings_not_errors(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path)
    write_manifest(pdir, wasm_yaml(
        "future_feature: {x: 1}\nmemory_mb: 64\nresources: {cpu: 2, memory_mb: 32}\n"
        "handshake: {protocol_flavour: 2}\nconfig: {anything: 1, goes: [2]}\n"))
    lm = load_manifest(pdir)
    assert lm.manifest.resources.memory_mb == 32
    assert lm.manifest.config == {"anything": 1, "goes": [2]}
    text = "\n".join(lm.warnings)
    assert len(lm.warnings) == 4, lm.warnings
    for key in ("'future_feature'", "'memory_mb'", "'resources.cpu'",
                "'handshake.protocol_flavour'"):
        assert key in text
    assert all("unknown key" in w for w in lm.warnings)
    # config is free-form: its keys are the plugin's business, never "unknown"
    assert "anything" not in text and "goes" not in text


def test_binary_on_a_wasm_plugin_is_a_warning(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path)
    write_manifest(pdir, wasm_yaml("binary: bin/not-there\n"))
    lm = load_manifest(pdir)
    assert lm.manifest.runtime == "wasm"
    assert lm.entry == (pdir / "demo.wasm").resolve()
    assert len(lm.warnings) == 1 and "'binary'" in lm.warnings[0]


def test_wasm_on_a_grpc_plugin_is_a_warning(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path, files=("srv",))
    write_manifest(pdir, "runtime: grpc\nbinary: srv\nwasm: not-there.wasm\n")
    lm = load_manifest(pdir)
    assert lm.entry == (pdir / "srv").resolve()
    assert len(lm.warnings) == 1 and "'wasm'" in lm.warnings[0]


def test_a_clean_manifest_has_no_warnings(tmp_path: Path) -> None:
    pdir = plugin_dir(tmp_path)
    write_manifest(pdir, wasm_yaml("config: {x: 1}\nresources: {memory_mb: 8}\n"))
    assert load_manifest(pdir).warnings == ()


# -- registration ---------------------------------------------------------------------

FULL_REGISTRATION: dict[str, Any] = {
    "name": "stats",
    "version": "1.4.0",
    "description": "Counts things",
    "author": "Jane",
    "license": "MIT",
    "homepage": "https://example.com",
    "routes": [{"method": "POST", "path": "/count", "handler": "count"},
               {"path": "/list", "handler": "list"}],
    "menu_items": [{"id": "stats", "label": "Stats", "path": "/stats", "order": 2,
                    "children": [{"id": "week", "label": "stats.week"}]}],
    "widgets": [{"id": "w1", "title": "Counter", "handler": "widget", "location": "dashboard",
                 "size": "small", "order": 3}],
    "jobs": [{"id": "j1", "handler": "tick", "schedule": "*/5 * * * *", "enabled": False,
              "timeout": "30s"}],
    "templates": [{"name": "ticket_view", "override": True}],
    "i18n": {"en": {"hi": "hello"}, "de": {"hi": "hallo"}},
    "error_codes": [{"code": "E1", "message": "bad"}],
    "min_host_version": "0.1.0",
    "permissions": ["db.read", "log"],
}


def test_full_registration_parses_into_typed_values() -> None:
    reg = parse_registration(json.dumps(FULL_REGISTRATION).encode(), expected_name="stats")
    assert isinstance(reg, Registration)
    assert (reg.name, reg.version, reg.description, reg.author, reg.license, reg.homepage) == (
        "stats", "1.4.0", "Counts things", "Jane", "MIT", "https://example.com")
    assert all(isinstance(r, Route) for r in reg.routes)
    assert [(r.method, r.path, r.handler) for r in reg.routes] == [
        ("POST", "/count", "count"), ("GET", "/list", "list")]
    (m,) = reg.menu_items
    assert (m.id, m.label, m.path, m.order, m.children[0].label) == (
        "stats", "Stats", "/stats", 2, "stats.week")
    (w,) = reg.widgets
    assert isinstance(w, Widget)
    assert (w.id, w.title, w.handler, w.location, w.size, w.order) == (
        "w1", "Counter", "widget", "dashboard", "small", 3)
    (j,) = reg.jobs
    assert isinstance(j, Job)
    assert (j.id, j.handler, j.schedule, j.enabled, j.timeout) == (
        "j1", "tick", "*/5 * * * *", False, "30s")
    assert [(t.name, t.override) for t in reg.templates] == [("ticket_view", True)]
    assert reg.i18n == {"en": {"hi": "hello"}, "de": {"hi": "hallo"}}
    assert [(e.code, e.message, e.http_status) for e in reg.error_codes] == [("E1", "bad", 0)]
    assert reg.min_host_version == "0.1.0"
    assert reg.permissions == ["db.read", "log"]
    assert not reg.model_extra


def test_minimal_registration_gets_defaults() -> None:
    reg = parse_registration(b'{"name": "a"}', expected_name="a")
    assert (reg.version, reg.routes, reg.widgets, reg.jobs, reg.i18n, reg.permissions) == (
        "0.0.0", [], [], [], {}, [])


def test_registration_numeric_version_becomes_text() -> None:
    reg = parse_registration(b'{"name": "a", "version": 2.5}', expected_name="a")
    assert reg.version == "2.5"


def test_registration_unknown_fields_are_kept_and_ignored() -> None:
    data = dict(FULL_REGISTRATION)
    data["future"] = {"x": [1, 2]}
    data["routes"] = [{"path": "/p", "handler": "h", "auth": "admin"}]
    reg = parse_registration(json.dumps(data).encode(), expected_name="stats")
    assert reg.model_extra == {"future": {"x": [1, 2]}}
    assert reg.routes[0].model_extra == {"auth": "admin"}
    assert reg.routes[0].handler == "h"


@pytest.mark.parametrize(("raw", "says"), [
    (b"{not json", "not valid json"),
    (b"", "not valid json"),
    (b'{"name": "a",}', "not valid json"),
    (b'{"name": "\xc3\x28"}', "not valid json"),
    (b'["name", "a"]', "must be a json object, got list"),
    (b'"a"', "must be a json object, got str"),
    (b"null", "must be a json object, got nonetype"),
])
def test_registration_that_is_not_a_json_object_is_an_error(raw: bytes, says: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_registration(raw, expected_name="a", path="/plugins/a.wasm")
    exc = info.value
    assert exc.plugin == "a"
    assert exc.path == "/plugins/a.wasm"
    assert "registration" in exc.message
    assert says in exc.message.lower()


@pytest.mark.parametrize(("data", "field"), [
    ({"name": "a", "routes": "x"}, "routes"),
    ({"name": "a", "routes": [{"path": "/x"}]}, "routes.0.handler"),
    ({"name": "a", "widgets": [{"id": "w", "handler": "h", "order": "first"}]},
     "widgets.0.order"),
    ({"name": "a", "jobs": [{"id": "j"}]}, "jobs.0.handler"),
    ({"name": "a", "i18n": ["en"]}, "i18n"),
    ({"name": "a", "permissions": "log"}, "permissions"),
    ({"version": "1"}, "name"),
    ({"name": 7}, "name"),
])
def test_registration_wrong_field_type_is_an_error(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_registration(json.dumps(data).encode(), expected_name="a", path="/p/a.wasm")
    exc = info.value
    assert exc.plugin == "a" and exc.path == "/p/a.wasm"
    assert f"field {field}:" in exc.message, exc.message


def test_registration_name_mismatch_is_an_error_naming_both() -> None:
    with pytest.raises(ManifestError) as info:
        parse_registration(b'{"name": "admin"}', expected_name="stats", path="/p/stats.wasm")
    exc = info.value
    assert exc.plugin == "stats"  # the host's name, not the self-declared one
    assert "'admin'" in exc.message and "'stats'" in exc.message
    assert exc.path == "/p/stats.wasm"


@pytest.mark.parametrize(("raw", "field"), [
    (b'{"name": "a", "routes": "x"}', "routes"),
    (b'{"name": "b"}', "name"),
])
def test_registration_errors_name_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_registration(raw, expected_name="a")
    assert info.value.field == field


def test_registration_boolean_version_is_an_error() -> None:
    with pytest.raises(ManifestError):
        parse_registration(b'{"name": "a", "version": true}', expected_name="a")


def test_registration_name_check_is_exact() -> None:
    for declared in ("A", "a ", " a", "a.wasm"):
        with pytest.raises(ManifestError):
            parse_registration(json.dumps({"name": declared}).encode(), expected_name="a")

