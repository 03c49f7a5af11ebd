"""`np-mirror sync`: fill the mirror from the API, resumably."""

from __future__ import annotations

from npclient import aio
from typing import Annotated, Optional

import typer

from .common import make_client, open_mirror
from .options import BaseUrlOpt, ConcurrencyOpt, DbOpt, RateOpt


def sync(
    targets: Annotated[
        list[str],
        typer.Argument(help="Sources (gpt2-small/0-res-jb) or source sets (gpt2-small/res-jb: every layer).", show_default=False),
    ],
    range_: Annotated[Optional[str], typer.Option("--range", help="Half-open feature range a:b (default: the whole source).", show_default=False)] = None,
    parts: Annotated[str, typer.Option("--parts", help="What to store: a subset of features,activations,explanations.")] = "features,activations,explanations",
    max_acts: Annotated[Optional[int], typer.Option("--max-acts", help="Keep at most N top activations per feature.", show_default=False)] = None,
    full: Annotated[bool, typer.Option("--full", help="One GET per feature: untrimmed explanations with scores, but 25x the requests.")] = False,
    scores: Annotated[bool, typer.Option("--scores", help="Also fetch again by GET every feature in range whose explanations lack scores (exports and POST carry none): one request per feature; the cost is printed first.")] = False,
    refresh: Annotated[bool, typer.Option("--refresh", help="Fetch again what is already stored, and re-list sources.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Ask again for features that were 404 before.")] = False,
    api_only: Annotated[bool, typer.Option("--api-only", help="Skip the bulk exports; fetch everything through the API.")] = False,
    exports_only: Annotated[bool, typer.Option("--exports-only", help="Only download and import the bulk exports; no feature requests to the API.")] = False,
    exports_url: Annotated[Optional[str], typer.Option("--exports-url", help="Bucket root of the exports [default: $NP_MIRROR_EXPORTS_URL or Neuronpedia's public bucket].", show_default=False)] = None,
    db: DbOpt = None,
    base_url: BaseUrlOpt = None,
    rate: RateOpt = None,
    concurrency: ConcurrencyOpt = 8,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Mirror features into the local database, asking the API only for what is missing.

    Each source's public bulk export is downloaded and imported first (it costs no rate
    limit); the API then fetches only what the export lacked. Rerunning resumes; Ctrl-C keeps
    every batch already written. Exit code 1 if any feature or export file failed (see the
    `failures` and `export_files` tables; `--retry-failed` asks again for 404s).
    """
    from npclient.ids import parse_target
    from npclient.metacache import MetaCache
    from npclient.sync import SyncOptions, parse_range, run_sync

    parsed = [parse_target(t) for t in targets]  # bad ids: exit 2 before anything
    if api_only and exports_only:
        raise ValueError("--api-only and --exports-only exclude each other")
    options = SyncOptions(
        range=parse_range(range_) if range_ else None,
        parts=tuple(p.strip() for p in parts.split(",") if p.strip()),
        max_acts=max_acts,
        method="get" if full else "post",
        refresh=refresh,
        retry_failed=retry_failed,
        exports_only=exports_only,
        scores=scores,
    )
    mirror = open_mirror(db, read_only=False)
    client = make_client(base_url, rate, concurrency)
    from .progress import SyncDisplay

    display = SyncDisplay(enabled=not quiet)

    async def run():
        from contextlib import AsyncExitStack

        async with AsyncExitStack() as stack:
            await stack.enter_async_context(client)
            bucket = None
            if not api_only:
                from npclient.exports import ExportBucket

                bucket = await stack.enter_async_context(ExportBucket(exports_url))
            return await run_sync(parsed, db=mirror.db, client=client, options=options, meta=MetaCache(),
                                  progress=display.update, exports=bucket, on_plan=display.plan)

    with display:
        summary = aio.run(run())
    display.summary(summary)
    raise typer.Exit(summary.exit_code)
