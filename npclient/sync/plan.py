"""Targets -> sources and index ranges, decided before any feature request.

A target is a source (`gpt2-small/0-res-jb`) or a source set (`gpt2-small/res-jb`: every
layer). Each source's feature count comes from the first that knows it: the source set's
`saelensConfig.d_sae`, the mirror (what an earlier sync learned), the export listing (when a
bucket is given: `exports.export_feature_count`), else the range asked for. So a malformed id,
an unknown source or a count nobody knows fails here, before anything is fetched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional, Union

from ..errors import APIStatusError, FeatureOutOfRange, InvalidOptionError, UnknownSourceError
from ..http.client import NeuronpediaClient
from ..ids import SourceId, SourceSetId
from ..metacache import MetaCache
from ..models import ModelInfo, SourceInfo, SourceSetInfo
from ..store import catalog
from ..store.database import Database
from ..store.writer import PARTS

if TYPE_CHECKING:
    from ..http.s3 import ExportBucket

__all__ = ["Target", "SyncOptions", "SourcePlan", "parse_range", "plan_sync"]

Target = Union[SourceId, SourceSetId]

#: `SourcePlan.count_origin` values.
FROM_CONFIG = "saelensConfig.d_sae"
FROM_MIRROR = "mirror"
FROM_EXPORT = "export listing"
FROM_RANGE = "range"


@dataclass(frozen=True)
class SyncOptions:
    """What to fetch and how; the repr goes into the run's log row.

    Invalid values raise `InvalidOptionError` (an `NPError` and a `ValueError`) naming the
    option, e.g. `range must be a:b with 0 <= a < b`.
    """

    range: Optional[tuple[int, int]] = None
    parts: tuple[str, ...] = PARTS
    max_acts: Optional[int] = None
    method: Literal["post", "get"] = "post"
    refresh: bool = False
    retry_failed: bool = False
    batch_features: int = 200
    flush_s: float = 2.0
    exports_only: bool = False
    #: fetch again by GET every feature in range whose explanations lack scores (imported from an
    #: export, or fetched by POST): one request per feature, printed before it starts
    scores: bool = False

    def __post_init__(self) -> None:
        if self.range is not None:
            start, stop = self.range
            if start < 0 or stop <= start:
                raise InvalidOptionError(f"range must be a:b with 0 <= a < b, got {start}:{stop}", option="range")
        unknown = set(self.parts) - set(PARTS)
        if unknown or "features" not in self.parts:
            raise InvalidOptionError(f"parts takes a subset of {','.join(PARTS)} that includes features",
                                     option="parts")
        if self.max_acts is not None and self.max_acts < 1:
            raise InvalidOptionError("max_acts (top activations kept per feature) must be >= 1", option="max_acts")
        if self.scores and self.exports_only:
            raise InvalidOptionError("scores need the API (one GET per feature); they cannot come from the "
                                     "exports alone (exports_only)", option="scores")


@dataclass(frozen=True)
class SourcePlan:
    source: SourceId
    start: int
    stop: int
    #: where the feature count came from: "saelensConfig.d_sae", "mirror", "export listing",
    #: or "range" (no count known: the range asked for is taken as it is)
    count_origin: str
    info: Optional[SourceInfo]
    #: with `scores`: features in range still lacking scores (one GET each), else None
    scores_needed: Optional[int] = None
    #: the model row the source-set listing carried (stored in the `models` table)
    model: Optional[ModelInfo] = None
    #: the source's feature count, when known (None: only the range is known)
    feature_count: Optional[int] = None


def parse_range(text: str) -> tuple[int, int]:
    """`a:b`, half-open; `:b` means `0:b`."""
    try:
        left, right = text.split(":")
        start = int(left) if left.strip() else 0
        stop = int(right)
    except ValueError:
        raise InvalidOptionError(f"range must look like a:b (half-open), got {text!r}", option="range") from None
    if start < 0 or stop <= start:
        raise InvalidOptionError(f"range must be a:b with 0 <= a < b, got {text!r}", option="range")
    return start, stop


async def _source_set(client: NeuronpediaClient, meta: MetaCache, sid: SourceSetId, refresh: bool) -> Optional[SourceSetInfo]:
    async def fetch() -> Optional[dict]:
        found = await client.get_source_set(sid.model_id, sid.set_name)
        return found.model_dump(by_alias=True) if found is not None else None

    body = await meta.get_or_fetch(f"{client.base_url}|source-set|{sid}", fetch, refresh=refresh)
    return SourceSetInfo.model_validate(body) if body is not None else None


async def plan_sync(
    targets: Sequence[Target],
    *,
    db: Database,
    client: NeuronpediaClient,
    options: SyncOptions = SyncOptions(),
    meta: Optional[MetaCache] = None,
    exports: Optional["ExportBucket"] = None,
    exports_cache: Optional[Path] = None,
) -> list[SourcePlan]:
    """Resolve targets to sources with their index ranges; raise before any feature request.

    With `exports` (a bucket), a source whose count neither its config nor the mirror knows is
    counted from its export listing (one small file is downloaded into `exports_cache`).
    """
    meta = meta or MetaCache(enabled=False)
    plans: list[SourcePlan] = []
    seen: set[SourceId] = set()
    for target in targets:
        set_id = target if isinstance(target, SourceSetId) else target.set_id
        stored = catalog.stored_feature_count(db, target) if isinstance(target, SourceId) else None
        sset: Optional[SourceSetInfo] = None
        # A source whose size the mirror already knows needs no request at all.
        if not (isinstance(target, SourceId) and stored and not options.refresh):
            try:
                sset = await _source_set(client, meta, set_id, options.refresh)
            except APIStatusError as exc:
                if not (isinstance(target, SourceId) and options.range):
                    raise UnknownSourceError(f"cannot look {target} up on {client.base_url}: {exc}") from None
            else:
                if sset is None:  # name what was typed: a source's set is our inference, not the user's words
                    kind = "source set" if isinstance(target, SourceSetId) else "source"
                    raise UnknownSourceError(f"{target} is not a {kind} on {client.base_url}; "
                                             f"`np-mirror sources {target.model_id}` lists what is")
        infos = {s.id: s for s in (sset.sources if sset else [])}
        if isinstance(target, SourceSetId):
            if not infos:
                raise UnknownSourceError(f"{target} has no sources on {client.base_url}")
            members = [SourceId(target.model_id, s) for s in sorted(infos, key=_layer_order)]
        else:
            if sset is not None and target.source not in infos:
                raise UnknownSourceError(
                    f"{target} is not a source of {set_id} (it has: {', '.join(sorted(infos, key=_layer_order)[:8])})"
                )
            members = [target]
        planned = []
        for sid in members:
            if sid in seen:
                continue
            seen.add(sid)
            planned.append(await _plan_source(sid, infos.get(sid.source), sset, db=db, options=options,
                                              exports=exports, exports_cache=exports_cache))
        if options.range is not None and planned and all(p.start >= p.stop for p in planned):
            start, stop = options.range
            sizes = sorted({p.feature_count for p in planned if p.feature_count})
            size = f"{sizes[0]:,}" if len(sizes) == 1 else "at most " + f"{sizes[-1]:,}"
            raise FeatureOutOfRange(
                f"range {start}:{stop} starts beyond {target}, which has {size} features; "
                f"use a range within 0:{sizes[-1]}", option="range")
        plans.extend(planned)
    return plans


async def _plan_source(
    sid: SourceId, info: Optional[SourceInfo], sset: Optional[SourceSetInfo], *, db: Database,
    options: SyncOptions, exports: Optional["ExportBucket"], exports_cache: Optional[Path],
) -> SourcePlan:
    count, origin = (info.d_sae, FROM_CONFIG) if info and info.d_sae else (None, "")
    if count is None:
        count = catalog.stored_feature_count(db, sid)
        origin = FROM_MIRROR if count else ""
    if not count and options.range is None and exports is not None:
        from ..paths import exports_dir
        from .exports import export_feature_count

        count = await export_feature_count(exports, sid, exports_cache or exports_dir())
        origin = FROM_EXPORT if count else ""
    if options.range is not None:
        start, stop = options.range
        if count is not None:
            stop = max(start, min(stop, count))  # a range beyond the source plans nothing (refused above)
        if count is None:
            origin = FROM_RANGE
    elif count:
        start, stop = 0, count
    else:
        where = "its source set carries no d_sae, the mirror has no count" + (
            ", and no export lists its features" if exports is not None else "")
        raise UnknownSourceError(f"the feature count of {sid} is unknown here ({where}); pass a range (a:b)")
    needed = None
    if options.scores:
        scored = catalog.origin_indices(db, sid, start, stop, "get")
        dead = set() if options.retry_failed else catalog.permanent_failures(db, sid, start, stop)
        needed = (stop - start) - len(scored | dead)
    return SourcePlan(sid, start, stop, origin, info, needed, sset.model if sset else None, count or None)


def _layer_order(source: str) -> tuple[int, str]:
    head = source.split("-", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, source)
