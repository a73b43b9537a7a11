"""`HostAPI`: the backends behind the host functions, replaceable by the application.

plughost ships defaults (SQLite per plugin, an in-memory cache, httpx, smtplib). An
application that has its own database or cache implements `HostAPI` (or subclasses
`DefaultHostAPI` and overrides a few methods) and passes it as `Manager(host=...)`.
Permission checks, argument validation and logging stay in plughost; a backend only does
the work, for the plugin named in its first argument.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import platformdirs

from .cache import MemoryCache
from .db import SQLiteDB
from .files import FileStore, StoredFile
from .http import HttpClient
from .mail import Mailer, SMTPSettings
from .secrets import SecureConfig

#: A db backend's table check: `check(read_tables, written_tables)` raises
#: `PermissionDenied` when the plugin's grant does not cover them. A backend must call it
#: with every table a statement touches before the statement runs.
TableCheck = Callable[[Iterable[str], Iterable[str]], None]

#: An http backend's check of each redirect hop it is about to follow (plughost has checked
#: the first URL); raises when the plugin may not go there.
UrlCheck = Callable[[str], None]


class HostAPI(Protocol):
    """The backends. Each gets the calling plugin's name (and, where GoatFlow keys data by
    organisation, the call's organisation id) from the host."""

    def db_query(self, plugin: str, query: str, args: list[Any], *,
                 check: TableCheck) -> list[dict[str, Any]]: ...

    def db_exec(self, plugin: str, query: str, args: list[Any], *, check: TableCheck
                ) -> int: ...

    def cache_get(self, plugin: str, key: str) -> bytes | None: ...

    def cache_set(self, plugin: str, key: str, value: bytes, ttl: float | None) -> None: ...

    def cache_delete(self, plugin: str, key: str) -> bool: ...

    def http_request(self, plugin: str, method: str, url: str, headers: dict[str, str],
                     body: bytes | None, timeout: float | None, *, check: UrlCheck
                     ) -> tuple[int, bytes]: ...

    def send_email(self, plugin: str, to: list[str], subject: str, body: str,
                   html: str | None) -> None: ...

    def store_file(self, plugin: str, org_id: int, key: str, data: bytes,
                   metadata: dict[str, str], quota: int) -> None: ...

    def get_file(self, plugin: str, org_id: int, key: str) -> StoredFile: ...

    def delete_file(self, plugin: str, org_id: int, key: str) -> None: ...

    def list_files(self, plugin: str, org_id: int, prefix: str) -> list[dict[str, Any]]: ...

    def secure_config_get(self, plugin: str, org_id: int, key: str) -> str: ...

    def secure_config_set(self, plugin: str, org_id: int, key: str, value: str) -> None: ...


def _default_app_config() -> dict[str, str]:
    tz = datetime.datetime.now().astimezone().tzinfo
    return {"app.name": "plughost", "app.env": os.environ.get("PLUGHOST_ENV", "production"),
            "app.timezone": os.environ.get("TZ") or (tz.tzname(None) if tz else None) or "UTC"}


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
    #: plugin_call nesting, GoatFlow's 10
    max_call_depth: int = 10
    #: each plugin's number of stored files, at most (bytes: its `max_file_storage_bytes`)
    file_max_files: int = 10_000
    #: the host key that seals secure config (a Fernet key); None: the data dir's
    #: `secure-config.key`, made on first use
    secret_key: bytes | None = None
    #: what `config_get` answers beyond a plugin's own `config:` (GoatFlow's three keys)
    app_config: Mapping[str, str] = field(default_factory=_default_app_config)


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

        self.files = FileStore(s.data_dir / "files", max_files=s.file_max_files)
        self.secrets = SecureConfig(s.data_dir / "secure-config", s.secret_key)

    def db_query(self, plugin: str, query: str, args: list[Any], *,
                 check: TableCheck) -> list[dict[str, Any]]:
        return self.db.query(plugin, query, args, check=check)

    def db_exec(self, plugin: str, query: str, args: list[Any], *, check: TableCheck) -> int:
        return self.db.execute(plugin, query, args, check=check)

    def cache_get(self, plugin: str, key: str) -> bytes | None:
        return self.cache.get(plugin, key)

    def cache_set(self, plugin: str, key: str, value: bytes, ttl: float | None) -> None:
        self.cache.set(plugin, key, value, ttl)

    def cache_delete(self, plugin: str, key: str) -> bool:
        return self.cache.delete(plugin, key)

    def http_request(self, plugin: str, method: str, url: str, headers: dict[str, str],
                     body: bytes | None, timeout: float | None, *, check: UrlCheck
                     ) -> tuple[int, bytes]:
        return self.http.request(plugin, method, url, headers, body, timeout, check=check)

    def send_email(self, plugin: str, to: list[str], subject: str, body: str,
                   html: str | None) -> None:
        self.mailer.send(plugin, to, subject, body, html)

    def store_file(self, plugin: str, org_id: int, key: str, data: bytes,
                   metadata: dict[str, str], quota: int) -> None:
        self.files.store(plugin, org_id, key, data, metadata, quota)

    def get_file(self, plugin: str, org_id: int, key: str) -> StoredFile:
        return self.files.get(plugin, org_id, key)

    def delete_file(self, plugin: str, org_id: int, key: str) -> None:
        self.files.delete(plugin, org_id, key)

    def list_files(self, plugin: str, org_id: int, prefix: str) -> list[dict[str, Any]]:
        return self.files.list(plugin, org_id, prefix)

    def secure_config_get(self, plugin: str, org_id: int, key: str) -> str:
        return self.secrets.get(plugin, org_id, key)

    def secure_config_set(self, plugin: str, org_id: int, key: str, value: str) -> None:
        self.secrets.set(plugin, org_id, key, value)
