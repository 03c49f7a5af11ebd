"""`Mirror`: the researcher's handle on the local database, and the one way in for everything else.

It reads what a sync wrote: `feature(id)` gives back the same `Feature` the client returned,
with `.raw` equal to what the server sent; `features`, `activations`, `explanations`, `search`,
`neighbors` and `sql` give Arrow tables (`.to_pandas()` is one call away); their queries live
in `store/`, and the methods here only check arguments and choose. It also does the work that
fills the mirror (`sync`, `import_`, `attach_weights`) and hands the rest of the package typed
access to the file (`store`): geometry, serve and the CLI reach the mirror through here and
never hold a connection themselves.

The file is opened per use and released after `linger_s` of idleness (see
`store/database.py`), so a sync in another process can still write between reads.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, TypeVar, Union

import duckdb
import pyarrow as pa

from .errors import FeatureOutOfRange, InvalidOptionError, QueryError, WeightsError
from .ids import FeatureId, FeatureIdLike, SourceId, SourceSetId, parse_target
from .models import Feature
from .store import Store
from .store.database import Database
from .store.writer import feature_key

if TYPE_CHECKING:
    from .store.importer import ImportReport
    from .store.weights import WeightsRecord
    from .sync import ProgressFn, SourcePlan, SyncSummary

__all__ = ["Mirror"]

T = TypeVar("T")
Target = Union[str, SourceId, SourceSetId]


class Mirror:
    """The local mirror at `path` (default `$NP_MIRROR_HOME/mirror.duckdb`).

    >>> mirror = Mirror()
    >>> mirror.sync("gpt2-small/0-res-jb", range=(0, 100))      # exports first, then the API
    >>> mirror.feature("gpt2-small/0-res-jb/3").top_explanation
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        read_only: bool = False,
        wait_s: float = 120.0,
        linger_s: float = 1.0,
        on_wait: Optional[Callable[[str], None]] = None,
        dataset: Optional[str | Path] = None,
    ) -> None:
        self.db = Database(path, read_only=read_only, wait_s=wait_s, linger_s=linger_s, on_wait=on_wait)
        #: typed reads and writes of the file (what geometry and serve use; no SQL outside `store/`)
        self.store = Store(self.db)
        if dataset is not None:
            self.attach_dataset(dataset)

    def attach_dataset(self, dataset: str | Path) -> list[str]:
        """Read a Parquet dataset (a folder or `s3://`, see docs/dataset.md) in place: every
        connection of this handle sees the views `ds_features`, `ds_activations` and
        `ds_explanations` (the tables' columns; no copy). Returns the view names.

        >>> Mirror(dataset="/shared/np").sql("SELECT count(*) FROM ds_features")
        """
        from .dataset.location import open_location
        from .dataset.mirror_io import views_for
        from .store.dataset_views import DatasetDatabase

        views = views_for(open_location(dataset))
        old = self.db
        old.close()
        self.db = DatasetDatabase(old.path, read_only=old.read_only, wait_s=old.wait_s, linger_s=old.linger_s,
                                  on_wait=old.on_wait, views=views)
        self.store = Store(self.db)
        return [f"ds_{t}" for t in ("features", "activations", "explanations")]

    @property
    def path(self) -> Path:
        return self.db.path

    def __repr__(self) -> str:
        return f"Mirror(path={str(self.path)!r}, read_only={self.db.read_only})"

    def __enter__(self) -> "Mirror":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    # ---- reading ---------------------------------------------------------------------------
    def feature(self, feature: FeatureIdLike) -> Optional[Feature]:
        """The stored feature, as the client returned it; `None` if the mirror lacks it."""
        key = feature_key(FeatureId.coerce(feature))
        body = self.store.raw_body(key)
        if body is not None:
            return Feature.from_json(body)
        # An imported feature: exports carry no relations and no scores, and the typed rows keep
        # the fields the README lists, so `.raw` is the export's view of the feature; NaN and
        # Infinity (bare tokens in exports) read as floats and render as null, as the API does.
        raw = self.store.export_feature(key)
        return None if raw is None else Feature.from_raw(raw)

    def features(self, source: SourceId | str, columns: Optional[Sequence[str]] = None, *,
                 where: Optional[str] = None, params: Sequence[Any] = ()) -> pa.Table:
        """One row per stored feature of `source`, in index order, as an Arrow table.

        `where` is a SQL condition on the `features` table (its `?` take `params`); it runs as
        one read-only SELECT, so it filters and never writes.

        >>> Mirror().features("gpt2-small/0-res-jb", ["index", "top_explanation"],
        ...                   where="frac_nonzero < ? AND top_explanation ILIKE '%day%'", params=[0.01])
        """
        return self.store.features(_source(source), columns, where, params)

    def activations(self, feature: FeatureIdLike, top: Optional[int] = None) -> pa.Table:
        """A feature's activations top-first (`rank` 0 = largest `max_value`, ties by activation
        id: the order every sync path stores), every column of the `activations` table; the
        first `top` only if given. Empty when the mirror does not hold the feature.

        >>> Mirror().activations("gpt2-small/0-res-jb/3", top=5).to_pandas()[["max_value", "tokens"]]
        """
        fid = self._in_range(feature)
        if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 0):
            raise InvalidOptionError(f"top must be a whole number of activations, 0 or more (got {top!r})",
                                     option="top")
        return self.store.activations(feature_key(fid), top)

    def explanations(self, feature: FeatureIdLike) -> pa.Table:
        """A feature's explanations in the mirror's rank order: row 0 is its `top_explanation`
        (README, "Top explanation"). Empty when the mirror holds none.

        >>> Mirror().explanations("gpt2-small/0-res-jb/3").column("description").to_pylist()
        """
        return self.store.explanations(feature_key(self._in_range(feature)))

    def search(self, query: str, source: Union[SourceId, str, Sequence[Union[SourceId, str]], None] = None,
               model: Optional[str] = None, limit: Optional[int] = 20, *, regex: bool = False) -> pa.Table:
        """Explanations whose description matches `query`, best first: offline keyword search,
        ranked exactly as `np-mirror serve`'s `/api/explanation/search` ranks (cosine of the word
        sets, +1 for the verbatim phrase; ties by source, then index). `source` (one or several,
        of one model) or `model` narrows it; `limit=None` returns every hit; `regex=True` takes
        `query` as a case-insensitive RE2 regular expression.

        >>> Mirror().search("days of the week", source="gpt2-small/0-res-jb", limit=5).to_pandas()
        """
        from .store.search import search_table

        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise InvalidOptionError(f"limit must be a whole number of results, 0 or more, or None (got {limit!r})",
                                     option="limit")
        model_id, sources = _search_scope(source, model)
        try:
            found = self.store.search_page(query, model_id=model_id, sources=sources, regex=regex, limit=limit)
        except duckdb.Error as exc:  # a regular expression RE2 refuses
            raise QueryError(f"the pattern {query!r}: {str(exc).strip().splitlines()[0]}") from None
        return search_table(found.hits)

    def neighbors(self, feature: FeatureIdLike, k: int = 10, against: Union[SourceId, str, None] = None, *,
                  device: Optional[str] = None) -> pa.Table:
        """A feature's k nearest decoder directions (itself first), each with its top explanation.

        From the attached weights when its source has them (`attach_weights`; `against` then
        names another source with weights, e.g. a wider SAE, to search in), else from the
        `topkCosSim` lists the mirror stored from Neuronpedia. The `origin` column (and the
        table's metadata) says which: "weights" or "stored topkCosSim".

        >>> Mirror().neighbors("gpt2-small/0-res-jb/3", k=5).to_pandas()[["index", "cosine", "explanation"]]
        """
        fid = self._in_range(feature)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidOptionError(f"k must be a whole number of neighbours, 1 or more (got {k!r})", option="k")
        sid = fid.source_id
        weighted = self.store.weights(sid) is not None
        if against is not None:
            target = _source(against)
            missing = [str(s) for s in dict.fromkeys((sid, target)) if self.store.weights(s) is None]
            if missing:
                raise InvalidOptionError(
                    f"neighbours in another source come from decoder weights, and {', '.join(missing)} "
                    "has none attached (attach_weights); the stored topkCosSim lists cover a feature's own "
                    "source only", option="against")
        if weighted:
            from .geometry.api import neighbors

            table, origin = neighbors(self, fid, k, against=against, device=device), "weights"
        else:
            stored = self.store.stored_neighbors(sid, feature_key(fid), k)
            if stored is None:
                raise WeightsError(f"{fid}: no decoder weights are attached to {sid} and the mirror holds no "
                                   "topkCosSim list for this feature (attach weights, or sync the feature)")
            table, origin = stored, "stored topkCosSim"
        table = table.append_column("origin", pa.array([origin] * table.num_rows, pa.string()))
        return table.replace_schema_metadata({**(table.schema.metadata or {}), b"origin": origin.encode()})

    def sql(self, query: str, params: Optional[Sequence[Any]] = None) -> pa.Table:
        """Run SQL on the mirror and return Arrow (`?` placeholders take `params`)."""
        with self.db.connect() as cur:
            try:
                return cur.sql(query, params=list(params) if params is not None else None).to_arrow_table()
            except duckdb.Error as exc:
                raise QueryError(str(exc).strip().splitlines()[0]) from None

    def _in_range(self, feature: FeatureIdLike) -> FeatureId:
        """The feature's id, refused when its index lies beyond its source's known size."""
        fid = FeatureId.coerce(feature)
        count = self.store.feature_count(fid.source_id)
        if count is not None and fid.index >= count:
            raise FeatureOutOfRange(f"feature {fid.index} is beyond {fid.source_id}, which has {count:,} features "
                                    f"(0..{count - 1})", option="feature")
        return fid

    def status(self) -> list[dict[str, Any]]:
        """Per source: features present / total, explained, scored, failures, thin columns."""
        return self.store.status()

    def decoder(self, source: SourceId | str, device: Optional[str] = None, dtype: Optional[str] = None) -> Any:
        """The attached decoder (`attach_weights`) as a torch tensor, d_sae x d_in, memory-mapped.

        Row i is feature i of `source`; torch loads only here.
        """
        from .weights import decoder

        return decoder(self.db, source, device=device, dtype=dtype)

    def decoder_array(self, source: SourceId | str) -> Any:
        """The attached float32 decoder as a numpy array (memory-mapped), without torch; None
        where it was attached in bfloat16 (use `decoder`)."""
        from .weights import decoder_array

        return decoder_array(self.db, source)

    # ---- filling ---------------------------------------------------------------------------
    def sync(
        self,
        *targets: Target,
        range: Optional[tuple[int, int]] = None,  # noqa: A002 - the CLI's --range
        parts: Sequence[str] = ("features", "activations", "explanations"),
        max_acts: Optional[int] = None,
        full: bool = False,
        scores: bool = False,
        refresh: bool = False,
        retry_failed: bool = False,
        exports: bool = True,
        exports_only: bool = False,
        base_url: Optional[str] = None,
        exports_url: Optional[str] = None,
        rate: Optional[float] = None,
        concurrency: int = 8,
        progress: Optional["ProgressFn"] = None,
        on_plan: Optional[Callable[[list["SourcePlan"]], None]] = None,
        client: Any = None,
    ) -> "SyncSummary":
        """Mirror sources (`gpt2-small/0-res-jb`) or source sets (`gpt2-small/res-jb`).

        Exports first (unless `exports=False`), then the API for what is missing; resumable,
        polite (`rate` requests a second, else 90% of Neuronpedia's hourly budget). Works in a
        script and inside Jupyter's running event loop alike. `client` passes your own
        `NeuronpediaClient` (its settings win over `base_url`/`rate`/`concurrency`).

        >>> summary = Mirror().sync("gpt2-small/0-res-jb", range=(0, 50))
        >>> summary.fetched, summary.exit_code
        """
        from .sync import SyncOptions, run_sync

        parsed = [t if isinstance(t, (SourceId, SourceSetId)) else parse_target(t) for t in targets]
        options = SyncOptions(range=range, parts=tuple(parts), max_acts=max_acts, method="get" if full else "post",
                              refresh=refresh, retry_failed=retry_failed, exports_only=exports_only, scores=scores)

        async def go() -> "SyncSummary":
            from contextlib import AsyncExitStack

            from .metacache import MetaCache

            async with AsyncExitStack() as stack:
                own = client or await stack.enter_async_context(_make_client(base_url, rate, concurrency))
                bucket = None
                if exports:
                    from .http.s3 import ExportBucket

                    bucket = await stack.enter_async_context(ExportBucket(exports_url))
                return await run_sync(parsed, db=self.db, client=own, options=options, meta=MetaCache(),
                                      progress=progress, exports=bucket, on_plan=on_plan)

        return _run_blocking(go())

    def import_(self, path: str | Path, *, run_id: Optional[int] = None) -> list["ImportReport"]:
        """Import a bulk-export dump already on disk: one source folder or a tree of them.

        >>> [r.rows for r in Mirror().import_("~/dumps/v1")]
        """
        from .exports.files import find_source_dirs
        from .store.importer import import_source_dir

        return [import_source_dir(self.db, folder, sid, run_id=run_id)
                for sid, folder in find_source_dirs(Path(path).expanduser())]

    def attach_weights(self, source: SourceId | str, **kwargs: Any) -> "WeightsRecord":
        """Attach an SAE's decoder to a mirrored source (row i = feature i); see `weights.attach`
        for the arguments (`path=`, `tensor=`, `transpose=`, `release=`/`sae_id=`, `dtype=`).

        >>> Mirror().attach_weights("gpt2-small/7-res-jb", path="./my-sae")
        """
        from .weights import attach

        return attach(self.db, source, **kwargs)

    def export_parquet(self, out_dir: str | Path, sources: Optional[Sequence[SourceId | str]] = None) -> dict[str, int]:
        """Write the mirror as a hive-partitioned Parquet dataset (`table/model=/source=/`);
        returns rows written per table."""
        sids = [s if isinstance(s, SourceId) else SourceId.parse(s) for s in sources] if sources else None
        return self.store.export_parquet(Path(out_dir), sids)


def _source(source: SourceId | str) -> SourceId:
    return source if isinstance(source, SourceId) else SourceId.parse(source)


def _search_scope(source: Union[SourceId, str, Sequence[Union[SourceId, str]], None],
                  model: Optional[str]) -> tuple[Optional[str], Optional[list[str]]]:
    """(model id, source names) for a search: sources of one model, or a model, or everything."""
    if source is None:
        return model, None
    sids = [_source(source)] if isinstance(source, (SourceId, str)) else [_source(s) for s in source]
    models = {s.model_id for s in sids} | ({model} if model is not None else set())
    if len(models) > 1:
        raise InvalidOptionError(f"search one model at a time (got {', '.join(sorted(models))})",
                                 option="model" if model is not None else "source")
    return (models.pop() if models else model), [s.source for s in sids]


def _make_client(base_url: Optional[str], rate: Optional[float], concurrency: int) -> Any:
    from .http.client import NeuronpediaClient
    from .http.pacing import DEFAULT_BUDGET, Budget

    budget = Budget.per_second(rate) if rate is not None else DEFAULT_BUDGET
    return NeuronpediaClient(base_url, budget=budget, concurrency=concurrency)


def _run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from synchronous code: on this thread when no event loop runs
    here, else (Jupyter) on a private loop in a helper thread, waiting for it."""
    from .aio import run

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = run(coro)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="np-mirror-sync", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
