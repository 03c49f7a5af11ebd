"""Options shared by several commands, so each means the same everywhere.

`--dtype` and `--device` are defined once here: every command that takes them offers the same
choices and refuses anything else while parsing (exit 2), before the mirror is opened or torch
is imported. Whether a named device is present (CUDA on this machine?) is the library's check.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from .output import Format

DbOpt = Annotated[
    Optional[Path],
    typer.Option("--db", help="Mirror database file [default: `np-mirror --db`, else $NP_MIRROR_HOME/mirror.duckdb].",
                 show_default=False),
]
BaseUrlOpt = Annotated[
    Optional[str],
    typer.Option(
        "--base-url",
        help="Neuronpedia site root, without /api [default: $NEURONPEDIA_BASE_URL or https://www.neuronpedia.org].",
        show_default=False,
    ),
]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]


def _positive_rate(value: Optional[float]) -> Optional[float]:
    """Refuse `--rate 0` (or less) while parsing: bad input, exit 2, before anything is done."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be > 0 requests per second, got {value:g}")
    return value


RateOpt = Annotated[
    Optional[float],
    typer.Option("--rate", help="Requests per second [default: 90% of Neuronpedia's 25,000/hour].", show_default=False,
                 callback=_positive_rate),
]
ConcurrencyOpt = Annotated[int, typer.Option("--concurrency", min=1, help="Requests in flight at most.")]


class Dtype(str, enum.Enum):
    """The dtypes a decoder is kept in or multiplied in (float32 is exact; the others halve memory)."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


DTYPE_HELP = "float32 (exact), bfloat16 or float16 (half the memory; faster on a GPU, slower on a CPU)."
DtypeOpt = Annotated[Dtype, typer.Option("--dtype", help=DTYPE_HELP)]

#: cpu, mps, cuda, cuda:N: the device names torch knows that np-mirror can use.
DEVICE_PATTERN = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
DEVICE_CHOICES = "cpu, cuda, cuda:N or mps"


def _device(value: Optional[str]) -> Optional[str]:
    """Refuse a device name torch cannot be given (`tpu`, `gpu`) while parsing; whether the
    device is present here is checked when the work starts (torch loads only then)."""
    if value is not None and not DEVICE_PATTERN.match(value.strip().lower()):
        raise typer.BadParameter(f"takes {DEVICE_CHOICES}, got {value!r}")
    return value.strip().lower() if value is not None else None


DeviceOpt = Annotated[
    Optional[str],
    typer.Option("--device", metavar="DEVICE", help=f"{DEVICE_CHOICES} [default: the best available: cuda, mps, cpu].",
                 show_default=False, callback=_device),
]

#: `show --acts N`: how many top activations; 0 shows none, a negative count is refused.
ActsOpt = Annotated[int, typer.Option("--acts", min=0, help="How many top activations to show.")]


def _query(value: str) -> str:
    """Refuse an empty or blank SQL query while parsing (DuckDB would answer nothing at all)."""
    if not value.strip():
        raise typer.BadParameter("is empty; give a query, e.g. \"SELECT count(*) FROM features\"")
    return value


def writable_dir(path: Path) -> Path:
    """`path` if a folder can be created or written there; else BadParameter naming why.

    Checked while parsing, so an unusable output path fails before the mirror is opened or any
    work is done (and nothing is left half-written)."""
    import os

    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise typer.BadParameter(f"{probe} is a file, not a folder; choose a folder to write into")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise typer.BadParameter(f"{probe} is not writable; choose a folder you can write to")
    return path


def _writable_dir(value: Optional[Path]) -> Optional[Path]:
    return None if value is None else writable_dir(value)


OutDirOpt = Annotated[Path, typer.Option("--parquet", metavar="DIR", show_default=False, callback=_writable_dir,
                                         help="Directory to write (features/, activations/, explanations/, "
                                              "each model=/source=/ partitioned).")]

#: `sql QUERY`: the query, refused while parsing when empty.
SqlQueryArg = Annotated[str, typer.Argument(metavar="QUERY", help="A read-only SQL query over the mirror's tables.", show_default=False,
                                            callback=_query)]

#: `np-mirror --wait SECONDS`: how long a command waits for a mirror another process holds.
DEFAULT_WAIT_S = 120.0

