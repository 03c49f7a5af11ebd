"""One place that turns exceptions into one-line messages and exit codes.

Exit codes: 0 ok; 1 the work failed (network, server, a busy mirror, a taken port, a bug);
2 the request itself is wrong (bad id, unknown source, an index beyond the source, an unusable
path or device, a bad option), nothing done; 130 interrupted (Ctrl-C).

    what was raised                                         code  the one line on stderr
    InvalidIdError (UnknownSourceError)                     2     invalid id: / unknown source:
    InvalidOptionError (InvalidPathError, FeatureOutOfRange,
        WeightsRequestError)                                2     bad input: -k must be >= 1 (option -> flag)
    typer.BadParameter (a value click or a command refused) 2     bad input: Invalid value for '-k': ... (see
                                                                  `np-mirror CMD --help`)
    any other click usage error (unknown option, missing
        argument, unknown command)                          2     usage: message (see `np-mirror CMD --help`)
    no arguments to a group                                 2     (its help, as click prints it)
    Ctrl-C                                                  130   interrupted (sync: kept N features; rerun to resume)
    QueryError, NotAMirrorError, MirrorNotFound             2     SQL error: / not a mirror: / mirror error:
    NPTransportError (a weights hub that cannot be reached
        included)                                           1     network error:
    WeightsError, ExportError                               2     weights: / export:
    MirrorBusyError, StoreError                             1     mirror busy: ... (--wait SECONDS waits longer) /
                                                                  mirror error:
    APIStatusError, any other NPError                       1     API error: / error:
    OSError (disk full, permission denied, ...)             1     system error: Type: message
    anything else (a bare ValueError, KeyError, numpy...)   1     unexpected error: Type: message (rerun with
                                                                  --debug for the traceback, and please report it)

The library never names a command-line flag; an `InvalidOptionError` carries `option`, the
argument as the library spells it (`k`, `n_clusters`, `range`), and the line gets the flag of
the command that ran, when that command has the option (`app.py` tells us its parameters).
`np-mirror --debug ...` (or `--debug` anywhere before a bare `--`) and `NP_MIRROR_DEBUG=1`
print the traceback before the line.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Iterable
from typing import Any, Optional

import typer

from npclient.errors import (
    APIStatusError,
    ExportError,
    InvalidIdError,
    InvalidOptionError,
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
EXIT_INTERRUPTED = 130

#: (exception type, exit code, prefix), most specific first. Only typed errors: anything not
#: here is a bug (exit 1, "unexpected error"), whatever its type.
CLI_ERROR_MAPPINGS: list[tuple[type[BaseException], int, str]] = [
    (UnknownSourceError, EXIT_BAD_INPUT, "unknown source"),
    (InvalidIdError, EXIT_BAD_INPUT, "invalid id"),
    (InvalidOptionError, EXIT_BAD_INPUT, "bad input"),
    (QueryError, EXIT_BAD_INPUT, "SQL error"),
    (NotAMirrorError, EXIT_BAD_INPUT, "not a mirror"),
    (MirrorNotFound, EXIT_BAD_INPUT, "mirror error"),
    (MirrorBusyError, EXIT_FAILURES, "mirror busy"),
    (StoreError, EXIT_FAILURES, "mirror error"),
    # before WeightsError: a hub that cannot be reached is the network's failure, not bad input
    (NPTransportError, EXIT_FAILURES, "network error"),
    (WeightsError, EXIT_BAD_INPUT, "weights"),
    (ExportError, EXIT_BAD_INPUT, "export"),
    (APIStatusError, EXIT_FAILURES, "API error"),
    (NPError, EXIT_FAILURES, "error"),
]

#: (error type, option, hint): where the command that ran has `option`, the line ends with the
#: hint, its flag in place of `{flag}`.
CLI_HINTS: list[tuple[type[BaseException], str, str]] = [
    (MirrorNotFound, "db", "{flag} FILE names another mirror"),
    (MirrorBusyError, "wait", "`np-mirror {flag} SECONDS ...` waits longer"),
]

#: Options of `np-mirror` itself (app.py's callback), known to every command's lines.
GLOBAL_FLAGS = {"wait": "--wait"}

UNEXPECTED_HINT = "rerun with --debug for the traceback, and please report it"

# click's exceptions, wherever this typer keeps them (recent typers vendor click as typer._click).
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_NoArgsIsHelpError = getattr(sys.modules[_UsageError.__module__], "NoArgsIsHelpError", None)


class _Run:
    """What this invocation knows: whether to show tracebacks, and the running command's flags."""

    debug = False
    flags: dict[str, str] = {}


def begin(*, debug: bool = False) -> None:
    """Start of one `main()`: forget the previous command (tests run many in one process)."""
    _Run.debug = debug
    _Run.flags = dict(GLOBAL_FLAGS)


class Interrupted(Exception):
    """Ctrl-C inside a command, passed on as this (not KeyboardInterrupt) so click does not
    print its blank line first; `handle` answers it with exit 130 and one line."""


def set_debug(on: bool = True) -> None:
    _Run.debug = _Run.debug or on


def debug_enabled() -> bool:
    return _Run.debug or os.environ.get("NP_MIRROR_DEBUG", "") not in ("", "0")


def _flag_of(param: Any) -> Optional[str]:
    opts = [o for o in getattr(param, "opts", []) if o.startswith("-")]
    if getattr(param, "param_type_name", None) != "option" or not opts:
        return None
    return max(opts, key=len)  # "--format" rather than "-f"; "-k" where that is all there is


def remember_command(params: Iterable[Any]) -> None:
    """The options of the command about to run, by their Python name (`range_` as `range`)."""
    for param in params:
        flag = _flag_of(param)
        if flag is not None and param.name:
            _Run.flags[param.name] = flag
            _Run.flags.setdefault(param.name.rstrip("_"), flag)


def flag_for(option: Optional[str]) -> Optional[str]:
    """The running command's flag for the library's `option`, or None when it has none."""
    return _Run.flags.get(option) if option else None


def fail(message: str, code: int = EXIT_BAD_INPUT) -> "typer.Exit":
    """Print `np-mirror: ...` on stderr and return the Exit to raise."""
    typer.echo(f"np-mirror: {message}", err=True)
    return typer.Exit(code)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _typed_line(exc: BaseException, prefix: str) -> str:
    text = _first_line(exc) or type(exc).__name__
    option = getattr(exc, "option", None)
    flag = flag_for(option)
    if flag is not None and flag not in text:
        if text.startswith((f"{option} ", f"{option}:")):  # "k must be >= 1" -> "-k must be >= 1"
            text = flag + text[len(option):]
        else:
            text = f"{flag}: {text}"
    for kind, option, hint in CLI_HINTS:
        hint_flag = flag_for(option)
        if isinstance(exc, kind) and hint_flag is not None and hint_flag not in text:
            text = f"{text}; {hint.format(flag=hint_flag)}"
    return f"np-mirror: {prefix}: {text}"


def _usage_line(exc: Any) -> str:
    text = " ".join(line.strip() for line in exc.format_message().splitlines() if line.strip())
    path = exc.ctx.command_path if exc.ctx is not None else ""
    see = f" (see `{path} --help`)" if path else ""
    prefix = "bad input" if isinstance(exc, typer.BadParameter) else "usage"
    return f"np-mirror: {prefix}: {text}{see}"


def _print_traceback(exc: BaseException) -> None:
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


def handle(exc: BaseException) -> int:
    """Print one line for `exc` (after its traceback with --debug) and return the exit code.

    Never re-raises: a typed input error is exit 2, anything unexpected exit 1, with a hint.
    """
    code, line = classify(exc)
    if line is None:  # click's "no arguments: here is the help"
        exc.show()  # type: ignore[attr-defined]
        return code
    if debug_enabled() and not isinstance(exc, _UsageError):
        _print_traceback(exc)
    print(line, file=sys.stderr)
    return code


def classify(exc: BaseException) -> tuple[int, Optional[str]]:
    """(exit code, the line to print) for `exc`; the line is None where click prints help."""
    if _NoArgsIsHelpError is not None and isinstance(exc, _NoArgsIsHelpError):
        return exc.exit_code, None
    if isinstance(exc, _UsageError):  # typer.BadParameter included
        return exc.exit_code, _usage_line(exc)
    if isinstance(exc, Interrupted):
        return EXIT_INTERRUPTED, "np-mirror: interrupted"
    if isinstance(exc, typer.Abort):
        if isinstance(exc.__context__, KeyboardInterrupt):
            return EXIT_INTERRUPTED, "np-mirror: interrupted"
        return EXIT_FAILURES, "np-mirror: aborted"
    if isinstance(exc, _ClickException):
        return exc.exit_code, f"np-mirror: error: {exc.format_message()}"
    for kind, code, prefix in CLI_ERROR_MAPPINGS:
        if isinstance(exc, kind):
            return code, _typed_line(exc, prefix)
    described = type(exc).__name__ + (f": {_first_line(exc)}" if _first_line(exc) else "")
    if isinstance(exc, OSError):
        if exc.errno == errno.EPIPE:  # stdout closed early (`| head`): nothing to say
            return EXIT_FAILURES, "np-mirror: output closed early"
        return EXIT_FAILURES, f"np-mirror: system error: {described} (rerun with --debug for the traceback)"
    return EXIT_FAILURES, f"np-mirror: unexpected error: {described} ({UNEXPECTED_HINT})"

