"""examples/embedding/fastapi_app.py, run for real: a FastAPI application with its own users
mounts plughost, and its identity hook decides what plugin routes and the management API
let through."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import httpx

from .conftest import variant_dir
from .serving import serve_in_thread

EXAMPLE = Path(__file__).parent.parent / "examples" / "embedding" / "fastapi_app.py"
ADA = {"authorization": "Bearer ada-token"}
ROOT = {"authorization": "Bearer root-token"}


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_app_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_fastapi_example_serves_plugins_for_its_own_users(examples: Path) -> None:
    variant_dir(examples, "squatter", {"routes": [{"path": "/app/settings",
                                                   "handler": "echo"}]})
    app = _example().build(examples, watch=False)
    try:
        with serve_in_thread(app) as s:
            assert httpx.get(f"{s.url}/app/me", headers=ADA).json() == {"login": "ada"}
            r = httpx.get(f"{s.url}/hello", params={"name": "Ada"}, timeout=30)
            assert r.status_code == 200 and r.json()["message"] == "Hello, Ada!"
            assert httpx.get(f"{s.url}/api/v1/plugins").status_code == 401
            listed = httpx.get(f"{s.url}/api/v1/plugins", headers=ADA).json()["plugins"]
            squatter = next(p for p in listed if p["name"] == "squatter")
            assert "collides with the application's own endpoint /app/*rest" in \
                squatter["error"]
            r = httpx.post(f"{s.url}/api/v1/plugins/greeter/disable", headers=ADA)
            assert (r.status_code, r.json()["error"]) == (403, "admin access required")
            r = httpx.post(f"{s.url}/api/v1/plugins/greeter/disable", headers=ROOT)
            assert r.json()["status"] == "disabled"
            assert httpx.get(f"{s.url}/hello", timeout=30).status_code == 403
            r = httpx.post(f"{s.url}/api/v1/plugins/hello/call/hello", headers=ROOT,
                           timeout=30)
            assert r.json() == {"message": "Hello from a wasm plugin!"}
    finally:
        app.state.manager.close()
