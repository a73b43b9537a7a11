"""The registration: what a plugin says about itself, for both runtimes
(docs/plugin-authors.md, "The registration").

Parsed once from the JSON a plugin returns (`gk_register` or the `Register` RPC), at most
1 MiB of it; any malformed input (deep nesting, huge numbers, bad UTF-8) is the plugin's
`ManifestError`. Unknown fields are kept and ignored. The name is checked against the
discovered name: identity is decided by the host, never self-declared.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ManifestError
from .inputs import REGISTRATION_MAX_BYTES
from .manifest import NAME_PATTERN, PERMISSIONS, Permission, is_valid_name


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


#: One path segment that is a parameter: `{name}`, `{name:path}` (spans segments) or gin's
#: `:name`. Groups: 1 name, 2 ":path", 3 the gin name.
ROUTE_PARAM = re.compile(r"^(?:\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}|:([A-Za-z_][A-Za-z0-9_]*))$")


class Route(_Open):
    method: str = "GET"
    path: str
    handler: str
    #: GoatFlow's middleware names (routing.py); none: a public route
    middleware: list[str] = Field(default_factory=list)
    description: str = ""

    @field_validator("path")
    @classmethod
    def _unique_params(cls, v: str) -> str:
        # `/a/{id}/b/{id}` cannot say which id is which (and is no valid pattern): refused
        # here, when the plugin registers, not as a 500 on the first request.
        names = [m[1] or m[3] for m in map(ROUTE_PARAM.match, v.strip("/").split("/")) if m]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"route {v!r} repeats the parameter name(s) {dupes}")
        return v


class Widget(_Open):
    id: str
    title: str = ""
    description: str = ""
    handler: str
    location: str = ""
    size: str = ""
    order: int = 0
    refreshable: bool = False
    refresh_sec: int = 0


class MenuItem(_Open):
    """GoatFlow's MenuItemSpec: `label` is text or an i18n key; `location` one of agent,
    admin, customer, profile; sorted by `order`, then plugin name, then id."""

    id: str = ""
    label: str = ""
    icon: str = ""
    path: str = ""
    location: str = ""
    parent: str = ""
    order: int = 0
    children: list[MenuItem] = Field(default_factory=list)


class Template(_Open):
    """GoatFlow's TemplateSpec: only `override: true` entries replace a host template."""

    name: str
    path: str = ""
    override: bool = False


class ErrorCode(_Open):
    """GoatFlow's ErrorCodeSpec, registered as `<plugin>:<code>`."""

    code: str
    message: str = ""
    http_status: int = 0


class Job(_Open):
    id: str
    handler: str
    schedule: str = ""
    #: GoatFlow's default: a job is scheduled only when it says `"enabled": true`
    enabled: bool = False
    timeout: str | int | None = None


class RegistrationResources(_Open):
    """GoatFlow's `ResourceRequest`: the permissions a plugin asks for and its file quota
    (its memory and timeouts are not taken from here: the manifest sets those)."""

    permissions: list[Permission] = Field(default_factory=list)
    max_file_storage_bytes: int = Field(0, ge=0)


class Registration(_Open):
    name: str
    version: str = "0.0.0"
    description: str = ""
    author: str = ""
    license: str = ""
    homepage: str = ""
    routes: list[Route] = Field(default_factory=list)
    menu_items: list[MenuItem] = Field(default_factory=list)
    widgets: list[Widget] = Field(default_factory=list)
    jobs: list[Job] = Field(default_factory=list)
    templates: list[Template] = Field(default_factory=list)
    i18n: dict[str, Any] = Field(default_factory=dict)
    error_codes: list[ErrorCode] = Field(default_factory=list)
    min_host_version: str = ""
    #: true: the host adds no `_org_id`/`org_id` to a route's arguments
    skip_org_injection: bool = False
    #: the function asked before an event-stream subscription (empty: any agent may)
    event_authorizer: str = ""
    #: plughost's flat permission names (the manifest's shorthands); legacy in GoatFlow
    permissions: list[str] = Field(default_factory=list)
    resources: RegistrationResources = Field(default_factory=RegistrationResources)

    @field_validator("permissions")
    @classmethod
    def _known_shorthands(cls, v: list[str]) -> list[str]:
        # GoatFlow ignores this legacy list; plughost reads its own shorthands from it and
        # ignores the rest, as GoatFlow does, rather than failing the load.
        return [p for p in v if p in PERMISSIONS]


def parse_registration(raw: bytes, *, expected_name: str | None, path: str | None = None,
                       shown_name: str | None = None) -> Registration:
    """Decode and validate registration JSON; its name must be `expected_name`, or, for a
    module that is named by its registration (None), any valid plugin name. Errors name
    the plugin `shown_name` (default: `expected_name`)."""
    shown = shown_name or expected_name

    def fail(problem: str, field: str | None = None) -> ManifestError:
        return ManifestError(f"registration {problem}", plugin=shown, path=path,
                             field=field)

    if len(raw) > REGISTRATION_MAX_BYTES:
        raise fail(f"is {len(raw)} bytes, over the cap of {REGISTRATION_MAX_BYTES}")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise fail("nests too deeply") from None
    except ValueError as exc:  # bad JSON, bad UTF-8, a number past Python's digit limit
        raise fail(f"is not valid JSON: {_short(str(exc))}") from None
    if not isinstance(data, dict):
        raise fail(f"must be a JSON object, got {type(data).__name__}")
    if isinstance(data.get("version"), int | float) and not isinstance(data["version"], bool):
        data["version"] = str(data["version"])
    try:
        reg = Registration.model_validate(data)
    except RecursionError:
        raise fail("nests too deeply") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise fail(f"field {loc}: {first['msg']}", field=loc) from None
    if expected_name is None:
        if not is_valid_name(reg.name):
            raise fail(f"name {reg.name[:80]!r} is not a valid plugin name (must match "
                       f"{NAME_PATTERN})", field="name")
    elif reg.name != expected_name:
        raise fail(f"names the plugin {reg.name!r}, but it was discovered as "
                   f"{expected_name!r}; a plugin cannot choose its own identity", field="name")
    return reg


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
