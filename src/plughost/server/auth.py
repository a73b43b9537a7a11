"""The API token: who may use a server that listens beyond loopback.

A server on a non-loopback address requires a token, unless the operator explicitly passes
`--insecure-no-auth`. The token comes from the `--token` flag or `PLUGHOST_API_TOKEN`.
Failing that, it is the one stored in `<data dir>/api-token` (mode 0600), and failing that
a new one is generated, stored there and printed once. Clients send it as
`Authorization: Bearer <token>`. The admin page asks for it once and `POST /api/v1/login`
turns it into an HttpOnly, SameSite=Strict cookie, which `EventSource` also sends.

Whether an address is loopback is decided by the address (`ipaddress`), never by its
spelling: `127.1`, `127.0.0.2`, `::ffff:127.0.0.1` and `LOCALHOST` are all loopback.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import os
import secrets
from pathlib import Path

from ..inputs import read_regular

TOKEN_FILE = "api-token"
COOKIE = "plughost_token"
#: The cookie's life: the admin page asks again after this long.
COOKIE_MAX_AGE = 30 * 24 * 3600


def is_loopback(address: str) -> bool:
    """Is the (numeric) address a loopback one, IPv4-mapped IPv6 included?"""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def load_or_create_token(data_dir: Path) -> tuple[str, Path, bool]:
    """The stored token, or a new one stored 0600; returns (token, file, created)."""
    path = data_dir / TOKEN_FILE
    try:
        token = read_regular(path, 4096).decode("ascii").strip()
        if token:
            return token, path, False
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        raise OSError(errno.EINVAL, f"cannot read the API token file: {exc}", str(path)) \
            from None
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{TOKEN_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token, path, True


class TokenCheck:
    """Compares a request's credentials with the token, in constant time."""

    def __init__(self, token: str) -> None:
        if len(token) < 16:
            raise ValueError("the API token must be at least 16 characters")
        self._token = token.encode()

    def matches(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), self._token)

    def allows(self, headers: dict[str, str]) -> bool:
        """A Bearer header or the login cookie carrying the token."""
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer " and self.matches(auth[7:].strip()):
            return True
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and self.matches(value):
                return True
        return False
