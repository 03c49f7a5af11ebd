"""`np-mirror fetch`: features straight from the API, no mirror involved."""

from __future__ import annotations

from npclient import aio
from typing import Annotated

import typer

from .errors import EXIT_FAILURES
from .options import BaseUrlOpt, ConcurrencyOpt, RateOpt
from .output import json_out, lines_out


def fetch(
    ids: Annotated[list[str], typer.Argument(help="Feature ids, e.g. gpt2-small/0-res-jb/123.", show_default=False)],
    base_url: BaseUrlOpt = None,
    rate: RateOpt = None,
    concurrency: ConcurrencyOpt = 8,
    full: Annotated[bool, typer.Option("--full", help="One GET per feature: untrimmed explanations with scores.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print each feature's raw JSON (one object per line with --jsonl).")] = False,
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
    for fid, result in zip(feature_ids, results):
        if not isinstance(result, Feature):
            failures += 1
            typer.echo(f"np-mirror: {fid}: {result}", err=True)
        elif as_json:
            if jsonl:
                lines_out([result.raw_json.decode()])
            else:
                json_out(result.raw)
        else:
            top = result.top_explanation or "(no explanation)"
            lines_out([f"{fid}\t{top}\tmaxAct={result.max_act_approx}\tactivations={len(result.activations)}"])
    if failures:
        raise typer.Exit(EXIT_FAILURES)
