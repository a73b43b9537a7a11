"""The `plughost` command line (SPEC 9). Errors are one clear line and a non-zero exit."""

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

from .errors import PlughostError
from .loader import Loader
from .manager import Manager

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="plughost: discover, load and call wasm and grpc plugins.")
out = Console()
err = Console(stderr=True)

DirArg = Annotated[Path, typer.Argument(help="Plugin directory.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    return typer.Exit(code)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                                help="Log what plughost does.")] = False
          ) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@app.command("list")
def list_cmd(directory: DirArg = Path("plugins"),
             as_json: Annotated[bool, typer.Option("--json", help="JSON for scripts.")] = False,
             load: Annotated[bool, typer.Option(help="Load each plugin to check it.")] = True,
             ) -> None:
    """List the plugins in DIRECTORY: name, type, version, state and any error."""
    manager = Manager()
    try:
        loader = Loader(directory, manager, lazy=not load)
        with out.status("loading plugins...", spinner="dots") if load and not as_json \
                else nullcontext():
            loader.load_all()
        rows: list[dict[str, str]] = []
        for d in loader.discovered_plugins():
            plugin = manager.get(d.name) if d.loaded else None
            version = (plugin.registration.version if plugin else
                       d.manifest.version if d.manifest else "")
            state = "error" if d.error else ("loaded" if d.loaded else "discovered")
            rows.append({"name": d.name, "type": d.type, "version": version, "state": state,
                         "path": str(d.path), "error": str(d.error) if d.error else ""})
    except PlughostError as exc:
        raise _fail(str(exc)) from None
    finally:
        manager.close()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"plugins in {directory}")
    for col in ("name", "type", "version", "state", "path / error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        state = {"loaded": "[green]loaded[/]", "error": "[red]error[/]"}.get(r["state"],
                                                                            r["state"])
        table.add_row(r["name"], r["type"], r["version"], state, r["error"] or r["path"])
    out.print(table)


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
    try:
        Loader(directory, manager, lazy=True).discover_all()
        result = manager.call(name, function, parsed, timeout=timeout)
    except PlughostError as exc:
        raise _fail(f"{type(exc).__name__}: {exc}") from None
    finally:
        manager.close()
    print(json.dumps(result))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
