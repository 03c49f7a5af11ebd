"""What the source page shows: a sorted, paged feature table, a jump-to-index box, search
results, and the source's UMAP map (Neuronpedia's coordinates, or the mirror's own) with the
search hits marked.

Sorting and paging happen in the database, so a 131,072-feature source costs one page of rows
per request; the map draws at most `charts.MAX_POINTS` points, sampled and said so.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import charts
from .feature_page import num
from .reader import PAGE_ORDERS, PAGE_SORTS, MirrorReader, PageReads

__all__ = ["SourceQuery", "source_context", "PAGE_SIZE", "MAX_HITS"]

PAGE_SIZE = 100
_DIGITS = re.compile(r"[0-9]{1,9}")
#: Search hits marked on the map (and linked) at most.
MAX_HITS = 500
_COLUMNS = (("index", "index", "num"), ("explanation", "top explanation", ""), ("max_act", "max act", "num"),
            ("density", "density", "num"), ("explanations", "explanations", "num"))


@dataclass(frozen=True)
class SourceQuery:
    """The source page's request, already checked: `sort` is a key of `PAGE_SORTS`, `order` of
    `PAGE_ORDERS`, `page` counts from 1, `umap` is "", "local" or "neuronpedia"."""

    page: int = 1
    sort: str = "index"
    order: str = "asc"
    q: str = ""
    umap: str = ""
    jump_error: str = ""

    @classmethod
    def parse(cls, params: Any) -> "SourceQuery":
        """From the query string; anything unknown falls back to the default (never an error,
        never SQL)."""
        raw_page = str(params.get("page", "1"))
        page = int(raw_page) if _DIGITS.fullmatch(raw_page) else 1  # ASCII digits: int("²") raises
        sort = str(params.get("sort", "index"))
        sort = sort if sort in PAGE_SORTS else "index"
        order = str(params.get("order", "desc" if sort in ("max_act", "density", "explanations") else "asc"))
        order = order if order in PAGE_ORDERS else "asc"
        umap = str(params.get("umap", ""))
        return cls(page=max(page, 1), sort=sort, order=order, q=str(params.get("q", "")).strip()[:200],
                   umap=umap if umap in ("local", "neuronpedia") else "")

    def link(self, **changes: Any) -> str:
        """A query string for this page with `changes` (e.g. another sort or page)."""
        from urllib.parse import urlencode

        values = {"page": self.page, "sort": self.sort, "order": self.order, "q": self.q, "umap": self.umap, **changes}
        return "?" + urlencode({k: v for k, v in values.items() if v not in ("", None)})


def _table(pages: PageReads, model_id: str, source_id: str, query: SourceQuery, total: int) -> dict[str, Any]:
    n_pages = max(1, math.ceil(total / PAGE_SIZE))
    page = min(query.page, n_pages)
    rows = pages.features_page(model_id, source_id, query.sort, query.order, PAGE_SIZE, (page - 1) * PAGE_SIZE)
    for r in rows:
        r["max_act_approx"] = num(r["max_act_approx"])
        r["frac_nonzero"] = num(r["frac_nonzero"], 6)
    heads = []
    for key, label, cls in _COLUMNS:
        active = key == query.sort
        flip = "desc" if query.order == "asc" else "asc"
        heads.append({"label": label, "cls": cls, "active": active,
                      "arrow": ("▲" if query.order == "asc" else "▼") if active else "",
                      "href": query.link(sort=key, order=flip if active else ("asc" if key in ("index", "explanation") else "desc"),
                                         page=1)})
    return {
        "rows": rows, "heads": heads, "page": page, "n_pages": n_pages,
        "first": (page - 1) * PAGE_SIZE, "last": min(page * PAGE_SIZE, total),
        "prev": query.link(page=page - 1) if page > 1 else None,
        "next": query.link(page=page + 1) if page < n_pages else None,
    }


#: Laid-out maps by (file, its stamp, model, source, origin, limits): a map is the same until the
#: file changes, and laying out 131,072 points is most of a source page's time.
_LAYOUTS: "OrderedDict[tuple[Any, ...], charts.Scatter]" = OrderedDict()
_LAYOUT_CACHE = 8
_LAYOUT_LOCK = threading.Lock()


def _stamp(path: Path) -> tuple[Any, ...]:
    """What changes when the mirror file is written (it or its write-ahead log)."""
    out: list[Any] = []
    for p in (path, path.with_name(path.name + ".wal")):
        try:
            st = p.stat()
            out.extend((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def _layout(pages: PageReads, model_id: str, source_id: str, origin: str, count: int) -> charts.Scatter:
    path = Path(pages.rd.mirror.path)
    key = (str(path), _stamp(path), model_id, source_id, origin, count, charts.MAX_POINTS, charts.SMALL_SCATTER)
    with _LAYOUT_LOCK:
        found = _LAYOUTS.get(key)
        if found is not None:
            _LAYOUTS.move_to_end(key)
            return found
    pts = pages.map_points(model_id, source_id, origin, titles=count <= charts.SMALL_SCATTER)
    laid = charts.layout(np.asarray(pts["index"]), np.asarray(pts["x"], dtype=np.float64),
                         np.asarray(pts["y"], dtype=np.float64), pts["colour"], titles=pts.get("title"))
    with _LAYOUT_LOCK:
        _LAYOUTS[key] = laid
        while len(_LAYOUTS) > _LAYOUT_CACHE:
            _LAYOUTS.popitem(last=False)
    return laid


def _map(pages: PageReads, model_id: str, source_id: str, query: SourceQuery,
         hits: list[tuple[int, str]]) -> Optional[dict[str, Any]]:
    counts = pages.map_counts(model_id, source_id)
    origin = query.umap if query.umap and counts[query.umap] else ("local" if counts["local"] else "neuronpedia")
    if not counts[origin]:
        return None
    chart = _layout(pages, model_id, source_id, origin, counts[origin]).with_hits(hits)
    chart["origin"] = origin
    chart["origin_text"] = ("the mirror's own UMAP of the decoder (np-mirror geometry umap)" if origin == "local"
                            else "Neuronpedia's UMAP coordinates")
    other = "neuronpedia" if origin == "local" else "local"
    chart["other"] = query.link(umap=other) if counts[other] else None
    chart["other_text"] = "Neuronpedia's map" if other == "neuronpedia" else "the mirror's own map"
    return chart


def source_context(rd: MirrorReader, model_id: str, source_id: str, query: SourceQuery) -> Optional[dict[str, Any]]:
    """The source page's data, or None when the mirror knows no such source."""
    if not rd.source_known(model_id, source_id):
        return None
    pages = PageReads(rd)
    total = pages.feature_count(model_id, source_id)
    results = None
    hits: list[tuple[int, str]] = []
    n_hits = 0
    if query.q:
        results, n_hits, hits = pages.search(model_id, source_id, query.q, MAX_HITS)
    return {
        "model_id": model_id, "source_id": source_id, "title": f"{model_id}/{source_id}", "total": total,
        "size": pages.source_size(model_id, source_id),
        "table": _table(pages, model_id, source_id, query, total), "query": query,
        "results": results, "n_hits": n_hits, "max_hits": MAX_HITS, "q": query.q, "jump_error": query.jump_error,
        "umap": _map(pages, model_id, source_id, query, hits),
    }
