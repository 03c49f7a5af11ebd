"""Reading commands: `sources`, `status`, `show`, `sql`. None of them writes the mirror."""

from __future__ import annotations

from npclient import aio
from typing import Annotated, Optional

import typer

from .common import make_client, open_mirror
from .errors import EXIT_BAD_INPUT, EXIT_FAILURES
from .options import BaseUrlOpt, DbOpt, FormatOpt, SqlQueryArg
from .output import Format, hint, json_out, rows_out


def sources(
    model: Annotated[Optional[str], typer.Argument(metavar="MODEL", help="Only this model (e.g. gpt2-small); its sizes are looked up too.", show_default=False)] = None,
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


#: The table view of `status`; CSV and JSON carry every column (activation and explanation rows too).
STATUS_TABLE = ["source", "present", "total", "explained", "scored", "failed", "origins", "last_fetched", "thin"]
STATUS_ALL = ["source", "present", "total", "activations", "explanations", "explained", "scored", "failed", "origins",
              "last_fetched", "thin"]


def status(db: DbOpt = None, fmt: FormatOpt = Format.table) -> None:
    """Per source: features present/total, explained (features with an explanation), scored, failures, last fetch.

    `--format csv|json` adds the row counts: `activations` and `explanations` (rows, several
    per feature). `thin` names what some present features lack (`scores`: fetched by POST or
    imported, see `sync --scores`; `umap`: imported without coordinates).
    """
    with open_mirror(db, read_only=True) as mirror:
        rows = mirror.status()
    if not rows and fmt is Format.table:
        hint("np-mirror: the mirror is empty; try `np-mirror sync gpt2-small/0-res-jb`")
    rows_out(rows, fmt, STATUS_TABLE if fmt is Format.table else STATUS_ALL)


FeatureIdArg = Annotated[str, typer.Argument(metavar="MODEL/SOURCE/INDEX", help="Feature id, e.g. gpt2-small/0-res-jb/123.",
                                             show_default=False)]


def show(
    feature_id: FeatureIdArg,
    db: DbOpt = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="table: the feature drawn for reading; csv: one row per top activation; json: the stored raw object.")] = Format.table,
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json: the stored raw object, exactly as the server sent it.")] = False,
    acts: Annotated[int, typer.Option("--acts", min=0, help="How many top activations to show.")] = 5,
) -> None:
    """Show a mirrored feature: explanations, top activations (max token marked), logits.

    The max token is drawn [[like this]] when stdout is not a colour terminal, and tokens that
    are only whitespace show as ␣ (and ↵ for a newline), here and in the logits table.
    """
    from npclient import FeatureId

    fid = FeatureId.parse(feature_id)
    with open_mirror(db, read_only=True) as mirror:
        feature = mirror.feature(fid)
        total = mirror.store.feature_count(fid.source_id) if feature is None else None
    if feature is None:
        if total is not None and fid.index >= total:
            from npclient.errors import FeatureOutOfRange

            raise FeatureOutOfRange(f"feature {fid.index} is beyond {fid.source_id}, which has {total:,} features "
                                    f"(0..{total - 1})")
        hint(f"np-mirror: {fid} is not in the mirror (np-mirror sync {fid.source_id} --range {fid.index}:{fid.index + 1})")
        raise typer.Exit(EXIT_FAILURES)
    if as_json or fmt is Format.json:
        json_out(feature.raw)
        return
    from .feature_view import activation_rows, render_feature

    if fmt is Format.csv:
        rows_out(activation_rows(feature, acts), fmt, None)
        return
    render_feature(feature, acts)


#: What each table of a mirror holds, for `sql --help`. tests/test_cli_output.py holds its keys
#: to `npclient.store.schema.MIRROR_TABLES` (read there, not here: importing the store would
#: load DuckDB and Arrow for every `--help`).
TABLES = {
    "features": "one row per feature: max_act_approx, frac_nonzero, logits, topk_cos_sim_*",
    "activations": "top examples per feature: rank, tokens, values, max_value_token_index",
    "explanations": "explanations per feature: rank, description, scores (JSON), embedding",
    "raw_chunks": "each API feature's body as the server sent it (what show --json prints)",
    "sources": "known sources: feature_count, saelens_release, saelens_sae_id, hook_name",
    "source_sets": "source sets (e.g. res-jb) as Neuronpedia lists them",
    "models": "models: display_name, layers, dimension",
    "sync_runs": "one row per sync: targets, options (JSON), status, counts, pid, host",
    "failures": "features not fetched: reason, status_code, permanent (a 404)",
    "export_files": "bulk export files: kind, batch, status, rows_imported",
    "weights": "attached decoders: d_sae, d_in, dtype, sha256, decoder_path, bad rows",
    "neighbors": "geometry allpairs: index, rank, neighbor_index, cosine",
    "matches": "geometry match: index, against, rank, match_index, cosine",
    "coordinates": "geometry pca/umap: index, method, x, y",
    "clusters": "geometry cluster: index, run, label, leaf_position",
    "head_features": "geometry nullspace: index, matrix, colspace_fraction, invisible, suppressed",
}


def sql(
    query: SqlQueryArg,
    db: DbOpt = None,
    fmt: FormatOpt = Format.table,
    limit: Annotated[int, typer.Option("--limit", help="Rows printed at most in table format (0: all).")] = 200,
) -> None:
    with open_mirror(db, read_only=True) as mirror:
        table = mirror.sql(query)
    rows = table.to_pylist()
    if fmt is Format.table and limit and len(rows) > limit:
        hint(f"np-mirror: showing {limit} of {len(rows)} rows (--limit 0 or --format csv for all)")
        rows = rows[:limit]
    rows_out(rows, fmt, table.column_names)


sql.__doc__ = (
    "Run read-only SQL on the mirror. Every feature-level table is keyed by model_id, source, \"index\" "
    "(feature_key = model/source/index).\n\n\b\nTables:\n"
    + "\n".join(f"  {name:<14}{text}" for name, text in TABLES.items())
)
