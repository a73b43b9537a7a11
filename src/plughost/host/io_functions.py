"""The built-in host functions that reach a backend (`HostAPI`): database, cache, http,
email and file storage, with GoatFlow's shapes, permission checks, scopes and rate limits.

The order of checks is GoatFlow's: the grant, then the scope (tables, hosts, recipients),
then the rate limit, then the work. The argument caps (mail sizes) are plughost's and hold
for an application's own backend too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import HostCallError
from . import chain
from .api import HostAPI, HostSettings
from .functions import args_object, b64, b64text, field
from .policy import EMAIL_PER_MIN

if TYPE_CHECKING:
    from .dispatch import HostContext

_SCALARS = (str, int, float, bool, type(None))
_ADDRESS = re.compile(r"[^@\s,;<>\"']+@[^@\s,;<>\"']+\.?[^@\s,;<>\"']*")
#: GoatFlow refuses these (anywhere in the upper-cased statement) from a plugin without a
#: database write grant.
_DDL = ("DROP ", "ALTER ", "TRUNCATE ", "CREATE ", "GRANT ", "REVOKE ")
#: plughost's registration order, used for `docs/plugin-authors.md`'s table too
PERMISSIONS: dict[str, tuple[str, str, bool]] = {
    # name: (type, access, the handler checks the scope itself)
    "db_query": ("db", "read", False), "db_exec": ("db", "write", False),
    "cache_get": ("cache", "read", False), "cache_set": ("cache", "write", False),
    "cache_delete": ("cache", "write", False),
    "http_request": ("http", "", True), "send_email": ("email", "", True),
    "store_file": ("file", "write", False), "get_file": ("file", "read", False),
    "delete_file": ("file", "write", False), "list_files": ("file", "read", False),
}


def _sql(ctx: HostContext, args: Any, fn: str) -> tuple[str, list[Any]]:
    a = args_object(ctx, args, fn)
    query = field(ctx, a, "query", str, fn, required=True)
    params = a.get("args")
    if params is None:
        params = []
    if not isinstance(params, list) or not all(isinstance(v, _SCALARS) for v in params):
        raise HostCallError(f"{fn}: 'args' must be a list of strings, numbers, booleans or "
                            "nulls", plugin=ctx.plugin)
    if query.startswith("@"):  # GoatFlow's named database: only `default` exists here
        name, sep, rest = query[1:].partition(":")
        if not sep or not name:
            raise HostCallError(f"{fn}: a query starting with '@' must name a database "
                                "as '@<name>:'", plugin=ctx.plugin)
        if name != "default":
            raise HostCallError(f'database "{name}" not found', plugin=ctx.plugin)
        query = rest
    if not ctx.granted.allows("db", "write"):
        upper = query.upper()
        if any(word in upper for word in _DDL):
            raise HostCallError("DDL statements not permitted", plugin=ctx.plugin)
    return query, params


def _db_rate(ctx: HostContext) -> None:
    if not ctx.rates.db.admit(ctx.limits.max_db_queries_per_min):
        raise HostCallError("DB query rate limit exceeded", plugin=ctx.plugin)


def make_io_functions(api: HostAPI, settings: HostSettings | None = None
                      ) -> dict[str, Callable[..., Any]]:
    caps = settings or HostSettings()

    def db_query(ctx: HostContext, args: Any) -> list[dict[str, Any]] | None:
        """Rows as objects, or null when there are none (Go's nil slice)."""
        query, params = _sql(ctx, args, "db_query")
        _db_rate(ctx)
        rows = api.db_query(ctx.plugin, query, params, check=ctx.granted.check_tables)
        return rows or None

    def db_exec(ctx: HostContext, args: Any) -> dict[str, int]:
        query, params = _sql(ctx, args, "db_exec")
        _db_rate(ctx)
        return {"affected": api.db_exec(ctx.plugin, query, params,
                                        check=ctx.granted.check_tables)}

    def cache_get(ctx: HostContext, args: Any) -> dict[str, Any]:
        a = args_object(ctx, args, "cache_get")
        value = api.cache_get(ctx.plugin, field(ctx, a, "key", str, "cache_get",
                                                required=True))
        return {"found": value is not None, "value": b64text(value)}

    def cache_set(ctx: HostContext, args: Any) -> dict[str, bool]:
        a = args_object(ctx, args, "cache_set")
        key = field(ctx, a, "key", str, "cache_set", required=True)
        ttl = field(ctx, a, "ttl", float, "cache_set")
        if ttl < 0 or not math.isfinite(ttl):
            raise HostCallError("cache_set: 'ttl' must be a number of seconds",
                                plugin=ctx.plugin)
        value = b64(ctx, a, "value", "cache_set") or b""
        try:
            api.cache_set(ctx.plugin, key, value, ttl or None)
        except ValueError as exc:
            raise HostCallError(f"cache_set: {exc}", plugin=ctx.plugin) from None
        return {"ok": True}

    def cache_delete(ctx: HostContext, args: Any) -> dict[str, bool]:
        a = args_object(ctx, args, "cache_delete")
        api.cache_delete(ctx.plugin, field(ctx, a, "key", str, "cache_delete", required=True))
        return {"ok": True}

    def http_request(ctx: HostContext, args: Any) -> dict[str, Any]:
        """`{"method", "url", "headers", "body": base64}` -> `{"body": base64, "status"}`;
        each hop of a redirect is checked against the http scope."""
        a = args_object(ctx, args, "http_request")
        url = field(ctx, a, "url", str, "http_request", required=True)
        headers = field(ctx, a, "headers", dict, "http_request") or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise HostCallError("http_request: 'headers' must map strings to strings",
                                plugin=ctx.plugin)
        body = b64(ctx, a, "body", "http_request")
        method = field(ctx, a, "method", str, "http_request") or "GET"
        ctx.granted.check_url(url)
        if not ctx.rates.http.admit(ctx.limits.max_http_req_per_min):
            raise HostCallError("HTTP request rate limit exceeded", plugin=ctx.plugin)
        timeout = a.get("timeout")  # plughost's: seconds, never past the call's deadline
        left = chain.path().left()
        limit = float(timeout) if isinstance(timeout, int | float) and timeout > 0 else None
        if left is not None:
            limit = left if limit is None else min(limit, left)
        status, data = api.http_request(ctx.plugin, method, url, headers, body, limit,
                                        check=ctx.granted.check_url)
        return {"body": b64text(data), "status": status}

    def send_email(ctx: HostContext, args: Any) -> dict[str, bool]:
        """`{"to", "subject", "body", "html": bool}` -> `{"ok": true}`. plughost also
        takes a list of recipients and `html` as the HTML text itself."""
        a = args_object(ctx, args, "send_email")
        to = a.get("to")
        recipients = [to] if isinstance(to, str) else to
        if not isinstance(recipients, list) or not recipients or not all(
                isinstance(r, str) and _ADDRESS.fullmatch(r) for r in recipients):
            raise HostCallError("send_email: 'to' must be an address or a list of them",
                                plugin=ctx.plugin)
        for r in recipients:
            ctx.granted.check_recipient(r)
        # GoatFlow's 10 a minute are 10 messages of one recipient each: a message to
        # several (plughost's extension) counts once per recipient
        if not ctx.rates.email.admit(EMAIL_PER_MIN, len(recipients)):
            raise HostCallError("email rate limit exceeded", plugin=ctx.plugin)
        if len(recipients) > caps.mail_max_recipients:
            raise HostCallError(f"send_email: {len(recipients)} recipients, more than the "
                                f"cap of {caps.mail_max_recipients}", plugin=ctx.plugin)
        subject = field(ctx, a, "subject", str, "send_email")
        body = field(ctx, a, "body", str, "send_email")
        flag = a.get("html")
        html: str | None = (body if flag is True else flag if isinstance(flag, str) and flag
                            else None)
        text = "" if flag is True else body
        if len(subject) > caps.mail_max_subject or "\n" in subject or "\r" in subject:
            raise HostCallError(f"send_email: 'subject' must be one line of at most "
                                f"{caps.mail_max_subject} characters", plugin=ctx.plugin)
        size = len(text.encode()) + len((html or "").encode())
        if size > caps.mail_max_body_bytes:
            raise HostCallError(f"send_email: body of {size} bytes, more than the cap of "
                                f"{caps.mail_max_body_bytes}", plugin=ctx.plugin)
        api.send_email(ctx.plugin, recipients, subject, text, html)
        return {"ok": True}

    def store_file(ctx: HostContext, args: Any) -> dict[str, str]:
        a = args_object(ctx, args, "store_file")
        key = field(ctx, a, "key", str, "store_file", required=True)
        data = b64(ctx, a, "data", "store_file") or b""
        meta = field(ctx, a, "metadata", dict, "store_file") or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise HostCallError("store_file: 'metadata' must map strings to strings",
                                plugin=ctx.plugin)
        api.store_file(ctx.plugin, chain.path().org_id, key, data, meta,
                       ctx.limits.max_file_storage_bytes)
        return {"status": "ok"}

    def get_file(ctx: HostContext, args: Any) -> dict[str, Any]:
        a = args_object(ctx, args, "get_file")
        stored = api.get_file(ctx.plugin, chain.path().org_id,
                              field(ctx, a, "key", str, "get_file", required=True))
        return {"data": b64text(stored.data), "metadata": stored.metadata}

    def delete_file(ctx: HostContext, args: Any) -> dict[str, str]:
        a = args_object(ctx, args, "delete_file")
        api.delete_file(ctx.plugin, chain.path().org_id,
                        field(ctx, a, "key", str, "delete_file", required=True))
        return {"status": "ok"}

    def list_files(ctx: HostContext, args: Any) -> list[dict[str, Any]] | None:
        a = args_object(ctx, args, "list_files")
        found = api.list_files(ctx.plugin, chain.path().org_id,
                               field(ctx, a, "prefix", str, "list_files"))
        return found or None

    return {"db_query": db_query, "db_exec": db_exec, "cache_get": cache_get,
            "cache_set": cache_set, "cache_delete": cache_delete,
            "http_request": http_request, "send_email": send_email,
            "store_file": store_file, "get_file": get_file, "delete_file": delete_file,
            "list_files": list_files}
