"""Errors as HTTP: every failure is JSON `{"error": message, "type": ClassName}`.

The status says who is at fault: the client (400, 404), the plugin (502, 504), the plugin's
state (503), or loading it (500).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from ..errors import (
    ManifestError,
    PermissionDenied,
    PlughostError,
    PluginCallError,
    PluginLoadError,
    PluginNotFound,
    PluginTimeout,
    PluginUnavailable,
)

#: Most specific first: PluginTimeout is a PluginCallError, SignatureError a PluginLoadError,
#: PluginDisabled a PluginUnavailable.
STATUS: tuple[tuple[type[PlughostError], int], ...] = (
    (PluginNotFound, 404),
    (PluginUnavailable, 503),
    (PluginTimeout, 504),
    (PermissionDenied, 403),
    (ManifestError, 500),
    (PluginLoadError, 500),
    (PluginCallError, 502),
)

#: Errors that mean "the plugin could not be loaded" (remembered as the plugin's last error).
LOAD_ERRORS = (ManifestError, PluginLoadError)


def status_for(exc: BaseException, default: int = 500) -> int:
    """The HTTP status of an exception; `default` for other plughost errors and bugs."""
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return default


def error_json(message: str, type_name: str, status: int,
               headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "type": type_name, **extra}, status_code=status,
                        headers=headers)


def error_response(exc: BaseException, default: int = 500) -> JSONResponse:
    """The JSON error for `exc`; plughost errors carry their plugin name."""
    extra: dict[str, Any] = {}
    if isinstance(exc, PlughostError) and exc.plugin:
        extra["plugin"] = exc.plugin
    return error_json(str(exc), type(exc).__name__, status_for(exc, default), **extra)


def bad_request(message: str) -> JSONResponse:
    return error_json(message, "BadRequest", 400)
