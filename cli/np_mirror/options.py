"""Options shared by several commands, so each means the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .output import Format

DbOpt = Annotated[
    Optional[Path],
    typer.Option("--db", help="Mirror database file [default: $NP_MIRROR_HOME/mirror.duckdb].", show_default=False),
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
