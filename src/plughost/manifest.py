"""plugin.yaml: parsed once into a typed `Manifest`, with every rule enforced
(docs/plugin-authors.md, "plugin.yaml").

Errors name the file, the field and the problem. Unknown keys are kept and reported as
warnings, so a manifest written for a newer plughost still loads on this one.

GoatFlow's manifest schema is read natively: every GoatFlow key is known (no warning), its
Go duration strings (`call_timeout: 5s`) are the same settings as plughost's millisecond
keys (`call_timeout_ms`), `resources.permissions` holds GoatFlow's `{type, access, scope}`
objects, and the `template` runtime is a plugin with templates and no code. plughost's own
keys are extensions (docs/plugin-authors.md lists which are which).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .durations import parse_go_duration
from .errors import ManifestError
from .inputs import MANIFEST_MAX_BYTES, check_regular, describe, read_regular
from .yaml_input import compose, load_yaml

MANIFEST_FILE = "plugin.yaml"

NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
_NAME_RE = re.compile(NAME_PATTERN)

#: Permission names a manifest may grant, and the host functions they unlock.
PERMISSIONS: frozenset[str] = frozenset(
    {"db.read", "db.write", "cache", "http", "email", "config", "plugin.call", "log",
     "file", "file.read", "file.write"}
)


def is_valid_name(name: str) -> bool:
    return _NAME_RE.fullmatch(name) is not None


class _Strict(BaseModel):
    # strict: a string where a number belongs is an error, not a silent conversion.
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class Permission(_Strict):
    """GoatFlow's permission object: a host-function family, an access level, a scope."""

    type: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    access: str = ""  # "", "read", "write", "readwrite", "hard_delete"
    scope: list[str] = Field(default_factory=list)


#: GoatFlow's Go-duration keys and the plughost millisecond keys they set.
_DURATIONS = {"call_timeout": "call_timeout_ms", "init_timeout": "start_timeout_ms",
              "shutdown_timeout": "shutdown_timeout_ms"}


class Resources(_Strict):
    memory_mb: int = Field(64, ge=1, le=4096)
    call_timeout_ms: int = Field(30_000, ge=1, le=3_600_000)
    max_instances: int = Field(1, ge=1, le=256)
    #: a gRPC plugin's start, handshake to Init (GoatFlow's `init_timeout`)
    start_timeout_ms: int = Field(10_000, ge=1, le=600_000)
    shutdown_timeout_ms: int = Field(5_000, ge=0, le=600_000)
    #: GoatFlow's permission objects (the flat `permissions:` list is plughost's shorthand)
    permissions: list[Permission] = Field(default_factory=list)
    #: the file-storage quota; 0: the default (500 MiB)
    max_file_storage_bytes: int = Field(0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _go_durations(cls, data: Any) -> Any:
        """`call_timeout: 5s` is `call_timeout_ms: 5000`; both at once is an error. A zero
        duration is Go's "not set": the default applies."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for go_key, ms_key in _DURATIONS.items():
            if go_key not in data:
                continue
            if ms_key in data:
                raise ValueError(f"give {go_key} or {ms_key}, not both")
            raw = data.pop(go_key)
            if isinstance(raw, int | float) and not isinstance(raw, bool):
                raw = str(raw)  # YAML's 5 is Go's "5": a duration without its unit
            try:
                seconds = parse_go_duration(raw)
            except ValueError as exc:
                raise ValueError(f"{go_key}: {exc}") from None
            if seconds < 0:
                raise ValueError(f"{go_key}: {raw!r} is negative")
            if seconds > 0:
                data[ms_key] = max(1, math.ceil(round(seconds * 1000, 6)))
        return data


class Handshake(_Strict):
    """go-plugin's handshake, for hosting foreign go-plugin plugins (grpc only): the magic
    cookie, and the app protocol version(s) the host accepts (go-plugin's
    `PLUGIN_PROTOCOL_VERSIONS`; the plugin picks the newest it speaks)."""

    magic_cookie_key: str = "PLUGHOST_PLUGIN"
    magic_cookie_value: str = "v1"
    protocol_version: int | list[int] = 1

    @field_validator("protocol_version")
    @classmethod
    def _positive(cls, v: int | list[int]) -> int | list[int]:
        values = v if isinstance(v, list) else [v]
        if not values or any(isinstance(x, bool) or x < 1 for x in values):
            raise ValueError("protocol_version is a positive integer or a list of them")
        return v

    @property
    def versions(self) -> tuple[int, ...]:
        """The accepted app protocol versions, ascending."""
        v = self.protocol_version
        return tuple(sorted(set(v if isinstance(v, list) else [v])))


class SandboxSettings(_Strict):
    """What a gRPC plugin's sandbox lets it do (where bubblewrap confines it)."""

    #: Reach the network directly (its own network namespace otherwise, with nothing in
    #: it). Host functions such as `http_request` do not need this: the host makes them.
    network: bool = False


class Manifest(_Strict):
    name: str
    version: str = "0.0.0"
    runtime: Literal["wasm", "grpc", "template"]
    binary: str | None = None
    wasm: str | None = None
    description: str = ""
    author: str = ""
    license: str = ""
    homepage: str = ""
    # GoatFlow's informational and marketplace keys (kept, not acted on by the loader)
    icon: str = ""
    dependencies: list[str] = Field(default_factory=list)
    type: Literal["plugin", "theme"] = "plugin"
    sidecars: list[dict[str, Any]] = Field(default_factory=list)
    permissions: list[str] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    allowed_hosts: list[str] = Field(default_factory=list)
    env: list[str] = Field(default_factory=list)
    handshake: Handshake = Field(default_factory=Handshake)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, v: Any) -> Any:
        # YAML reads `version: 1.2` as a float; a version is text whatever it looks like.
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("name")
    @classmethod
    def _name_rule(cls, v: str) -> str:
        if not is_valid_name(v):
            raise ValueError(f"{v!r} is not a valid plugin name (must match {NAME_PATTERN})")
        return v

    @field_validator("permissions")
    @classmethod
    def _known_permissions(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - PERMISSIONS)
        if unknown:
            raise ValueError(
                f"unknown permission(s) {unknown}; known: {sorted(PERMISSIONS)}"
            )
        return v


@dataclass(frozen=True)
class LoadedManifest:
    """A validated manifest plus where it came from and what it resolves to."""

    manifest: Manifest
    path: Path  # the plugin.yaml file
    plugin_dir: Path
    entry: Path  # the wasm module or grpc executable, resolved inside plugin_dir
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return self.manifest.name


def resolve_inside(plugin_dir: Path, rel: str, *, field_name: str, manifest_path: Path,
                   plugin: str | None) -> Path:
    """Resolve `rel` against `plugin_dir`, refusing anything that could leave it.

    Checked lexically (absolute, `..`) and then after resolving symlinks, because a link
    inside the directory may point anywhere.
    """

    def fail(problem: str) -> ManifestError:
        return ManifestError(problem, plugin=plugin, path=manifest_path, field=field_name)

    if not rel or "\x00" in rel:
        raise fail("must be a non-empty relative path")
    p = Path(rel)
    if p.is_absolute() or rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        raise fail(f"{rel!r} is an absolute path; paths must be relative to the plugin dir")
    if ".." in p.parts or ".." in rel.replace("\\", "/").split("/"):
        raise fail(f"{rel!r} contains '..'; paths must stay inside the plugin dir")
    try:
        root = plugin_dir.resolve()
        target = (root / p).resolve()
    except (OSError, RuntimeError) as exc:  # a name past the OS limit, a symlink loop
        raise fail(f"{rel[:80]!r} cannot be resolved: "
                   f"{describe(exc) if isinstance(exc, OSError) else exc}") from None
    if not target.is_relative_to(root):
        raise fail(f"{rel!r} resolves to {target}, outside the plugin dir {root}")
    return target


def _format_validation(err: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(manifest)"
        msg = e["msg"]
        if e["type"] == "missing":
            msg = "is required"
        out.append((loc, msg))
    return out


def _unknown_keys(model: BaseModel, prefix: str = "") -> list[str]:
    keys = [f"{prefix}{k}" for k in (model.model_extra or {})]
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            keys += _unknown_keys(value, f"{prefix}{name}.")
    return keys


def parse_manifest(data: Any, *, plugin_dir: Path, manifest_path: Path) -> LoadedManifest:
    """Validate already-parsed YAML `data` for the plugin in `plugin_dir`."""
    default_name = plugin_dir.name
    if not isinstance(data, dict):
        raise ManifestError(
            f"must be a YAML mapping, got {type(data).__name__}",
            plugin=default_name, path=manifest_path,
        )
    data = dict(data)
    if data.get("name") in (None, ""):  # GoatFlow: an empty name is the directory's
        data["name"] = default_name
    if isinstance(data.get("runtime"), str):
        data["runtime"] = data["runtime"].lower()  # as GoatFlow's packaging reads it
    if data.get("runtime") in (None, ""):
        # Unambiguous manifests need not repeat what their keys already say; with neither
        # key, a directory with a module is wasm and one without code is a template
        # (GoatFlow's packaging: an empty runtime is `template`).
        if "wasm" in data and "binary" not in data:
            data["runtime"] = "wasm"
        elif "binary" in data and "wasm" not in data:
            data["runtime"] = "grpc"
        elif "wasm" not in data and "binary" not in data:
            data["runtime"] = "wasm" if _modules(plugin_dir) else "template"
    # errors name the plugin by its declared name, or by its dir when that is empty
    plugin = data["name"] if isinstance(data["name"], str) and data["name"] else default_name
    try:
        m = Manifest.model_validate(data)
    except ValidationError as exc:
        problems = _format_validation(exc)
        loc, msg = problems[0]
        more = f" (and {len(problems) - 1} more: " + "; ".join(
            f"{loc2}: {msg2}" for loc2, msg2 in problems[1:]) + ")" if len(problems) > 1 else ""
        raise ManifestError(msg + more, plugin=plugin, path=manifest_path, field=loc) from None

    warnings = [f"unknown key {k!r} ignored" for k in _unknown_keys(m)]
    if m.runtime == "template":  # templates and assets, no code: the entry is the dir
        return LoadedManifest(m, manifest_path, plugin_dir, plugin_dir, tuple(warnings))
    if m.runtime == "wasm":
        if m.binary is not None:
            warnings.append("'binary' is ignored for a wasm plugin")
        rel, field_name = (m.wasm if m.wasm is not None
                           else _default_module(plugin_dir, m.name)), "wasm"
    else:
        if m.wasm is not None:
            warnings.append("'wasm' is ignored for a grpc plugin")
        # GoatFlow's default: the executable is named like the plugin
        rel, field_name = (m.binary or m.name), "binary"
    entry = resolve_inside(plugin_dir, rel, field_name=field_name,
                           manifest_path=manifest_path, plugin=m.name)
    try:
        check_regular(entry)
    except FileNotFoundError:
        raise ManifestError(f"{rel!r} does not exist", plugin=m.name,
                            path=manifest_path, field=field_name) from None
    except OSError as exc:  # a directory, FIFO, device, a name too long...
        raise ManifestError(f"{rel[:80]!r} {describe(exc)}", plugin=m.name,
                            path=manifest_path, field=field_name) from None
    return LoadedManifest(m, manifest_path, plugin_dir, entry, tuple(warnings))


def _modules(plugin_dir: Path) -> list[str]:
    """The `.wasm` files at the top of a plugin dir, sorted."""
    try:
        return sorted(e.name for e in plugin_dir.iterdir()
                      if e.name.lower().endswith(".wasm") and not e.name.startswith("."))
    except OSError:
        return []


def _default_module(plugin_dir: Path, name: str) -> str:
    """`<name>.wasm`, else the dir's only `.wasm` (GoatFlow packs whatever it finds)."""
    wanted = f"{name}.wasm"
    if (plugin_dir / wanted).exists():
        return wanted
    found = _modules(plugin_dir)
    return found[0] if len(found) == 1 else wanted


def _keep_version_text(text: str, data: Any) -> None:
    """`version: 1.10` is a float to YAML (1.1); a version is the text as written."""
    if not isinstance(data, dict) or not isinstance(data.get("version"), int | float) \
            or isinstance(data.get("version"), bool):
        return
    node = compose(text)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == "version" and isinstance(value, yaml.ScalarNode):
                data["version"] = value.value


def load_manifest(plugin_dir: Path) -> LoadedManifest:
    """Read and validate `plugin_dir/plugin.yaml` (at most 256 KiB, a regular file)."""
    path = plugin_dir / MANIFEST_FILE
    try:
        inside = path.resolve().is_relative_to(plugin_dir.resolve())
        raw = read_regular(path, MANIFEST_MAX_BYTES) if inside else b""
    except (OSError, RuntimeError) as exc:
        why = describe(exc) if isinstance(exc, OSError) else str(exc)
        raise ManifestError(f"cannot read: {why}", plugin=plugin_dir.name, path=path) from None
    if not inside:
        raise ManifestError(f"is a symlink to {path.resolve()}, outside the plugin dir",
                            plugin=plugin_dir.name, path=path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"cannot read: not UTF-8 text: {exc}", plugin=plugin_dir.name,
                            path=path) from None
    data = load_yaml(text, plugin=plugin_dir.name, path=path)
    _keep_version_text(text, data)
    return parse_manifest(data, plugin_dir=plugin_dir, manifest_path=path)
