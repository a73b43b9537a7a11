"""The arguments a plugin's route handler gets: GoatFlow's envelope, key for key
(docs/server.md, "Routes").

One flat JSON object, built in this order: path parameters (strings); query parameters (a
single value as a string, a repeated key as a list of strings, over equal path names);
the body when the request declares a positive Content-Length (at most 4 MiB): a JSON
object merged key by key (anything else in a JSON body is ignored), form fields merged
like query parameters, any other body kept as `_body` text with its `_content_type`; then
every envelope key the client sent is removed, and the host's are set: `_method`, `_path`
(without the query) and the caller's identity (callers.Caller.envelope). Encoded as Go
encodes a map (sorted keys, Go's escaping and number forms), so a plugin sees the bytes
GoatFlow would send it.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from ..callers import ENVELOPE_KEYS, Caller, anonymous_envelope

#: GoatFlow's cap on a route's request body.
MAX_ROUTE_BODY = 4 * 1024 * 1024


def declared_length(request: Request) -> int:
    """The body length the request declares (0: none, or not declared: GoatFlow reads a
    body only when Content-Length is positive)."""
    raw = request.headers.get("content-length", "")
    return int(raw) if raw.isdigit() else 0


def _multi(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Query-style pairs: one value a string, a repeated key a list."""
    grouped: dict[str, list[str]] = {}
    for k, v in pairs:
        grouped.setdefault(k, []).append(v)
    return {k: vs[0] if len(vs) == 1 else vs for k, vs in grouped.items()}


def _go_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # Go: "cannot unmarshal number into float64"
        raise ValueError(text)
    return value


def _refuse(name: str) -> Any:
    raise ValueError(name)


def json_object(raw: bytes) -> dict[str, Any] | None:
    """A JSON object decoded as Go decodes into `map[string]any` (every number a
    float64), or None for anything else."""
    try:
        value = json.loads(raw, parse_int=_go_float, parse_float=_go_float,
                           parse_constant=_refuse)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def language(request: Request, caller: Caller | None) -> str:
    """The caller's UI language, else the first of the request's Accept-Language."""
    if caller is not None and caller.lang:
        return caller.lang
    first = request.headers.get("accept-language", "").split(",")[0]
    tag = first.split(";")[0].strip().split("-")[0].lower()
    return tag if tag.isalpha() and len(tag) <= 8 else ""


#: The envelope keys as Go's encoding/json matches them: case-insensitively, with Unicode
#: folding (U+017F long s is `s`, U+212A Kelvin is `k`), the last matching key winning. A
#: client key that folds onto one would override the host's in a plugin that decodes
#: into a struct, so every such spelling is the envelope's.
_FOLDED_ENVELOPE = frozenset(k.casefold() for k in ENVELOPE_KEYS)


def strip_client_envelope(args: dict[str, Any]) -> None:
    for key in [k for k in args if k.casefold() in _FOLDED_ENVELOPE]:
        del args[key]


def identity(request: Request, caller: Caller | None, *, with_org: bool) -> dict[str, Any]:
    lang = language(request, caller)
    if caller is None:
        return anonymous_envelope(lang)
    out = caller.envelope(with_org=with_org)
    if lang:
        out["_lang"] = lang
    return out


def route_args(request: Request, params: dict[str, str], body: bytes,
               caller: Caller | None, *, with_org: bool = True) -> dict[str, Any]:
    """The envelope for a route call (`body`: what was read, b"" when none was declared)."""
    args: dict[str, Any] = dict(params)
    args.update(_multi(request.query_params.multi_items()))
    raw_text: str | None = None
    ctype = request.headers.get("content-type", "")
    if body:
        lowered = ctype.lower()
        if "application/json" in lowered:
            obj = json_object(body)
            if obj is not None:
                args.update(obj)
        elif "application/x-www-form-urlencoded" in lowered:
            text = body.decode("utf-8", "replace")
            args.update(_multi(parse_qsl(text, keep_blank_values=True)))
        else:
            raw_text = body.decode("utf-8", "replace")
    strip_client_envelope(args)
    if raw_text is not None:
        args["_body"], args["_content_type"] = raw_text, ctype
    args["_method"], args["_path"] = request.method, request.url.path
    args.update(identity(request, caller, with_org=with_org))
    return args


def direct_call_args(request: Request, body: dict[str, Any], caller: Caller | None, *,
                     with_org: bool = True) -> dict[str, Any]:
    """The envelope of the management API's direct call: the body's object, the client's
    envelope keys removed, plus the identity (no `_method`/`_path`)."""
    args = dict(body)
    strip_client_envelope(args)
    args.update(identity(request, caller, with_org=with_org))
    return args
