"""Reading commands: `sources`, `status`, `show`, `sql`. None of them writes the mirror."""

from __future__ import annotations

from npclient import aio
from typing import Annotated, Optional

import typer

from .common import make_client, open_mirror
from .errors import EXIT_BAD_INPUT, EXIT_FAILURES
from .options import BaseUrlOpt, DbOpt, FormatOpt
from .output import Format, hint, json_out, rows_out


def sources(
    model: Annotated[Optional[str], typer.Argument(help="Only this model (e.g. gpt2-small); its sizes are looked up too.", show_default=False)] = None,
    base_url: BaseUrlOpt = None,
    fmt: FormatOpt = Format.table,
    refresh: Annotated[bool, typer.Option("--refresh", help="Ask the server again instead of the day-old cache.")] = False,
) -> None:
    """List what Neuronpedia offers: models, source sets and sources, with sizes for one model.

    The model list carries no sizes (Neuronpedia's /api/model/list leaves out each source's
    sae_lens config), so for the model you name each source set is looked up once (cached for
    a day) and `d_sae` comes from there; "unknown" where the set carries no config either.
    """
    from npclient.metacache import MetaCache
    from npclient.models import ModelInfo, SourceSetInfo

    client = make_client(base_url, None, 4)
    cache = MetaCache()

    async def run():
        async with client:
            async def fetch():
                return [m.model_dump(by_alias=True) for m in await client.list_models()]

            models = [ModelInfo.model_validate(m) for m in
                      await cache.get_or_fetch(f"{client.base_url}|model-list", fetch, refresh=refresh)]
            sizes: dict[tuple[str, str], Optional[int]] = {}
            for m in models:
                if model is None or m.id != model:
                    continue
                for sset in m.source_sets:
                    async def fetch_set(name=sset.name):
                        found = await client.get_source_set(m.id, name)
                        return found.model_dump(by_alias=True) if found is not None else None

                    body = await cache.get_or_fetch(f"{client.base_url}|source-set|{m.id}/{sset.name}", fetch_set, refresh=refresh)
                    for src in (SourceSetInfo.model_validate(body).sources if body else []):
                        sizes[(m.id, src.id)] = src.d_sae
            return models, sizes

    models, sizes = aio.run(run())
    rows = []
    for m in models:
        if model and m.id != model:
            continue
        for sset in m.source_sets:
            for src in sset.sources:
                size = sizes.get((m.id, src.id), src.d_sae)
                rows.append({"model": m.id, "set": sset.name, "source": src.id,
                             "d_sae": size if size is not None else ("unknown" if model else None)})
    if model and not rows:
        hint(f"np-mirror: no sources listed for model {model!r} (np-mirror sources lists every model)")
        raise typer.Exit(EXIT_BAD_INPUT)
    if model is None and fmt is Format.table:
        hint("np-mirror: sizes are looked up per model: np-mirror sources MODEL")
    rows_out(rows, fmt, ["model", "set", "source", "d_sae"])


def status(db: DbOpt = None, fmt: FormatOpt = Format.table) -> None:
    """Per source: features present/total, activations, explanations, failures, last fetch."""
    with open_mirror(db, read_only=True) as mirror:
        rows = mirror.status()
    if not rows and fmt is Format.table:
        hint("np-mirror: the mirror is empty; try `np-mirror sync gpt2-small/0-res-jb`")
    rows_out(rows, fmt, ["source", "present", "total", "activations", "explanations", "explained", "scored", "failed",
                         "origins", "last_fetched", "thin"])


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
