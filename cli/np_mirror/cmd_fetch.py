"""`np-mirror fetch`: features straight from the API, no mirror involved."""

from __future__ import annotations

from npclient import aio
from typing import Annotated

import typer

from .errors import EXIT_FAILURES
from .options import BaseUrlOpt, ConcurrencyOpt, RateOpt
from .output import Format, json_out, lines_out, rows_out

COLUMNS = ["feature", "max_act", "activations", "explanations", "top_explanation"]


def fetch(
    ids: Annotated[list[str], typer.Argument(metavar="MODEL/SOURCE/INDEX", help="Feature ids, e.g. gpt2-small/0-res-jb/123.", show_default=False)],
    base_url: BaseUrlOpt = None,
    rate: RateOpt = None,
    concurrency: ConcurrencyOpt = 8,
    full: Annotated[bool, typer.Option("--full", help="One GET per feature: untrimmed explanations with scores.")] = False,
    fmt: Annotated[Format, typer.Option("--format", "-f", help="table or csv: one row per feature (id, max activation, counts, top explanation); json: one array of the raw objects.")] = Format.table,
    as_json: Annotated[bool, typer.Option("--json", help="Print each feature's raw JSON object in turn (one object per line with --jsonl).")] = False,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="With --json: one compact object per line.")] = False,
) -> None:
    """Fetch features from Neuronpedia and print them (use `sync` to keep them)."""
    from npclient import Feature, FeatureId, NeuronpediaClient
    from npclient.http.pacing import DEFAULT_BUDGET, Budget

    feature_ids = [FeatureId.parse(text) for text in ids]  # bad ids fail before any request
    budget = Budget.per_second(rate) if rate is not None else DEFAULT_BUDGET

    async def run() -> list:
        async with NeuronpediaClient(base_url, budget=budget, concurrency=concurrency) as client:
            return await client.get_features(feature_ids, method="get" if full else "post")

    results = aio.run(run())
    failures = 0
    found = []
    for fid, result in zip(feature_ids, results):
        if isinstance(result, Feature):
            found.append(result)
        else:
            failures += 1
            typer.echo(f"np-mirror: {fid}: {result}", err=True)
    if as_json:
        for result in found:
            if jsonl:
                lines_out([result.raw_json.decode()])
            else:
                json_out(result.raw)
    elif fmt is Format.json:
        json_out([result.raw for result in found])
    else:
        rows_out([{"feature": str(f.id), "max_act": f.max_act_approx, "activations": len(f.activations),
                   "explanations": len(f.explanations), "top_explanation": f.top_explanation} for f in found], fmt, COLUMNS)
    if failures:
        raise typer.Exit(EXIT_FAILURES)
