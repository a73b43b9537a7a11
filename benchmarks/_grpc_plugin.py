"""A tiny grpc plugin written with plughost.sdk, for the grpc benchmarks.

`write_plugin(plugins_dir, name, version)` writes `<plugins_dir>/<name>/plugin.yaml` and
`<name>.py`; plughost runs `.py` binaries with the host's interpreter. Functions:
`echo` (returns its args) and `version` (returns the version string baked into the script).

With `trace=True` the script writes timestamps (`time.time()`, so they line up with the
host's clock) to stderr: `T start` (first line of the script, right after `import time`),
`T imported` (after `from plughost import sdk`), `T serve` (just before `serve()`), and
`T init` (from its on_init hook, i.e. while the host's `Init` RPC is being served). The
host logs stderr lines into the plugin's log, where the benchmark reads them back.
"""

from __future__ import annotations

import os
from pathlib import Path

# plughost first: its __init__ sets GRPC_ENABLE_FORK_SUPPORT=false before grpc is imported
# (otherwise grpc's fork handlers print a warning at every plugin start).
import plughost  # noqa: F401

SCRIPT = '''\
import time as _time
_T_START = _time.time()
import sys
from plughost import sdk
_T_IMPORTED = _time.time()

NAME, VERSION, TRACE = "__NAME__", "__VERSION__", __TRACE__
plugin = sdk.Plugin(NAME, version=VERSION)


@plugin.function
def echo(args):
    return args


@plugin.function
def version(args):
    return VERSION


if TRACE:
    @plugin.on_init
    def _init(config):
        sys.stderr.write(f"T init {_time.time()!r}\\n")
        sys.stderr.flush()


if __name__ == "__main__":
    if TRACE:
        sys.stderr.write(f"T start {_T_START!r}\\nT imported {_T_IMPORTED!r}\\n"
                         f"T serve {_time.time()!r}\\n")
        sys.stderr.flush()
    plugin.serve()
'''


def script_text(name: str, version: str, trace: bool = False) -> str:
    return (SCRIPT.replace("__NAME__", name).replace("__VERSION__", version)
            .replace("__TRACE__", "True" if trace else "False"))


def write_plugin(plugins_dir: Path, name: str, version: str = "1.0.0", *,
                 trace: bool = False, manifest_extra: str = "") -> Path:
    """Write the plugin directory; returns the script's path."""
    pdir = plugins_dir / name
    pdir.mkdir(parents=True, exist_ok=True)
    (pdir / "plugin.yaml").write_text(
        f"name: {name}\nversion: {version}\nruntime: grpc\nbinary: {name}.py\n"
        "resources: {call_timeout_ms: 30000, start_timeout_ms: 30000}\n" + manifest_extra)
    script = pdir / f"{name}.py"
    script.write_text(script_text(name, version, trace))
    return script


def replace_atomically(path: Path, data: bytes, tag: str = "") -> None:
    """Write `data` to a hidden temp file next to `path` (the watcher ignores hidden files),
    then `os.replace` it over `path`: readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp{tag}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def parse_marks(messages: list[str]) -> dict[str, float]:
    """The `T <label> <time>` lines among a plugin's stderr log messages."""
    out: dict[str, float] = {}
    for msg in messages:
        parts = msg.split()
        if len(parts) == 3 and parts[0] == "T":
            try:
                out[parts[1]] = float(parts[2])
            except ValueError:
                continue
    return out
