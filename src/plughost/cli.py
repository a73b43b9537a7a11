"""The `plughost` command line (README, docs/server.md).

Errors are one clear line and a non-zero exit."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import PlughostError
from .listing import BROKEN, grants_text, plugin_rows
from .loader import Loader
from .manager import Manager
from .manifest import MANIFEST_FILE, load_manifest
from .packaging import pack
from .scaffold import create as create_scaffold
from .signing import (
    generate_keypair,
    load_private_key,
    load_trusted_keys,
    sign_path,
    verify_path,
)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="plughost: discover, load and call wasm and grpc plugins.")
out = Console()
err = Console(stderr=True)

DirArg = Annotated[Path, typer.Argument(help="Plugin directory.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    """Print one error line and return the exit to raise. The message is plain text (a
    path or a plugin's error may hold `[...]`, which Rich would read as markup) and is not
    wrapped at the terminal width, so scripts and logs get it whole."""
    line = Text.assemble(("error:", "bold red"), " ", message)
    err.print(line, highlight=False, soft_wrap=True)
    return typer.Exit(code)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                                help="Log what plughost does.")] = False
          ) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:  # plugins' own chatter stays in their logs unless asked for
        logging.getLogger("plughost.plugin").setLevel(logging.ERROR)


@app.command("list")
def list_cmd(directory: DirArg = Path("plugins"),
             as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
             load: Annotated[bool, typer.Option(help="Load each plugin to check it.")] = True,
             ) -> None:
    """List the plugins in DIRECTORY: name, type, version, state and any error.

    Exits 1 when any plugin is broken or failed to load (after printing the whole list).
    """
    manager = Manager()
    loader: Loader | None = None
    try:
        loader = Loader(directory, manager, lazy=not load)
        with out.status("loading plugins...", spinner="dots") if load and not as_json \
                else nullcontext():
            loader.load_all()
        # the same rows as the JSON API, with the columns a terminal needs
        rows: list[dict[str, Any]] = [
            {"name": r["name"], "type": r["type"], "version": r["version"],
             "state": r["state"], "path": r["path"], "error": r["error"] or "",
             "grants": r["grants"], "unsafe": r["unsafe"], "blocked": r.get("blocked", False),
             "grants_text": grants_text(r)}
            for r in plugin_rows(manager, loader)]
    except PlughostError as exc:
        raise _fail(str(exc)) from None
    finally:
        if loader is not None:
            loader.close()
        manager.close()
    failed = sum(r["state"] in BROKEN for r in rows)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        # Every cell is Text: names, paths and errors come from files and plugins, so
        # they are never read as Rich markup.
        table = Table(title=Text(f"plugins in {directory}"))
        for col in ("name", "type", "version", "state", "grants", "path / error"):
            table.add_column(col, overflow="fold")
        for r in rows:
            style = "red" if r["state"] in BROKEN else "green" if r["state"] == "running" \
                else ""
            table.add_row(Text(r["name"]), Text(r["type"]), Text(r["version"]),
                          Text(r["state"], style=style),
                          Text(r["grants_text"], style="yellow" if r["unsafe"] else ""),
                          Text(r["error"] or r["path"]))
        out.print(table)
        if failed:
            err.print(Text(f"{failed} of {len(rows)} plugins failed", style="bold red"))
    if failed:
        raise typer.Exit(1)


@app.command()
def call(name: Annotated[str, typer.Argument(help="Plugin name.")],
         function: Annotated[str, typer.Argument(help="Function to call.")],
         args: Annotated[str, typer.Argument(help="JSON arguments.")] = "{}",
         directory: Annotated[Path, typer.Option("--dir", "-d",
                                                 help="Plugin directory.")] = Path("plugins"),
         timeout: Annotated[float | None, typer.Option(help="Seconds.")] = None) -> None:
    """Load plugin NAME from --dir and print the JSON result of FUNCTION(ARGS)."""
    try:
        parsed: Any = json.loads(args)
    except json.JSONDecodeError as exc:
        raise _fail(f"ARGS is not valid JSON: {exc}", 2) from None
    manager = Manager()
    loader: Loader | None = None
    try:
        loader = Loader(directory, manager, lazy=True)
        loader.discover_all()
        result = manager.call(name, function, parsed, timeout=timeout)
    except PlughostError as exc:
        raise _fail(f"{type(exc).__name__}: {exc}") from None
    finally:
        if loader is not None:
            loader.close()
        manager.close()
    print(json.dumps(result))


@app.command()
def new(name: Annotated[str, typer.Argument(help="Plugin name.")],
        runtime: Annotated[str, typer.Option("--runtime", "-r",
                                             help="wasm (WAT) or grpc (Python SDK).")] = "wasm",
        dest: Annotated[Path, typer.Option("--dir", "-d",
                                           help="Where to create it.")] = Path("plugins"),
        ) -> None:
    """Create a working plugin scaffold whose `hello` function answers at once."""
    try:
        pdir = create_scaffold(name, runtime, dest)
    except (OSError, PlughostError) as exc:
        raise _fail(str(exc)) from None
    print(f"created {pdir}")
    print(f"try it:  plughost call --dir {dest} {name} hello")
    if runtime == "wasm":
        print(f"rebuild after editing {name}.wat:  python {pdir / 'build.py'}")


@app.command()
def keygen(out: Annotated[Path, typer.Argument(help="Private key file to write.")]) -> None:
    """Write a new ed25519 private key to OUT (mode 0600) and its public key to OUT.pub."""
    try:
        priv, pub = generate_keypair(out)
    except FileExistsError as exc:
        raise _fail(f"{exc}; refusing to overwrite a key") from None
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc}") from None
    out_console = Console()
    out_console.print(f"private key: {priv} (keep it secret)\npublic key:  {pub}")


@app.command()
def sign(path: Annotated[Path, typer.Argument(help="A .wasm/.zip file or a plugin dir.")],
         key: Annotated[Path, typer.Option("--key", "-k", help="Private key file.")]) -> None:
    """Sign PATH: writes PATH.sig for a file, plugin.sig inside a directory."""
    try:
        sig = sign_path(path, load_private_key(key))
    except (OSError, ValueError, PlughostError) as exc:
        raise _fail(str(exc)) from None
    print(f"wrote {sig}")


@app.command()
def verify(path: Annotated[Path, typer.Argument(help="A .wasm/.zip file or a plugin dir.")],
           trusted: Annotated[list[Path], typer.Option(
               "--trusted", "-t", help="Public key file (repeat for several).")]) -> None:
    """Exit 0 if PATH is signed by a trusted key; non-zero with the reason otherwise."""
    try:
        keys = load_trusted_keys(trusted)
        entry = None
        if path.is_dir() and (path / MANIFEST_FILE).exists():
            entry = load_manifest(path).entry
        index, covers = verify_path(path, keys, entry=entry)
    except (OSError, PlughostError) as exc:
        raise _fail(f"{path}: {exc.message if isinstance(exc, PlughostError) else exc}") \
            from None
    print(f"{path}: valid signature (trusted key #{index + 1}); {covers}")


@app.command("pack")
def pack_cmd(directory: Annotated[Path, typer.Argument(help="Plugin directory.")],
             out: Annotated[Path, typer.Option("--out", "-o", help="The .zip to write.")]
             ) -> None:
    """Pack a plugin directory (with its signature, if signed) into a .zip package."""
    try:
        count = pack(directory, out)
    except (OSError, PlughostError) as exc:
        raise _fail(str(exc)) from None
    print(f"wrote {out} ({count} files)")


@app.command()
def serve(directory: DirArg = Path("plugins"),
          host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port to listen on (0: any free).")] = 8080,
          watch: Annotated[bool, typer.Option(
              "--watch/--no-watch", help="Hot-reload plugins when their files change.")] = True,
          debounce_ms: Annotated[int, typer.Option(
              "--debounce-ms", help="Wait this long for changes to settle.")] = 500,
          lazy: Annotated[bool, typer.Option(
              "--lazy", help="Load each plugin on its first call, not at start.")] = False,
          token: Annotated[str | None, typer.Option(
              "--token", envvar="PLUGHOST_API_TOKEN", show_envvar=True,
              help="API token clients must send (at least 16 characters). Beyond loopback "
                   "one is required: without this, the stored or a new generated one.")
          ] = None,
          insecure_no_auth: Annotated[bool, typer.Option(
              "--insecure-no-auth",
              help="Serve a non-loopback address WITHOUT a token. Anyone who can reach "
                   "the port controls the plugins.")] = False,
          health_check: Annotated[bool, typer.Option(
              "--health-check/--no-health-check",
              envvar=["PLUGHOST_HEALTH_CHECK", "GOATFLOW_PLUGIN_HEALTH_CHECK"],
              help="Probe every plugin every 60 s (__health_ping__).")] = True,
          auto_restart: Annotated[bool, typer.Option(
              "--auto-restart/--no-auto-restart",
              envvar=["PLUGHOST_AUTO_RESTART", "GOATFLOW_PLUGIN_AUTO_RESTART"],
              help="Reload a plugin the health check finds unhealthy, with backoff.")
          ] = True,
          ) -> None:
    """Serve DIRECTORY: JSON API, live events, plugin routes and an admin page at /.

    On a loopback address no token is needed (unless --token is given). Ctrl-C or
    SIGTERM stops it gracefully: every plugin is unloaded first.
    """
    # Imported here so the other commands do not pay for starlette and uvicorn.
    from .server import ServeError
    from .server import serve as run_server

    try:
        run_server(directory, host=host, port=port, watch=watch, debounce_ms=debounce_ms,
                   lazy=lazy, token=token, insecure_no_auth=insecure_no_auth,
                   health=health_check, auto_restart=auto_restart,
                   echo=lambda line: print(line, flush=True))
    except ServeError as exc:
        raise _fail(str(exc)) from None


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
