"""plughost inside a FastAPI application that has its own users.

The application authenticates requests its own way (here: a bearer token looked up in a
dict; in real life a session, a JWT, an API key) and tells plughost who the caller is
through an identity hook. plughost then enforces the plugins' route middleware (`auth`,
`admin`, `group:<g>`, ...), passes GoatFlow's identity envelope (`_user_id`, `_is_admin`,
`_org_id`, ...) to the plugins, and lets only admins act through the management API.

Run it (from the repository root):

    uvicorn --factory examples.embedding.fastapi_app:build --port 8000

then `curl -H 'Authorization: Bearer ada-token' localhost:8000/hello`.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, Request

from plughost import Caller, Loader, Manager
from plughost.server import create_app

#: The application's users (stand-ins for its user table).
USERS = {
    "ada-token": Caller(user_id=7, login="ada", email="ada@example.com",
                        groups=frozenset({"support"}), lang="en"),
    "root-token": Caller(user_id=1, login="root", role="Admin", is_admin=True),
}


def identify(request: Request) -> Caller | None:
    """Who is calling, as the application knows it (None: anonymous)."""
    auth = request.headers.get("authorization", "")
    return USERS.get(auth.removeprefix("Bearer ").strip())


def build(plugin_dir: str | Path | None = None, *, watch: bool = True) -> FastAPI:
    """The application: its own endpoints first, then plughost for everything else
    (plugin routes at their declared paths, /api/v1/plugins, the admin page at /)."""
    directory = Path(plugin_dir or os.environ.get("PLUGIN_DIR", "examples/plugins"))
    manager = Manager()
    plughost_app = create_app(manager, Loader(directory, manager), watch=watch,
                              identify=identify)
    # No plugin may declare a route the application serves itself.
    manager.routes.reserve("/app/*rest", owner="the application")

    app = FastAPI(lifespan=plughost_app.router.lifespan_context)

    @app.get("/app/me")
    def me(request: Request) -> dict[str, object]:
        caller = identify(request)
        return {"login": caller.login if caller else None}

    app.mount("/", plughost_app)  # after the application's own routes: they win
    app.state.manager = manager  # the caller closes it on exit
    return app
