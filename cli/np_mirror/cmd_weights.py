"""`np-mirror weights add|list`: attach SAE decoders to mirrored sources.

Only `weights add` from a folder or the registry imports sae_lens (~10 s); `--help`, `list`
and bare safetensors files never do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import open_mirror
from .options import DbOpt, Dtype, DtypeOpt, FormatOpt
from .output import Format, hint, rows_out

weights_app = typer.Typer(
    name="weights",
    help="Attach SAE decoder weights to mirrored sources (row i of W_dec is feature i).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


LIST_COLUMNS = [
    "source_id", "loader", "d_sae", "d_in", "dtype", "architecture", "release", "sae_id",
    "nan_rows", "zero_rows", "sha256", "source_path", "decoder_path", "attached_at",
]
#: The terminal view: what fits in 100 columns readably (bad_rows = NaN + all-zero rows).
TABLE_COLUMNS = ["source_id", "d_sae", "d_in", "dtype", "bad_rows", "sha256", "from"]


@weights_app.command("add")
def add(
    source_id: Annotated[str, typer.Argument(metavar="MODEL/SOURCE", help="Source id, e.g. gpt2-small/7-res-jb.", show_default=False)],
    path: Annotated[Optional[Path], typer.Option("--path", help="An sae_lens folder (cfg.json + sae_weights.safetensors) or a bare safetensors file [default: sae_lens's registry through the Hugging Face cache].", show_default=False)] = None,
    tensor: Annotated[Optional[str], typer.Option("--tensor", help="Tensor holding the decoder in a bare safetensors file [default: W_dec, or its only 2-D tensor].", show_default=False)] = None,
    transpose: Annotated[bool, typer.Option("--transpose", help="The tensor is stored d_in x d_sae.")] = False,
    release: Annotated[Optional[str], typer.Option("--release", help="sae_lens release (with --sae-id), instead of looking the id up.", show_default=False)] = None,
    sae_id: Annotated[Optional[str], typer.Option("--sae-id", help="sae_lens SAE id within --release.", show_default=False)] = None,
    dtype: DtypeOpt = Dtype.float32,
    db: DbOpt = None,
) -> None:
    """Load a source's decoder, check it against the mirror, keep a copy and record it.

    d_sae must equal the source's feature count when the mirror knows it, and a neuronpedia_id
    in the weights' config must name this source; NaN and all-zero rows are counted. An error
    attaches nothing.
    """
    with open_mirror(db, read_only=False) as mirror:
        rec = mirror.attach_weights(source_id, path=path, tensor=tensor, transpose=transpose,
                                    release=release, sae_id=sae_id, dtype=dtype.value)
    origin = rec.source_path or f"{rec.release}/{rec.sae_id}"
    arch = f"{rec.architecture}, " if rec.architecture else ""
    hint(f"{rec.source_id}: attached a {rec.d_sae} x {rec.d_in} {rec.dtype} decoder ({arch}{rec.loader}: {origin})")
    hint(f"  {rec.nan_rows} NaN/inf rows, {rec.zero_rows} all-zero rows; copy at {rec.decoder_path}")
    for note in rec.notes:
        hint(f"  note: {note}")


@weights_app.command("list")
def list_(db: DbOpt = None, fmt: FormatOpt = Format.table) -> None:
    """Decoders attached to the mirror: where from (path, sha256, release), shape, dtype, bad rows."""
    with open_mirror(db, read_only=True) as mirror:
        rows = [r.to_dict() for r in mirror.store.all_weights()]
    if fmt is not Format.table:
        rows_out(rows, fmt, LIST_COLUMNS)
        return
    if not rows:
        hint("np-mirror: no weights attached; try `np-mirror weights add gpt2-small/0-res-jb --path SAE_DIR`")
    for r in rows:  # a narrower view for the terminal; csv/json carry every column
        r["bad_rows"] = r["nan_rows"] + r["zero_rows"]
        r["from"] = f"{r['release']}/{r['sae_id']}" if r["loader"] == "registry" else r["source_path"]
    rows_out(rows, fmt, TABLE_COLUMNS)
