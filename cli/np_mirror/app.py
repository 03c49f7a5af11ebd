"""Wiring only: every command lives in its own module and calls one library function."""

from __future__ import annotations

import atexit
import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from . import cmd_cache, cmd_dataset, cmd_demo, cmd_emulator, cmd_exports, cmd_fetch, cmd_geometry, cmd_read, cmd_serve, cmd_sync, cmd_weights
from .common import Globals
from .errors import EXIT_INTERRUPTED, Interrupted, begin, handle, remember_command, set_debug
from .options import DEFAULT_WAIT_S

app = typer.Typer(
    name="np-mirror",
    help=(
        "Mirror Neuronpedia SAE features locally and query them offline.\n\n"
        "Typical session: `np-mirror sync gpt2-small/0-res-jb`, then `np-mirror show "
        "gpt2-small/0-res-jb/123` or `np-mirror sql \"select ...\"`. Set NEURONPEDIA_BASE_URL to "
        "use another server (e.g. `np-mirror emulator`), NEURONPEDIA_API_KEY to send a key, "
        "NP_MIRROR_HOME to move the mirror (default ~/.cache/np-mirror).\n\n"
        "Exit codes: 0 ok; 1 the work failed (network, server, a busy mirror, or an unexpected error); "
        "2 bad input, nothing done; 130 interrupted. "
        "Errors are one line; --debug (before or after the command) or NP_MIRROR_DEBUG=1 adds the traceback."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

app.command("sync")(cmd_sync.sync)
app.command("status")(cmd_read.status)
app.command("show")(cmd_read.show)
app.command("sql")(cmd_read.sql)
app.command("sources")(cmd_read.sources)
app.command("import")(cmd_exports.import_)
app.command("export")(cmd_exports.export)
app.command("fetch")(cmd_fetch.fetch)
app.command("serve")(cmd_serve.serve)
app.command("emulator")(cmd_emulator.emulator)
app.command("demo")(cmd_demo.demo)
app.add_typer(cmd_weights.weights_app, name="weights")
app.command("neighbors")(cmd_geometry.neighbors)
app.add_typer(cmd_geometry.geometry_app, name="geometry")
app.add_typer(cmd_cache.cache_app, name="cache")
app.add_typer(cmd_dataset.dataset_app, name="dataset")
app.command("attach")(cmd_dataset.attach)


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Print the traceback of any error (as NP_MIRROR_DEBUG=1 does); also accepted after the command.")] = False,
    db: Annotated[Optional[Path], typer.Option("--db", help="Mirror database file for the command (its own --db wins) [default: $NP_MIRROR_HOME/mirror.duckdb].", show_default=False)] = None,
    wait: Annotated[float, typer.Option("--wait", metavar="SECONDS", min=0, help="How long to wait for a mirror that another process holds before giving up (exit 1).")] = DEFAULT_WAIT_S,
) -> None:
    set_debug(debug)
    Globals.db_path = db
    Globals.wait_s = wait


def _take_debug(args: list[str]) -> tuple[list[str], bool]:
    """`args` without `--debug` (anywhere before a bare `--`), and whether it was there."""
    cut = args.index("--") if "--" in args else len(args)
    head = [a for a in args[:cut] if a != "--debug"]
    return head + args[cut:], len(head) != cut


def _watch(command: Any) -> None:
    """Before each command's callback runs, tell the error handler that command's options, so
    a library error about `k` is reported as `-k` (the library never names flags)."""
    callback = command.callback
    if callback is not None:
        params = list(command.params)

        @functools.wraps(callback)
        def run(*args: object, **kwargs: object) -> object:
            remember_command(params)
            try:
                return callback(*args, **kwargs)
            except KeyboardInterrupt:  # not click's Abort: it would print a blank line first
                raise Interrupted() from None

        command.callback = run
    for sub in getattr(command, "commands", {}).values():
        _watch(sub)


def main(argv: Optional[list[str]] = None) -> int:
    """Run one command line; return its exit code (see errors.py for the table)."""
    args, debug = _take_debug(list(sys.argv[1:] if argv is None else argv))
    begin(debug=debug)
    Globals.reset()
    command = typer.main.get_command(app)
    _watch(command)
    try:
        rv = command.main(args=args, prog_name="np-mirror", standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        print("np-mirror: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every error becomes one line and an exit code
        return handle(exc)
    return rv if isinstance(rv, int) else 0


def run() -> None:
    """Console-script entry point. After a command that loaded torch (and not Ray), the process
    ends without tearing its modules down: torch, numba and DuckDB take 0.5-1 s to do that at
    interpreter exit, and a finished command has nothing left in them. The exit handlers still run
    (temporary folders, coverage) and the output is flushed first."""
    code = main()
    if "torch" in sys.modules and "ray" not in sys.modules:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):  # a closed pipe: the normal exit reports it
            sys.exit(code)
        atexit._run_exitfuncs()
        os._exit(code if isinstance(code, int) else 1)
    sys.exit(code)


if __name__ == "__main__":
    sys.exit(main())
