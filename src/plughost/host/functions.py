"""The built-in host functions that need no backend: GoatFlow's names, argument shapes and
result shapes (docs/plugin-authors.md, "Host functions").

Each handler gets the caller's `HostContext` and the decoded JSON args, checks them, and
returns what GoatFlow returns; dispatch writes it as Go's JSON. Arguments are read as Go
reads them into its structs: a key matches case-insensitively, unknown keys are ignored,
a missing key is the zero value, a wrong type is an error.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import HostCallError, PlughostError, PluginDisabled, PluginNotFound
from . import chain
from .api import HostAPI
from .gojson import raw_member

if TYPE_CHECKING:
    from .dispatch import HostContext, HostFunctions

_ZERO: dict[type, Any] = {str: "", int: 0, float: 0.0, bool: False, dict: None, list: None}


def args_object(ctx: HostContext, args: Any, fn: str) -> dict[str, Any]:
    if not isinstance(args, dict):
        raise HostCallError(f"{fn}: the arguments must be a JSON object",
                            plugin=ctx.plugin)
    return args


def field(ctx: HostContext, a: dict[str, Any], key: str, kind: type, fn: str,
          *, required: bool = False) -> Any:
    """`a[key]` as Go's decoder finds it (exact key first, then case-insensitively), of
    `kind`; absent or null: Go's zero value (or an error when `required`)."""
    value = a.get(key)
    if value is None and key not in a:
        lowered = key.lower()
        value = next((v for k, v in a.items() if k.lower() == lowered), None)
    if value is None:
        if required:
            raise HostCallError(f"{fn}: {key!r} is required", plugin=ctx.plugin)
        return _ZERO[kind]
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if kind is int and isinstance(value, float) and value.is_integer():
        value, ok = int(value), True
    if not ok:
        raise HostCallError(f"{fn}: {key!r} must be {_KIND_NAMES[kind]}", plugin=ctx.plugin)
    if required and kind is str and not value:
        raise HostCallError(f"{fn}: {key!r} must be a non-empty string", plugin=ctx.plugin)
    return value


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               dict: "an object", list: "an array"}


def b64(ctx: HostContext, a: dict[str, Any], key: str, fn: str) -> bytes | None:
    """A Go `[]byte` field: standard padded base64; None when absent or null."""
    text = field(ctx, a, key, str, fn) if a.get(key) is not None else None
    if text is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HostCallError(f"{fn}: {key!r} must be standard base64 (a Go []byte)",
                            plugin=ctx.plugin) from None


def b64text(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


# -- no permission needed ---------------------------------------------------------------

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "warning": logging.WARNING, "error": logging.ERROR}


def log(ctx: HostContext, args: Any) -> dict[str, bool]:
    """`{"level", "message", "fields"}`: a line in the plugin's log; any unknown level is
    info, as in GoatFlow. Fields are appended as `key=value`."""
    a = args_object(ctx, args, "log")
    level = a.get("level")
    if isinstance(level, int) and not isinstance(level, bool):  # plughost's numeric levels
        lvl = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING}.get(level, logging.ERROR)
    else:
        lvl = _LEVELS.get(str(level or "info").lower(), logging.INFO)
    message = field(ctx, a, "message", str, "log")
    fields = field(ctx, a, "fields", dict, "log") or {}
    texts = {k: v if isinstance(v, str) else json.dumps(v) for k, v in sorted(fields.items())}
    if texts:  # in the line too, for a reader of the text log
        message += " " + " ".join(f"{k}={v}" for k, v in texts.items())
    ctx.log.log(lvl, message, source="plugin", fields=texts)
    return {"ok": True}


def config_get(ctx: HostContext, args: Any, app_config: dict[str, str] | None = None
               ) -> dict[str, Any]:
    """`{"key"}` -> `{"value"}`: the plugin's own `config:` first, then the host's
    (`app.name`, `app.timezone`, `app.env`); the key rules come first."""
    a = args_object(ctx, args, "config_get")
    key = field(ctx, a, "key", str, "config_get", required=True)
    ctx.granted.check_config_key(key)
    if key in ctx.config:
        return {"value": ctx.config[key]}
    if app_config is not None and key in app_config:
        return {"value": app_config[key]}
    raise HostCallError(f"unknown config key: {key}", plugin=ctx.plugin)


def go_rfc3339_nano(ns: int, offset_seconds: int) -> str:
    """Go's `time.RFC3339Nano` of a Unix time in nanoseconds at a UTC offset: nanosecond
    fraction with trailing zeros dropped (none when zero), `Z` for UTC, else `+hh:mm`."""
    secs, frac = divmod(ns, 1_000_000_000)
    tz = datetime.timezone(datetime.timedelta(seconds=offset_seconds))
    stamp = datetime.datetime.fromtimestamp(secs, tz).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f".{frac:09d}".rstrip("0") if frac else ""
    if offset_seconds == 0:
        zone = "Z"
    else:
        sign = "+" if offset_seconds > 0 else "-"
        hours, minutes = divmod(abs(offset_seconds) // 60, 60)
        zone = f"{sign}{hours:02d}:{minutes:02d}"
    return f"{stamp}{fraction}{zone}"


def time_now(ctx: HostContext, args: Any) -> dict[str, str]:
    """`{"now": RFC 3339 with nanoseconds and offset}`, the host's local time as Go
    formats it. Arguments are ignored."""
    ns = time.time_ns()
    offset = datetime.datetime.fromtimestamp(ns // 1_000_000_000).astimezone().utcoffset()
    return {"now": go_rfc3339_nano(ns, int(offset.total_seconds()) if offset else 0)}


def org_id(ctx: HostContext, args: Any) -> int:
    """The call's organisation id (its `_org_id`), 0 when none: a bare JSON number."""
    return chain.path().org_id


def make_translate(table: HostFunctions) -> Callable[..., Any]:
    def translate(ctx: HostContext, args: Any) -> dict[str, str]:
        """`{"key", "args": [..]}` -> `{"value"}` in the call's language (host/i18n.py);
        `lang` in the args (plughost's) overrides it."""
        a = args_object(ctx, args, "translate")
        key = field(ctx, a, "key", str, "translate", required=True)
        positional = a.get("args") or []
        if isinstance(positional, dict):  # plughost's older {name} placeholders
            return {"value": _named(table.translations.translate(
                key, _lang(ctx, a), (), (ctx.plugin, ctx.i18n)), positional)}
        if not isinstance(positional, list):
            raise HostCallError("translate: 'args' must be an array", plugin=ctx.plugin)
        return {"value": table.translations.translate(key, _lang(ctx, a), positional,
                                                      (ctx.plugin, ctx.i18n))}

    return translate


def _lang(ctx: HostContext, a: dict[str, Any]) -> str:
    lang = a.get("lang")
    return lang if isinstance(lang, str) and lang else chain.path().lang or "en"


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _named(text: str, values: dict[str, Any]) -> str:
    """plughost's older `{name}` placeholders: one pass, nothing of str.format exposed."""
    return _PLACEHOLDER.sub(lambda m: str(values[m[1]]) if m[1] in values else m[0], text)


def publish_event(ctx: HostContext, args: Any) -> dict[str, str]:
    """`{"channel", "event_type", "data"}` -> `{"status": "ok"}`: a `plugin_event` to
    the manager's listeners (the server streams it)."""
    a = args_object(ctx, args, "publish_event")
    channel = field(ctx, a, "channel", str, "publish_event")
    event_type = field(ctx, a, "event_type", str, "publish_event")
    data = a.get("data")
    text = data if isinstance(data, str) else "" if data is None else json.dumps(data)
    if len(text) > 64 * 1024:
        raise HostCallError("publish_event: 'data' is larger than 64 KiB", plugin=ctx.plugin)
    if ctx.caller is None:
        raise HostCallError("SSE broker not available", plugin=ctx.plugin)
    ctx.caller.publish(ctx.plugin, channel, event_type, text)
    return {"status": "ok"}


def make_secure_config(api: HostAPI) -> dict[str, Callable[..., Any]]:
    def secure_config_get(ctx: HostContext, args: Any) -> dict[str, str]:
        a = args_object(ctx, args, "secure_config_get")
        key = field(ctx, a, "key", str, "secure_config_get", required=True)
        return {"value": api.secure_config_get(ctx.plugin, chain.path().org_id, key)}

    def secure_config_set(ctx: HostContext, args: Any) -> dict[str, str]:
        a = args_object(ctx, args, "secure_config_set")
        key = field(ctx, a, "key", str, "secure_config_set", required=True)
        value = field(ctx, a, "value", str, "secure_config_set")
        api.secure_config_set(ctx.plugin, chain.path().org_id, key, value)
        return {"status": "ok"}

    return {"secure_config_get": secure_config_get, "secure_config_set": secure_config_set}


# -- plugin_call --------------------------------------------------------------------------


def make_plugin_call(max_depth: int) -> Callable[..., Any]:
    """`plugin_call`: another plugin, through the manager, with a depth limit (cycles are
    the call chain's rule: the manager refuses them with `CallCycle`). The target's answer
    is passed back as its raw bytes."""
    from .dispatch import Raw

    def plugin_call(ctx: HostContext, args: Any) -> Raw:
        a = args_object(ctx, args, "plugin_call")
        target = field(ctx, a, "plugin", str, "plugin_call", required=True)
        function = field(ctx, a, "function", str, "plugin_call", required=True)
        ctx.granted.check_target(target)
        call_path = chain.path()
        path = call_path.plugins or (ctx.plugin,)
        if len(path) >= max_depth:
            raise HostCallError(f"plugin call depth exceeded (max {max_depth}): "
                                f"{' -> '.join(path)} -> {target}", plugin=ctx.plugin)
        manager = ctx.caller
        if manager is None:  # a plugin started outside a manager (e.g. by hand)
            raise HostCallError("plugin_call: this plugin runs outside a manager",
                                plugin=ctx.plugin)
        # the args go to the target as written (Go's json.RawMessage), not re-encoded
        from .dispatch import raw_args

        given = raw_member(raw_args(), "args")
        payload = b"{}" if given is None or given == b"null" else given
        try:
            with chain.using(chain.CallPath(path, call_path.deadline, call_path.lang,
                                            call_path.org_id)):
                return Raw(manager.call_raw(target, function, payload))
        except PluginNotFound:  # GoatFlow's words for the two a caller can act on
            raise HostCallError(f'plugin "{target}" not found (required by "{ctx.plugin}" '
                                f'to call "{function}")', plugin=ctx.plugin) from None
        except PluginDisabled:
            raise HostCallError(f'plugin "{target}" is disabled (required by '
                                f'"{ctx.plugin}")', plugin=ctx.plugin) from None
        except PlughostError as exc:
            raise HostCallError(f"plugin_call {target}.{function} failed: "
                                f"{type(exc).__name__}: {exc}", plugin=ctx.plugin) from None

    return plugin_call
