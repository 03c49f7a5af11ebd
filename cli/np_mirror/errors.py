"""One place that turns library errors into one-line messages and exit codes.

Exit codes: 0 ok; 1 done with failures (or the service failed us); 2 bad input, nothing done.
"""

from __future__ import annotations

import os
import sys

import typer

from npclient.errors import (
    APIStatusError,
    ExportError,
    InvalidIdError,
    MirrorBusyError,
    MirrorNotFound,
    NotAMirrorError,
    NPError,
    NPTransportError,
    QueryError,
    StoreError,
    UnknownSourceError,
    WeightsError,
)
EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_BAD_INPUT = 2

#: (exception type, exit code, prefix), most specific first.
CLI_ERROR_MAPPINGS: list[tuple[type[BaseException], int, str]] = [
    (UnknownSourceError, EXIT_BAD_INPUT, "unknown source"),
    (InvalidIdError, EXIT_BAD_INPUT, "invalid id"),
    (QueryError, EXIT_BAD_INPUT, "SQL error"),
    (NotAMirrorError, EXIT_BAD_INPUT, "not a mirror"),
    (MirrorNotFound, EXIT_BAD_INPUT, "mirror error"),
    (MirrorBusyError, EXIT_FAILURES, "mirror busy"),
    (StoreError, EXIT_FAILURES, "mirror error"),
    (WeightsError, EXIT_BAD_INPUT, "weights"),
    (ExportError, EXIT_BAD_INPUT, "export"),
    (APIStatusError, EXIT_FAILURES, "API error"),
    (NPTransportError, EXIT_FAILURES, "network error"),
    (NPError, EXIT_FAILURES, "error"),
    (FileNotFoundError, EXIT_BAD_INPUT, "no such file"),
    (ValueError, EXIT_BAD_INPUT, "bad input"),
]


def debug_enabled() -> bool:
    return os.environ.get("NP_MIRROR_DEBUG", "") not in ("", "0")


def fail(message: str, code: int = EXIT_BAD_INPUT) -> "typer.Exit":
    """Print `np-mirror: error: ...` on stderr and return the Exit to raise."""
    typer.echo(f"np-mirror: {message}", err=True)
    return typer.Exit(code)


def handle(exc: BaseException) -> int:
    """Print one line for a known error; re-raise anything else (a bug deserves a traceback)."""
    for kind, code, prefix in CLI_ERROR_MAPPINGS:
        if isinstance(exc, kind):
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"np-mirror: {prefix}: {text}", file=sys.stderr)
            if debug_enabled():
                import traceback

                traceback.print_exception(exc)
            return code
    raise exc
