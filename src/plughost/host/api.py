"""`HostAPI`: the backends behind the host functions, replaceable by the application.

plughost ships defaults (SQLite per plugin, an in-memory cache, httpx, smtplib). An
application that has its own database or cache implements `HostAPI` (or subclasses
`DefaultHostAPI` and overrides a few methods) and passes it as `Manager(host=...)`.
Permission checks, argument validation and logging stay in plughost; a backend only does
the work, for the plugin named in its first argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import platformdirs

from .cache import MemoryCache
from .db import SQLiteDB
from .http import HttpClient
from .mail import Mailer, SMTPSettings


class HostAPI(Protocol):
    def db_query(self, plugin: str, query: str, args: list[Any]) -> list[dict[str, Any]]: ...

    def db_exec(self, plugin: str, query: str, args: list[Any]) -> dict[str, Any]: ...

    def cache_get(self, plugin: str, key: str) -> Any: ...

    def cache_set(self, plugin: str, key: str, value: Any, ttl: float | None) -> None: ...

    def cache_delete(self, plugin: str, key: str) -> bool: ...

    def http_request(self, plugin: str, allowed_hosts: tuple[str, ...], method: str, url: str,
                     headers: dict[str, str], body: str | None, timeout: float | None
                     ) -> dict[str, Any]: ...

    def send_email(self, plugin: str, to: list[str], subject: str, body: str,
                   html: str | None) -> None: ...


@dataclass(frozen=True)
class HostSettings:
    """What the default backends need from the operator."""

    data_dir: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir("plughost")))
    smtp: SMTPSettings | None = None
    http_timeout: float = 10.0
    http_max_bytes: int = 1024 * 1024
    cache_max_entries: int = 10_000
    cache_max_bytes: int = 16 * 1024 * 1024
    #: Each plugin's cache quota (None: a quarter of the cache); it evicts only its own keys.
    cache_plugin_max_entries: int | None = None
    cache_plugin_max_bytes: int | None = None
    #: Every cache entry expires; a missing or longer TTL becomes this (seconds).
    cache_max_ttl: float = 24 * 3600.0
    db_max_rows: int = 10_000
    #: A db_query result, at most (the JSON-ish size of its values), and one value at most.
    db_max_result_bytes: int = 8 * 1024 * 1024
    #: Each plugin's SQLite file, at most.
    db_max_file_bytes: int = 256 * 1024 * 1024
    #: send_email: recipients, subject characters and body (text + html) bytes, at most.
    mail_max_recipients: int = 50
    mail_max_subject: int = 998
    mail_max_body_bytes: int = 1024 * 1024
    max_call_depth: int = 8  # plugin_call nesting


class DefaultHostAPI:
    """The built-in backends."""

    def __init__(self, settings: HostSettings | None = None) -> None:
        self.settings = settings or HostSettings()
        s = self.settings
        self.db = SQLiteDB(s.data_dir / "db", max_rows=s.db_max_rows,
                           max_result_bytes=s.db_max_result_bytes,
                           max_file_bytes=s.db_max_file_bytes)
        self.cache = MemoryCache(s.cache_max_entries, s.cache_max_bytes,
                                 plugin_max_entries=s.cache_plugin_max_entries,
                                 plugin_max_bytes=s.cache_plugin_max_bytes,
                                 max_ttl=s.cache_max_ttl)
        self.http = HttpClient(s.http_timeout, s.http_max_bytes)
        self.mailer = Mailer(s.smtp)

    def db_query(self, plugin: str, query: str, args: list[Any]) -> list[dict[str, Any]]:
        return self.db.query(plugin, query, args)

    def db_exec(self, plugin: str, query: str, args: list[Any]) -> dict[str, Any]:
        return self.db.execute(plugin, query, args)

    def cache_get(self, plugin: str, key: str) -> Any:
        return self.cache.get(plugin, key)

    def cache_set(self, plugin: str, key: str, value: Any, ttl: float | None) -> None:
        self.cache.set(plugin, key, value, ttl)

    def cache_delete(self, plugin: str, key: str) -> bool:
        return self.cache.delete(plugin, key)

    def http_request(self, plugin: str, allowed_hosts: tuple[str, ...], method: str, url: str,
                     headers: dict[str, str], body: str | None, timeout: float | None
                     ) -> dict[str, Any]:
        return self.http.request(plugin, allowed_hosts, method, url, headers, body, timeout)

    def send_email(self, plugin: str, to: list[str], subject: str, body: str,
                   html: str | None) -> None:
        self.mailer.send(plugin, to, subject, body, html)
