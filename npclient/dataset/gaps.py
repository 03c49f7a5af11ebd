"""The API for what a source's export lacks, through the one budget of the driver.

After the map, two kinds of feature are missing from a source's export, as in the local
exports-first sync (`npclient.sync.exports`):

- indices of 0..count-1 in no features batch (holes: the API answers 404, or the export is stale);
- exported features that no activations batch covers: export-data.py sizes activation batches by
  the feature *count* assuming indices 0..count-1, so with holes the highest indices are in no
  batch (`utils/neuronpedia-utils/neuronpedia_utils/export-data.py`), and a batch missing from
  the listing leaves its range uncovered.

They are fetched on the driver by ONE client: Neuronpedia limits requests per IP (25,000 an
hour, `wire.NORMAL_RATE_LIMITS`, from their `apps/webapp/middleware.ts`), so a cluster behind
one IP has one budget, and one pacer in one process is what keeps to it. What the API gives is
committed as intermediate files (`_np/stage/api-<table>/.../gaps.parquet`, activations as units
of their own between the batches' units); the reduce lets these rows replace the export's for
the same features, as a sync's API write replaces an import's rows.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..exports.layout import activation_spans
from ..ids import FeatureId, SourceId
from .exports_units import RECORDS, STAGE, stage_keys
from .location import Location, lease_until
from .units import DEFAULT_LEASE_S, Unit, commit_file, markers, parquet_bytes, partition, write_unit

if TYPE_CHECKING:
    from ..http.client import NeuronpediaClient

__all__ = ["GapResult", "find_gaps", "fetch_gaps", "api_stage_key", "API_TABLES"]

API_TABLES = ("features", "explanations")


def api_stage_key(model: str, source: str, table: str) -> str:
    return f"{STAGE}/api-{table}/{partition(model, source)}/gaps.parquet"


def _gaps_record_key(model: str, source: str) -> str:
    return f"{RECORDS}/{partition(model, source)}/api-gaps.json"


@dataclass
class GapResult:
    source: SourceId
    asked: list[int] = field(default_factory=list)
    fetched: int = 0
    not_found: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    skipped: bool = False


def _records(loc: Location, model: str, source: str, folder: str) -> list[dict[str, Any]]:
    prefix = f"{RECORDS}/{partition(model, source)}/{folder}"
    return [orjson.loads(loc.read(loc.key(i.path))) for i in loc.files(prefix) if i.base_name.endswith(".json")
            and not i.base_name.startswith(".")]


def _indices(loc: Location, keys: Sequence[str]) -> set[int]:
    out: set[int] = set()
    for k in keys:
        out.update(pq.read_table(loc.path(k), filesystem=loc.fs, columns=["index"]).column("index").to_pylist())
    return out


def find_gaps(loc: Location, model: str, source: str, feature_count: Optional[int]) -> list[int]:
    """The features the API should be asked for (see the module's text), sorted."""
    exported = _indices(loc, stage_keys(loc, model, source, "features"))
    with_acts = _indices(loc, [u.data_key for u in markers(loc, "activations") if (u.model, u.source) == (model, source)
                               and read_export_key(loc, u) is not None])
    batches = {int(r["batch"]): (tuple(r["index_span"]) if r.get("index_span") else None)  # type: ignore[misc]
               for r in _records(loc, model, source, "activations")}
    spans = activation_spans(batches, len(exported))
    uncovered = {i for i in exported - with_acts if not any(lo <= i <= hi for lo, hi in spans)}
    holes = set(range(feature_count or 0)) - exported
    return sorted(uncovered | holes)


def read_export_key(loc: Location, unit: Unit) -> Optional[str]:
    """The export object an activations unit came from (None: the API's gap unit)."""
    from .units import read_marker

    marker = read_marker(loc, unit)
    return None if marker is None else marker.get("export_key")


async def fetch_gaps(loc: Location, sid: SourceId, indices: list[int], client: "NeuronpediaClient", *,
                     job_id: str, lease_s: float = DEFAULT_LEASE_S) -> GapResult:
    """Ask the API for `indices` of `sid` (POST, 25 a request) and commit what it gives."""
    from ..errors import NotFound, NPError
    from ..models import Feature
    from ..store.writer import FeatureRow, build_tables

    result = GapResult(sid, asked=list(indices))
    record_key = _gaps_record_key(sid.model_id, sid.source)
    if loc.exists(record_key) and orjson.loads(loc.read(record_key)).get("asked") == result.asked:
        result.skipped = True
        return result
    rows: list[FeatureRow] = []
    async for _fid, got in client.iter_features([FeatureId(sid.model_id, sid.source, i) for i in indices]):
        if isinstance(got, Feature):
            rows.append(FeatureRow(got, "get" if got.model is not None else "post"))
        elif isinstance(got, NotFound):
            result.not_found += 1
        elif isinstance(got, NPError):
            reason = type(got).__name__
            result.failed[reason] = result.failed.get(reason, 0) + 1
    if result.failed:
        return result  # not committed: the next run asks again
    result.fetched = len(rows)
    tables = build_tables(rows, ("activations", "explanations"), None)
    bodies = [r.feature.raw_json.decode() for r in rows]  # build_tables keeps the order of `rows`
    tables["features"] = tables["features"].append_column("raw_json", pa.array(bodies, pa.string()))
    for table in API_TABLES:
        key = api_stage_key(sid.model_id, sid.source, table)
        commit_file(loc, key, key + ".json", parquet_bytes(tables[table]),
                    {"kind": f"api-{table}", "model": sid.model_id, "source": sid.source,
                     "rows": tables[table].num_rows}, job_id=job_id, lease_s=lease_s)
    _write_activation_units(loc, sid, tables["activations"], job_id=job_id, lease_s=lease_s)
    loc.write_whole(record_key, orjson.dumps({"asked": result.asked, "fetched": result.fetched,
                                              "not_found": result.not_found}),
                    job_id=job_id, lease_until=lease_until(lease_s))
    return result


def _write_activation_units(loc: Location, sid: SourceId, rows: pa.Table, *, job_id: str, lease_s: float) -> None:
    """The API's activations as units that never overlap the batches' units: one per run of
    gap features lying between two of them."""
    if not rows.num_rows:
        return
    taken = sorted((u.start, u.stop) for u in markers(loc, "activations") if (u.model, u.source) == (sid.model_id, sid.source)
                   and read_export_key(loc, u) is not None)
    starts = [a for a, _ in taken]
    index = rows.column("index")
    groups: dict[int, list[int]] = {}
    for i in sorted(set(index.to_pylist())):
        groups.setdefault(bisect.bisect_right(starts, i), []).append(i)
    for members in groups.values():
        lo, hi = members[0], members[-1]
        part = rows.filter(pc.and_(pc.greater_equal(index, lo), pc.less_equal(index, hi)))
        write_unit(loc, Unit("activations", sid.model_id, sid.source, lo, hi + 1), part, job_id=job_id,
                   lease_s=lease_s, extra={"export_key": None, "api": True})
