"""The default `http_request` backend (httpx).

Redirects are followed as Go's client follows them (at most 10; 301/302/303 turn into a
GET without body, 307/308 keep method and body), but every hop is checked against the
plugin's http scope before it is requested, so a redirect never leads a plugin where it
may not go (GoatFlow does not re-check). Responses are cut off at a size cap while
streaming, so a huge body never lands in memory, and the whole exchange is bounded by the
call's deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from ..errors import HostCallError

MAX_REDIRECTS = 10
#: Headers the client sets itself, as Go's does (it ignores a `Host` header): a plugin
#: allowed one host must not name another virtual host behind the same address.
HOST_SET_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class HttpClient:
    def __init__(self, timeout: float = 10.0, max_bytes: int = 1024 * 1024) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes

    def request(self, plugin: str, method: str, url: str, headers: dict[str, str],
                body: bytes | None, timeout: float | None, *,
                check: Callable[[str], None]) -> tuple[int, bytes]:
        limit = min(timeout or self.timeout, self.timeout)
        # httpx's timeout bounds each network wait; the total is checked between chunks,
        # so a server dripping bytes cannot hold the call past `limit` (plus one wait).
        end = time.monotonic() + limit
        try:
            with httpx.Client(timeout=limit, follow_redirects=False) as client:
                request = client.build_request(
                    method.upper() or "GET", url, content=body,
                    headers={k: v for k, v in headers.items()
                             if k.lower() not in HOST_SET_HEADERS})
                for _hop in range(MAX_REDIRECTS + 1):
                    left = end - time.monotonic()  # every hop within the one budget
                    if left <= 0:
                        raise HostCallError(f"http_request: no complete response within "
                                            f"{limit:.3f}s", plugin=plugin)
                    request.extensions["timeout"] = httpx.Timeout(left).as_dict()
                    resp = client.send(request, stream=True)
                    try:
                        nxt = resp.next_request
                        if nxt is None:
                            return resp.status_code, self._read(plugin, resp, end, limit)
                    finally:
                        resp.close()
                    check(str(nxt.url))
                    request = nxt
                raise HostCallError(f"http_request: stopped after {MAX_REDIRECTS} "
                                    "redirects", plugin=plugin)
        except httpx.HTTPError as exc:
            raise HostCallError(f"http_request: {type(exc).__name__}: {exc}",
                                plugin=plugin) from None

    def _read(self, plugin: str, resp: httpx.Response, end: float, limit: float) -> bytes:
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
        return b"".join(chunks)
