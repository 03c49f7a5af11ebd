"""Reading commands: `sources`, `status`, `show`, `sql`. None of them writes the mirror."""

from __future__ import annotations

from npclient import aio
from typing import Annotated, Optional

import typer

from .common import make_client, open_mirror
from .errors import EXIT_FAILURES
from .options import BaseUrlOpt, DbOpt, FormatOpt
from .output import Format, hint, json_out, rows_out


def sources(
    model: Annotated[Optional[str], typer.Argument(help="Only this model (e.g. gpt2-small).", show_default=False)] = None,
    base_url: BaseUrlOpt = None,
    fmt: FormatOpt = Format.table,
    refresh: Annotated[bool, typer.Option("--refresh", help="Ask the server again instead of the day-old cache.")] = False,
) -> None:
    """List what Neuronpedia offers: models, source sets and sources with their sizes."""
    from npclient.metacache import MetaCache
    from npclient.models import ModelInfo

    client = make_client(base_url, None, 4)

    async def run():
        async with client:
            async def fetch():
                return [m.model_dump(by_alias=True) for m in await client.list_models()]

            return await MetaCache().get_or_fetch(f"{client.base_url}|model-list", fetch, refresh=refresh)

    models = [ModelInfo.model_validate(m) for m in aio.run(run())]
    rows = []
    for m in models:
        if model and m.id != model:
            continue
        for sset in m.source_sets:
            for src in sset.sources:
                rows.append({"model": m.id, "set": sset.name, "source": src.id, "d_sae": src.d_sae,
                             "saelens_release": src.saelens_release, "saelens_sae_id": src.saelens_sae_id})
    if model and not rows:
        hint(f"np-mirror: no sources listed for model {model!r}")
        raise typer.Exit(EXIT_FAILURES)
    rows_out(rows, fmt, ["model", "set", "source", "d_sae", "saelens_release", "saelens_sae_id"])


def status(db: DbOpt = None, fmt: FormatOpt = Format.table) -> None:
    """Per source: features present/total, activations, explanations, failures, last fetch."""
    with open_mirror(db, read_only=True) as mirror:
        rows = mirror.status()
    if not rows and fmt is Format.table:
        hint("np-mirror: the mirror is empty; try `np-mirror sync gpt2-small/0-res-jb`")
    rows_out(rows, fmt, ["source", "present", "total", "activations", "explanations", "failed", "origins", "last_fetched"])


def show(
    feature_id: Annotated[str, typer.Argument(help="Feature id, e.g. gpt2-small/0-res-jb/123.", show_default=False)],
    db: DbOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the stored raw object, exactly as the server sent it.")] = False,
    acts: Annotated[int, typer.Option("--acts", help="How many top activations to show.")] = 5,
) -> None:
    """Show a mirrored feature: explanations, top activations (max token marked), logits."""
    from npclient import FeatureId

    fid = FeatureId.parse(feature_id)
    with open_mirror(db, read_only=True) as mirror:
        feature = mirror.feature(fid)
    if feature is None:
        hint(f"np-mirror: {fid} is not in the mirror (np-mirror sync {fid.source_id} --range {fid.index}:{fid.index + 1})")
        raise typer.Exit(EXIT_FAILURES)
    if as_json:
        json_out(feature.raw)
        return
    from .feature_view import render_feature

    render_feature(feature, acts)


def sql(
    query: Annotated[str, typer.Argument(help="A read-only SQL query over the mirror's tables.", show_default=False)],
    db: DbOpt = None,
    fmt: FormatOpt = Format.table,
    limit: Annotated[int, typer.Option("--limit", help="Rows printed at most in table format (0: all).")] = 200,
) -> None:
    """Run read-only SQL on the mirror (tables: features, activations, explanations, sources, failures, sync_runs)."""
    with open_mirror(db, read_only=True) as mirror:
        table = mirror.sql(query)
    rows = table.to_pylist()
    if fmt is Format.table and limit and len(rows) > limit:
        hint(f"np-mirror: showing {limit} of {len(rows)} rows (--limit 0 or --format csv for all)")
        rows = rows[:limit]
    rows_out(rows, fmt, table.column_names)
