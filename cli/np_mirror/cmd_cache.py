"""`np-mirror cache`: the download cache under $NP_MIRROR_HOME (`npclient.exports.prune`)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import open_mirror
from .options import DbOpt
from .output import hint

cache_app = typer.Typer(help="The download cache under $NP_MIRROR_HOME.", no_args_is_help=True, add_completion=False)


def _size(n: int) -> str:
    """Bytes as a person reads them (decimal units, as the sync summary prints them)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@cache_app.command("prune")
def prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be deleted; delete nothing.")] = False,
    db: DbOpt = None,
) -> None:
    """Delete downloaded export files whose rows the mirror has imported.

    Only files under $NP_MIRROR_HOME/exports/ that the mirror records as imported (table
    `export_files`, status `imported`) and whose size and ETag are those it imported go;
    a file whose import failed or was partial, a download in progress and any file the
    mirror does not name stay. A rerun of `sync` on a complete source downloads nothing.
    """
    from npclient.exports.prune import plan_prune
    from npclient.exports.prune import prune as delete
    from npclient.paths import exports_dir
    from npclient.store.downloads import recorded_downloads

    with open_mirror(db, read_only=True) as mirror:
        records = recorded_downloads(mirror.store)
    plan = plan_prune(records, exports_dir())
    done = plan.delete if dry_run else delete(plan)
    verb = "would delete" if dry_run else "deleted"
    width = max((len(_size(item.size)) for item in done), default=0)
    for item in done:
        typer.echo(f"{verb}  {_size(item.size):>{width}}  {item.key}")
    for key, reason in plan.kept.items():
        hint(f"kept {key}: {reason}")
    total = sum(item.size for item in done)
    files = "file" if len(done) == 1 else "files"
    typer.echo(f"{verb} {len(done):,} {files}, {_size(total)} ({total:,} bytes) under {plan.root}")
