#!/usr/bin/env python3
"""greeter: an out-of-process grpc plugin written with the plughost Python SDK.

It greets with the `greeting` from its manifest config (a host call) and logs through the
host. plughost runs `.py` plugins with its own interpreter, so no virtualenv dance.
"""

from typing import Any

from plughost import sdk

plugin = sdk.Plugin(
    "greeter",
    version="1.0.0",
    description="Greets people (Python, grpc)",
    permissions=["config", "log"],
    routes=[{"method": "GET", "path": "/hello", "handler": "hello"}],
)
calls = 0


@plugin.function
def hello(args: dict[str, Any]) -> dict[str, Any]:
    global calls
    calls += 1
    greeting = sdk.host.config_get("greeting") or "Hello"
    sdk.host.call("log", {"level": "info", "message": f"greeting #{calls}"})
    # Called directly ({"name": ...}) or through its route GET /hello?name=... (the query
    # parameters are top-level keys of the arguments, as GoatFlow passes them)
    name = args.get("name") or "world"
    return {"message": f"{greeting}, {name}!", "calls": calls}


@plugin.function
def add(args: dict[str, Any]) -> float:
    return float(args["a"]) + float(args["b"])


@plugin.function
def fail(args: dict[str, Any]) -> None:
    raise sdk.PluginError("greeter was asked to fail")


if __name__ == "__main__":
    plugin.serve()
