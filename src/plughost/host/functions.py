"""The built-in host functions (docs/plugin-authors.md): argument shapes (GoatFlow's) and
their checks.

Each handler gets the caller's `HostContext` and the decoded JSON args, validates them,
and calls a `HostAPI` backend. Permissions are checked before a handler runs (dispatch.py).
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import HostCallError, PlughostError
from . import chain
from .api import HostAPI, HostSettings
from .http import check_url

if TYPE_CHECKING:
    from .dispatch import HostContext, HostFunctions


def _obj(ctx: HostContext, args: Any, fn: str, shape: str) -> dict[str, Any]:
    if not isinstance(args, dict):
        raise HostCallError(f"{fn}: expected {shape}", plugin=ctx.plugin)
    return args


def _str(ctx: HostContext, args: dict[str, Any], key: str, fn: str) -> str:
    v = args.get(key)
    if not isinstance(v, str) or not v:
        raise HostCallError(f"{fn}: {key!r} must be a non-empty string", plugin=ctx.plugin)
    return v


_SCALARS = (str, int, float, type(None))
_ADDRESS = re.compile(r"[^@\s,;<>\"']+@[^@\s,;<>\"']+\.?[^@\s,;<>\"']*")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _sql_args(ctx: HostContext, a: dict[str, Any], fn: str) -> list[Any]:
    args = a.get("args")
    if args is None:
        return []
    if not isinstance(args, list) or not all(isinstance(v, _SCALARS) for v in args):
        raise HostCallError(f"{fn}: 'args' must be a list of strings, numbers, booleans or "
                            "nulls", plugin=ctx.plugin)
    return args


def log(ctx: HostContext, args: Any) -> None:
    a = _obj(ctx, args, "log", '{"level": ..., "message": "..."}')
    if not isinstance(a.get("message"), str):
        raise HostCallError('log: expected {"level": ..., "message": "..."}', plugin=ctx.plugin)
    level = a.get("level", "info")
    names = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
             "warning": logging.WARNING, "error": logging.ERROR}
    if isinstance(level, int) and not isinstance(level, bool):
        lvl = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING}.get(level, logging.ERROR)
    elif isinstance(level, str) and level.lower() in names:
        lvl = names[level.lower()]
    else:
        raise HostCallError(f"log: unknown level {level!r}", plugin=ctx.plugin)
    ctx.log.log(lvl, a["message"], source="plugin")


def config_get(ctx: HostContext, args: Any) -> Any:
    a = _obj(ctx, args, "config_get", '{"key": "..."}')
    return ctx.config.get(_str(ctx, a, "key", "config_get"))


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
    """GoatFlow's `time_now`: the host's local time, `{"now": RFC 3339 with nanoseconds and
    offset}` as Go formats it. Arguments are ignored; no permission is needed."""
    ns = time.time_ns()
    offset = datetime.datetime.fromtimestamp(ns // 1_000_000_000).astimezone().utcoffset()
    return {"now": go_rfc3339_nano(ns, int(offset.total_seconds()) if offset else 0)}


def translate(ctx: HostContext, args: Any) -> str:
    """`{"key", "lang"?, "args"?}` -> text from the registration's i18n, falling back to
    English, then to the key itself. `{name}` placeholders are filled from `args`."""
    a = _obj(ctx, args, "translate", '{"key": "...", "lang": "en", "args": {}}')
    key = _str(ctx, a, "key", "translate")
    lang = a.get("lang") or "en"
    values = a.get("args") or {}
    if not isinstance(lang, str) or not isinstance(values, dict):
        raise HostCallError("translate: 'lang' must be a string and 'args' an object",
                            plugin=ctx.plugin)
    text = key
    for candidate in (lang, lang.split("-")[0], "en"):
        table = ctx.i18n.get(candidate)
        if isinstance(table, dict) and isinstance(table.get(key), str):
            text = table[key]
            break
    # One pass over plain {name} placeholders: filled values are never substituted again,
    # and nothing else of str.format (attributes, indexing, format specs) is exposed.
    return _PLACEHOLDER.sub(lambda m: str(values[m[1]]) if m[1] in values else m[0], text)


def make_backend_functions(api: HostAPI, settings: HostSettings | None = None
                           ) -> dict[str, tuple[str, Callable[..., Any]]]:
    """db_*, cache_*, http_request, send_email bound to `api`: name -> (permission, fn).

    The argument caps (mail sizes) come from `settings`, so they hold for an application's
    own backend too."""
    caps = settings or HostSettings()

    def db_query(ctx: HostContext, args: Any) -> Any:
        a = _obj(ctx, args, "db_query", '{"query": "...", "args": [...]}')
        return api.db_query(ctx.plugin, _str(ctx, a, "query", "db_query"),
                            _sql_args(ctx, a, "db_query"))

    def db_exec(ctx: HostContext, args: Any) -> Any:
        a = _obj(ctx, args, "db_exec", '{"query": "...", "args": [...]}')
        return api.db_exec(ctx.plugin, _str(ctx, a, "query", "db_exec"),
                           _sql_args(ctx, a, "db_exec"))

    def cache_get(ctx: HostContext, args: Any) -> Any:
        a = _obj(ctx, args, "cache_get", '{"key": "..."}')
        return api.cache_get(ctx.plugin, _str(ctx, a, "key", "cache_get"))

    def cache_set(ctx: HostContext, args: Any) -> Any:
        a = _obj(ctx, args, "cache_set", '{"key": "...", "value": ..., "ttl": seconds}')
        ttl = a.get("ttl")
        if ttl is not None and (not isinstance(ttl, int | float) or isinstance(ttl, bool)
                                or ttl < 0):
            raise HostCallError("cache_set: 'ttl' must be a number of seconds",
                                plugin=ctx.plugin)
        try:
            api.cache_set(ctx.plugin, _str(ctx, a, "key", "cache_set"), a.get("value"), ttl)
        except ValueError as exc:
            raise HostCallError(f"cache_set: {exc}", plugin=ctx.plugin) from None
        return None

    def cache_delete(ctx: HostContext, args: Any) -> Any:
        a = _obj(ctx, args, "cache_delete", '{"key": "..."}')
        return api.cache_delete(ctx.plugin, _str(ctx, a, "key", "cache_delete"))

    def http_request(ctx: HostContext, args: Any) -> Any:
        a = _obj(ctx, args, "http_request", '{"method": "GET", "url": "...", ...}')
        headers = a.get("headers") or {}
        body = a.get("body")
        if not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise HostCallError("http_request: 'headers' must map strings to strings",
                                plugin=ctx.plugin)
        if body is not None and not isinstance(body, str):
            body = json.dumps(body)
        timeout = a.get("timeout")
        left = chain.path().left()  # never outlive the call that asked
        if left is not None:
            timeout = min(float(timeout), left) if isinstance(timeout, int | float) else left
        url = _str(ctx, a, "url", "http_request")
        check_url(ctx.plugin, url, ctx.allowed_hosts)  # here, so app backends get it too
        return api.http_request(ctx.plugin, ctx.allowed_hosts, str(a.get("method") or "GET"),
                                url, headers, body,
                                float(timeout) if isinstance(timeout, int | float) else None)

    def send_email(ctx: HostContext, args: Any) -> Any:
        a = _obj(ctx, args, "send_email", '{"to": ..., "subject": "...", "body": "..."}')
        to = a.get("to")
        recipients = [to] if isinstance(to, str) else to
        if not isinstance(recipients, list) or not recipients or not all(
                isinstance(r, str) and _ADDRESS.fullmatch(r) for r in recipients):
            raise HostCallError("send_email: 'to' must be an address or a list of them",
                                plugin=ctx.plugin)
        if len(recipients) > caps.mail_max_recipients:
            raise HostCallError(f"send_email: {len(recipients)} recipients, more than the "
                                f"cap of {caps.mail_max_recipients}", plugin=ctx.plugin)
        html = a.get("html")
        html = html if isinstance(html, str) else None
        subject, body = str(a.get("subject") or ""), str(a.get("body") or "")
        if len(subject) > caps.mail_max_subject or "\n" in subject or "\r" in subject:
            raise HostCallError(f"send_email: 'subject' must be one line of at most "
                                f"{caps.mail_max_subject} characters", plugin=ctx.plugin)
        size = len(body.encode()) + len((html or "").encode())
        if size > caps.mail_max_body_bytes:
            raise HostCallError(f"send_email: body of {size} bytes, more than the cap of "
                                f"{caps.mail_max_body_bytes}", plugin=ctx.plugin)
        api.send_email(ctx.plugin, recipients, subject, body, html)
        return {"sent": True}

    return {
        "db_query": ("db.read", db_query), "db_exec": ("db.write", db_exec),
        "cache_get": ("cache", cache_get), "cache_set": ("cache", cache_set),
        "cache_delete": ("cache", cache_delete),
        "http_request": ("http", http_request), "send_email": ("email", send_email),
    }


def make_plugin_call(table: HostFunctions, max_depth: int) -> Callable[..., Any]:
    """`plugin_call`: another plugin, through the manager, with a depth limit (cycles are
    the call chain's rule: the manager refuses them with `CallCycle`)."""

    def plugin_call(ctx: HostContext, args: Any) -> Any:
        a = _obj(ctx, args, "plugin_call", '{"plugin": "...", "function": "...", "args": ...}')
        target = _str(ctx, a, "plugin", "plugin_call")
        function = _str(ctx, a, "function", "plugin_call")
        call_path = chain.path()
        path = call_path.plugins or (ctx.plugin,)
        if len(path) >= max_depth:
            raise HostCallError(f"plugin_call: call depth {len(path)} reaches the limit of "
                                f"{max_depth} ({' -> '.join(path)})", plugin=ctx.plugin)
        manager = ctx.caller
        if manager is None:  # a plugin started outside a manager (e.g. by hand)
            raise HostCallError("plugin_call: this plugin runs outside a manager",
                                plugin=ctx.plugin)
        payload = json.dumps(a.get("args") if a.get("args") is not None else {}).encode()
        try:
            with chain.using(chain.CallPath(path, call_path.deadline)):
                raw = manager.call_raw(target, function, payload)
        except PlughostError as exc:
            raise HostCallError(f"plugin_call {target}.{function} failed: "
                                f"{type(exc).__name__}: {exc}", plugin=ctx.plugin) from None
        return json.loads(raw) if raw else None

    return plugin_call
