"""`np-mirror sync`: fill the mirror from the API, resumably."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .common import check_client_options, open_mirror
from .errors import EXIT_INTERRUPTED
from .output import hint
from .options import BaseUrlOpt, ConcurrencyOpt, DbOpt, RateOpt


def sync(
    targets: Annotated[
        list[str],
        typer.Argument(metavar="MODEL/SOURCE|MODEL/SET", help="Sources (gpt2-small/0-res-jb) or source sets (gpt2-small/res-jb: every layer).", show_default=False),
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
    every batch already written, says how many features that is, and exits 130. A range that
    starts beyond the source's known size is refused (exit 2). Exit code 1 if any feature or
    export file failed (see the `failures` and `export_files` tables; `--retry-failed` asks
    again for 404s).
    """
    from npclient.ids import parse_target
    from npclient.sync import parse_range

    from .progress import SyncDisplay

    parsed = [parse_target(t) for t in targets]  # bad ids: exit 2 before anything
    if api_only and exports_only:
        raise typer.BadParameter("--api-only and --exports-only exclude each other", param_hint="--api-only")
    check_client_options(rate, concurrency)
    display = SyncDisplay(enabled=not quiet)
    with open_mirror(db, read_only=False) as mirror:
        try:
            with display:
                summary = mirror.sync(
                    *parsed, range=parse_range(range_) if range_ else None,
                    parts=tuple(p.strip() for p in parts.split(",") if p.strip()), max_acts=max_acts, full=full,
                    scores=scores, refresh=refresh, retry_failed=retry_failed, exports=not api_only,
                    exports_only=exports_only, base_url=base_url, exports_url=exports_url, rate=rate,
                    concurrency=concurrency, progress=display.update, on_plan=display.plan,
                )
        except KeyboardInterrupt:
            kept = _kept(mirror)
            hint(f"np-mirror: interrupted: kept {kept if kept is not None else 'every committed batch of'} features; "
                 "rerun to resume")
            raise typer.Exit(EXIT_INTERRUPTED) from None
    display.summary(summary)
    raise typer.Exit(summary.exit_code)


def _kept(mirror) -> Optional[str]:
    """How many features this process's last run wrote (every committed batch stays), or None
    where the mirror cannot say."""
    import os
    import socket

    try:
        table = mirror.sql(
            """SELECT count(*) AS n FROM features WHERE run_id =
                   (SELECT max(run_id) FROM sync_runs WHERE pid = ? AND host = ?)""",
            [os.getpid(), socket.gethostname()],
        )
        return f"{table.column('n')[0].as_py():,}"
    except Exception:  # noqa: BLE001 - a busy or broken file: the line must still come
        return None
