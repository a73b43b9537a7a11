"""The plughost server (docs/server.md): JSON API, server-sent events, plugin routes, admin page.

```python
from plughost import Loader, Manager
from plughost.server import create_app

manager = Manager()
app = create_app(manager, Loader("plugins/", manager))   # any ASGI server runs it
```
`plughost serve DIR` runs it with uvicorn (see docs/server.md).
"""

from .app import create_app
from .run import PlughostServer, ServeError, serve

__all__ = ["PlughostServer", "ServeError", "create_app", "serve"]
