"""Wiring only: every command lives in its own module and calls one library function."""

from __future__ import annotations

import sys

import typer

from . import cmd_demo, cmd_emulator, cmd_exports, cmd_fetch, cmd_geometry, cmd_read, cmd_serve, cmd_sync, cmd_weights
from .errors import handle

app = typer.Typer(
    name="np-mirror",
    help=(
        "Mirror Neuronpedia SAE features locally and query them offline.\n\n"
        "Typical session: `np-mirror sync gpt2-small/0-res-jb`, then `np-mirror show "
        "gpt2-small/0-res-jb/123` or `np-mirror sql \"select ...\"`. Set NEURONPEDIA_BASE_URL to "
        "use another server (e.g. `np-mirror emulator`), NEURONPEDIA_API_KEY to send a key, "
        "NP_MIRROR_HOME to move the mirror (default ~/.cache/np-mirror). NP_MIRROR_DEBUG=1 "
        "shows tracebacks."
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


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        print("np-mirror: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - mapped to one line, or re-raised if unknown
        return handle(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
