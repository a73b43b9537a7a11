"""Write a grpc plugin for plughost in a few lines of Python.

```python
from plughost import sdk

plugin = sdk.Plugin("greeter", version="1.0.0", permissions=["config", "log"])

@plugin.function
def hello(args):
    greeting = sdk.host.config_get("greeting") or "Hello"
    sdk.host.log("info", "saying hello")
    return {"message": f"{greeting}, {args.get('name', 'world')}!"}

if __name__ == "__main__":
    plugin.serve()
```

`serve()` does the rest of the protocol (docs/protocol.md): the magic-cookie check, the
Unix socket in the host's private directory, the health service, the handshake line, the
`Register`/`Init`/`Call`/`Shutdown` RPCs, and exit when the host asks or when the host dies.
"""

from .host import HostClient, HostError, host, host_token
from .plugin import Plugin, PluginError

__all__ = ["HostClient", "HostError", "Plugin", "PluginError", "host", "host_token"]
