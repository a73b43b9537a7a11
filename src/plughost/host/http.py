"""The default `http_request` backend (httpx): only to the manifest's `allowed_hosts`.

Redirects are not followed (a redirect could lead to a host that is not allowed); the
plugin gets the 3xx and decides. Responses are cut off at a size cap while streaming, so a
huge body never lands in memory.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..errors import HostCallError, PermissionDenied


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Exact names (case-insensitive), `host:port`, or `*.example.com` wildcards."""
    host = host.lower().rstrip(".")
    for entry in allowed:
        e = entry.lower().rstrip(".")
        if e == host or (e.startswith("*.") and host.endswith(e[1:])):
            return True
    return False


def check_url(plugin: str, url: str, allowed: tuple[str, ...]) -> None:
    """Refuse anything but http(s) to a host in `allowed`."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HostCallError(f"http_request: {url!r} is not an http(s) URL", plugin=plugin)
    netloc = parts.hostname + (f":{port}" if port else "")
    if not (host_allowed(parts.hostname, allowed) or host_allowed(netloc, allowed)):
        raise PermissionDenied(f"http_request: host {parts.hostname!r} is not in the "
                               f"manifest's allowed_hosts {list(allowed)}", plugin=plugin)


class HttpClient:
    def __init__(self, timeout: float = 10.0, max_bytes: int = 1024 * 1024) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes

    def request(self, plugin: str, allowed: tuple[str, ...], method: str, url: str,
                headers: dict[str, str], body: str | bytes | None,
                timeout: float | None) -> dict[str, Any]:
        check_url(plugin, url, allowed)
        limit = min(timeout or self.timeout, self.timeout)
        # httpx's timeout bounds each network wait; the total is checked between chunks,
        # so a server dripping bytes cannot hold the call past `limit` (plus one wait).
        end = time.monotonic() + limit
        try:
            with httpx.Client(timeout=limit, follow_redirects=False) as client, \
                    client.stream(method.upper(), url, headers=headers,
                                  content=body) as resp:
                chunks, size = [], 0
                for chunk in resp.iter_bytes():
                    if time.monotonic() > end:
                        raise HostCallError(f"http_request: no complete response within "
                                            f"{limit:.3f}s", plugin=plugin)
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise HostCallError(f"http_request: response larger than "
                                            f"{self.max_bytes} bytes", plugin=plugin)
                    chunks.append(chunk)
                data = b"".join(chunks)
                return {"status": resp.status_code, "headers": dict(resp.headers),
                        "body": data.decode(resp.encoding or "utf-8", "replace")}
        except httpx.HTTPError as exc:
            raise HostCallError(f"http_request: {type(exc).__name__}: {exc}",
                                plugin=plugin) from None
