"""Which export files a sync needs, and whether they are worth more than the API requests.

A source's export is three series of batch files (see docs/neuronpedia.md, "Bulk exports";
written by Neuronpedia's `utils/neuronpedia-utils/neuronpedia_utils/export-data.py`):

- features: `ORDER BY index LIMIT 1024 OFFSET n*1024` on a TEXT index, so batch n holds the
  indices at positions n*1024.. of the *text* order ("0", "1", "10", "100", ...);
- activations: batch n holds indices n*1024 .. n*1024+1023 (numeric; sized by the feature
  count, assuming indices 0..count-1);
- explanations: 1,024 explanation *rows* a batch in text order, so where a feature's rows
  fall depends on how many rows every earlier feature has: only all the files are sure to
  hold a range's explanations.

For a range, `plan_export` predicts the feature and activation files that hold it from the
feature count, assuming indices 0..count-1 (holes only move an index to an earlier position,
and whatever the prediction misses the API fetches afterwards: the sync asks the API for every
feature of the range that is not present). Then it weighs the bytes of the needed files not
yet on disk against the API requests the missing features cost, at `BYTES_PER_REQUEST`.
A POST /api/features answer carries every part of 25 features, and writing it replaces
whatever the export gave those features, so the choice is per source, all or nothing: export
files for some parts and the API for the others would pay for both.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Literal, Optional

from .layout import parse_key
from .s3 import S3Object

__all__ = ["BYTES_PER_REQUEST", "FEATURES_PER_POST", "ExportPlan", "plan_export", "guess_batch_size", "text_positions"]

#: The exchange rate between the two costs: one API request is worth this many bytes of export
#: download. A request spends 1/25,000 of the hourly budget Neuronpedia shares per IP and takes
#: ~150 ms or more; 4 MiB from S3 takes about as long on a 200 Mbit/s line and spends nothing.
BYTES_PER_REQUEST = 4 * 2**20
#: Features a POST /api/features request carries (the client's batch).
FEATURES_PER_POST = 25
#: export-data.py: FEATURES_EXPLANATIONS_BATCH_SIZE and ACTIVATIONS_BATCH_SIZE; 128 is the
#: batch of the sources converted from dashboards.
_KNOWN_BATCH_SIZES = (1024, 128)
#: A source is assumed to miss at most this share of 0..count-1 (holes) when a batch size is checked.
_MAX_HOLES = 0.5

Kind = Literal["features", "activations", "explanations"]


@dataclass
class ExportPlan:
    """The files one source's sync would take from its export, and the choice made."""

    start: int
    stop: int
    count: Optional[int]
    ranged: bool
    parts: tuple[str, ...]
    #: "exports" or "api"
    use: str = "exports"
    #: why: "whole source", "forced", "cheaper" or "nothing missing"
    reason: str = ""
    metadata: list[S3Object] = field(default_factory=list)
    needed: dict[str, list[S3Object]] = field(default_factory=dict)
    listed: dict[str, int] = field(default_factory=dict)
    batch_size: Optional[int] = None
    bytes: int = 0
    missing: int = 0
    requests: int = 0

    def objects(self) -> list[S3Object]:
        """What to download when the exports are used: metadata, then the needed batches."""
        if self.use != "exports":
            return []
        return self.metadata + [o for kind in ("features", "activations", "explanations") for o in self.needed.get(kind, [])]

    def files_text(self) -> str:
        names = {"features": "feature", "activations": "activation", "explanations": "explanation"}
        return ", ".join(
            f"{len(self.needed.get(kind, []))} of {self.listed.get(kind, 0)} {names[kind]} files"
            for kind in ("features", "activations", "explanations") if kind in self.parts
        )

    def note(self) -> str:
        """One line for the summary, with the numbers the choice was made on."""
        mb = f"{self.bytes / 1e6:.1f} MB"
        req = f"{self.requests} request{'s' if self.requests != 1 else ''}"
        if self.use == "api":
            if self.reason == "nothing missing":
                return f"exports: none needed, nothing of {self.start}:{self.stop} is missing"
            return f"API: {req} instead of {self.files_text()} ({mb})"
        if not self.ranged:
            return f"exports: {self.files_text()} (whole source, {mb} to download)"
        why = "forced by --exports-only" if self.reason == "forced" else f"instead of {req}"
        return f"exports: {self.files_text()} ({mb} {why})"


def text_positions(count: int) -> dict[int, int]:
    """Position of each index 0..count-1 in the text order export-data.py pages features in."""
    return {i: p for p, i in enumerate(sorted(range(count), key=str))}


def guess_batch_size(count: int, files: list[S3Object]) -> int:
    """The rows a batch of this series holds: 1024 (or 128) when the number of files fits the
    count, else an estimate from the count and the files' sizes (the last file is partial)."""
    n = len(files)
    if n <= 1:
        return max(count, 1)
    for bs in _KNOWN_BATCH_SIZES:
        if math.ceil(count * (1 - _MAX_HOLES) / bs) <= n <= math.ceil(count / bs):
            return bs
    full = [o.size for o in files[:-1] if o.size > 0]
    frac = min(1.0, files[-1].size / (sum(full) / len(full))) if full else 1.0
    return max(1, round(count / (n - 1 + frac)))


def _batches(objects: Iterable[S3Object]) -> tuple[list[S3Object], dict[str, list[tuple[int, S3Object]]]]:
    meta: list[S3Object] = []
    series: dict[str, list[tuple[int, S3Object]]] = {"features": [], "activations": [], "explanations": []}
    for o in objects:
        f = parse_key(o.key)
        if f is None:
            continue
        if f.kind == "metadata":
            meta.append(o)
        elif f.batch is not None:
            series[f.kind].append((f.batch, o))
    for v in series.values():
        v.sort(key=lambda t: t[0])
    return meta, series


def plan_export(
    objects: Iterable[S3Object],
    *,
    start: int,
    stop: int,
    count: Optional[int],
    ranged: bool,
    parts: Collection[str],
    missing: int,
    method: str = "post",
    have: Collection[str] = (),
    pending: bool = False,
    force: Optional[str] = None,
    bytes_per_request: Optional[int] = None,
) -> ExportPlan:
    """Plan one source: which files hold [start, stop) of the wanted `parts`, and exports or API.

    `count`: the source's feature count (None: estimated from the files). `missing`: features
    of the range the API would have to fetch. `have`: keys already downloaded (they cost no
    bytes). `pending`: an export file of the source failed before and must be tried again.
    `force`: "exports" (`--exports-only`). Without a range the whole source comes from its
    export, unless nothing is missing and nothing is pending.
    """
    meta, series = _batches(objects)
    plan = ExportPlan(start, stop, count, ranged, tuple(p for p in ("features", "activations", "explanations") if p in parts))
    plan.metadata = meta
    plan.listed = {k: len(v) for k, v in series.items()}
    plan.missing = max(0, missing)
    plan.requests = plan.missing if method == "get" else math.ceil(plan.missing / FEATURES_PER_POST)
    feats = [o for _, o in series["features"]]
    # Without a feature count nothing can be predicted: every file of each wanted part.
    bs = plan.batch_size = guess_batch_size(count, feats) if ranged and count else None
    for kind in plan.parts:
        files = series[kind]
        if bs is None or kind == "explanations":
            plan.needed[kind] = [o for _, o in files]
            continue
        if kind == "features":
            pos = text_positions(count or 0)
            wanted = {pos[i] // bs for i in range(start, min(stop, count or 0))}
        else:
            wanted = set(range(start // bs, (max(stop, start + 1) - 1) // bs + 1))
        plan.needed[kind] = [o for n, o in files if n in wanted]
    have_set = set(have)
    plan.bytes = sum(o.size for kind in plan.needed for o in plan.needed[kind] if o.key not in have_set)
    rate = BYTES_PER_REQUEST if bytes_per_request is None else bytes_per_request
    if force == "exports":
        plan.use, plan.reason = "exports", "forced"
    elif plan.missing == 0 and not pending:
        plan.use, plan.reason = "api", "nothing missing"
    elif not ranged:
        plan.use, plan.reason = "exports", "whole source"
    elif plan.bytes <= plan.requests * rate:
        plan.use, plan.reason = "exports", "cheaper"
    else:
        plan.use, plan.reason = "api", "cheaper"
    return plan
