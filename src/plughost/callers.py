"""Who is calling: the identity the embedding application vouches for (docs/embedding.md,
"Who the caller is").

plughost has no users of its own. The application that embeds it knows who made a request
(its session, JWT or API token) and says so through an identity hook, a function from the
request to a `Caller` (or None: anonymous). From the caller come route middleware
decisions (`auth`, `admin`, `group:<g>`...) and the identity envelope GoatFlow passes to a
plugin (`_user_id`, `_user_email`, `_user_login`, `_customer_login`, `_user_role`,
`_is_admin`, `_lang`, `_org_id`/`org_id`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

#: GoatFlow's role names (`_user_role`).
ADMIN_ROLE, AGENT_ROLE, CUSTOMER_ROLE = "Admin", "Agent", "Customer"

#: Keys of the identity envelope: a client may never send them itself.
ENVELOPE_KEYS = ("_user_id", "_user_email", "_user_login", "_customer_login", "_user_role",
                 "_is_admin", "_org_id", "_lang", "_method", "_path", "_body",
                 "_content_type")


@dataclass(frozen=True)
class Caller:
    """An authenticated principal: an agent (a staff user, maybe an admin) or a customer.

    `user_id` is what the application's auth stores (usually a number); `login` falls back
    to `email` in the envelope; `groups` are agent group names (for `group:<g>` and
    `plugin:<p>:<g>`); `org_plugins` are the plugins enabled for a customer's
    organisation (for `plugin:<p>:<g>`); `org_id` is the active organisation, `lang` the
    resolved UI language.
    """

    user_id: int | str | None = None
    login: str = ""
    email: str = ""
    role: str = AGENT_ROLE
    is_admin: bool = False
    customer_login: str = ""
    groups: frozenset[str] = field(default_factory=frozenset)
    org_id: int | None = None
    lang: str = ""
    org_plugins: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_customer(self) -> bool:
        return bool(self.customer_login) or self.role == CUSTOMER_ROLE

    def envelope(self, *, with_org: bool = True) -> dict[str, Any]:
        """The identity keys GoatFlow adds to a plugin's arguments, for this caller."""
        out: dict[str, Any] = {}
        if self.user_id is not None and self.user_id != "":
            out["_user_id"] = self.user_id
        if self.email:
            out["_user_email"] = self.email
        if self.login or self.email:
            out["_user_login"] = self.login or self.email
        if self.customer_login:
            out["_customer_login"] = self.customer_login
        if self.role:
            out["_user_role"] = self.role
        out["_is_admin"] = self.is_admin
        if self.lang:
            out["_lang"] = self.lang
        if with_org and self.org_id is not None:
            out["_org_id"] = out["org_id"] = self.org_id
        return out


def anonymous_envelope(lang: str = "") -> dict[str, Any]:
    """The identity keys of a request nobody vouched for: only `_is_admin` (always
    present) and the language, if known."""
    return {"_is_admin": False, **({"_lang": lang} if lang else {})}


#: The identity hook: the request (a Starlette/FastAPI `Request`) to its Caller, or None
#: for an anonymous one; may be async.
IdentityHook: TypeAlias = Callable[[Any], "Caller | Awaitable[Caller | None] | None"]

#: The caller `plughost serve` vouches for when a request carries its API token: the
#: operator, an admin (GoatFlow's system user is id 1).
OPERATOR = Caller(user_id=1, login="admin", role=ADMIN_ROLE, is_admin=True)
