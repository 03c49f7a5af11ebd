"""`np-mirror demo`: the main job, offline, on the bundled emulator (`npclient.testing.demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .output import Format, hint, rows_out


def demo(
    db: Annotated[Optional[Path], typer.Option("--db", help="Where to build the demo mirror [default: $NP_MIRROR_HOME/demo.duckdb].", show_default=False)] = None,
    fault_rate: Annotated[float, typer.Option("--fault-rate", help="Failures the emulator injects while the demo syncs.")] = 0.05,
    out: Annotated[Optional[Path], typer.Option("--out", help="Where to write the plots [default: $NP_MIRROR_HOME/demo-figures].", show_default=False)] = None,
) -> None:
    """Start the Neuronpedia emulator, sync a source set exports-first, attach its SAE, ask geometry questions.

    Nothing leaves this machine: the emulator serves on 127.0.0.1 with realistic payloads,
    its rate limiter and injected failures.
    """
    from npclient.testing.demo import run_demo

    from .feature_view import render_feature
    from .progress import SyncDisplay

    run_demo(db, out, fault_rate=fault_rate, say=hint, table=lambda rows, columns: rows_out(rows, Format.table, columns),
             show_feature=lambda feature: render_feature(feature, 3), display=SyncDisplay)
    raise typer.Exit(0)
