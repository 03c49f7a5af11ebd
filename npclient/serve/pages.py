"""Server-rendered pages: the mirror's sources and features, readable offline.

URLs follow Neuronpedia's (`/{model}/{source}` and `/{model}/{source}/{index}`), so a link
copied from the site works on the mirror. Templates are Jinja2 with autoescaping on:
tokens and explanations are untrusted text and are shown, never run. Everything the pages
load (CSS, JS) is served from `/static`; no CDN.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from .. import wire
from ..tokens import visible_token
from .reader import _INT_RE, MirrorReader, _stored_index, _valid_source

__all__ = ["page_routes", "render_error", "visible_token", "TEMPLATES"]

TEMPLATES = Path(__file__).parent / "templates"
SOURCE_PAGE = 100
_ENV = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(default=True, default_for_string=True))

def _finite(value: Any) -> bool:
    """A number that can be drawn (stored exports may hold NaN and infinities)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _colour(value: Any, top: float) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "transparent"
    if not math.isfinite(v) or v <= 0 or top <= 0:
        return "transparent"
    alpha = min(1.0, v / top)
    return f"rgba(255, 128, 0, {alpha:.3f})"


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f"{f:.{digits}f}" if math.isfinite(f) else "–"


def render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_ENV.get_template(name).render(**context), status_code=status)


def render_error(status: int, message: str) -> HTMLResponse:
    return render("error.html", status=status, title=f"{status}", message=message)


def _reader(request: Request) -> MirrorReader:
    return request.app.state.reader  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- data


def _histogram(raw: dict[str, Any], acts: list[dict[str, Any]]) -> dict[str, Any]:
    """Bars for an SVG: Neuronpedia's activation-density histogram when stored, else one
    computed from the stored top activations (non-zero values)."""
    heights = raw.get("freq_hist_data_bar_heights") or []
    values = raw.get("freq_hist_data_bar_values") or []
    label = "activation density (Neuronpedia's histogram)"
    pairs = [(float(x), float(h)) for x, h in zip(values, heights) if _finite(x) and _finite(h)]
    if not pairs:
        vals = np.array([float(v) for a in acts for v in (a.get("values") or []) if _finite(v) and float(v) > 0])
        if vals.size == 0:
            return {"bars": [], "label": "no activation values stored"}
        counts, edges = np.histogram(vals, bins=min(40, max(5, int(vals.size ** 0.5))))
        pairs = [(float((edges[i] + edges[i + 1]) / 2), float(c)) for i, c in enumerate(counts)]
        label = "non-zero values in the stored top activations"
    top = max(h for _, h in pairs) or 1.0
    width, height = 600.0, 120.0
    bw = width / len(pairs)
    bars = [{"x": round(i * bw, 2), "w": round(max(bw - 1, 0.5), 2), "h": round(height * h / top, 2),
             "y": round(height - height * h / top, 2), "title": f"{x:.3g}: {int(h)}"} for i, (x, h) in enumerate(pairs)]
    return {"bars": bars, "label": label, "lo": _num(pairs[0][0]), "hi": _num(pairs[-1][0]), "width": width, "height": height}


def _activations(acts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    top = max([float(a["maxValue"]) for a in acts if _finite(a.get("maxValue"))] + [0.0])
    out = []
    for a in acts:
        tokens = a.get("tokens") or []
        values = a.get("values") or []
        max_at = a.get("maxValueTokenIndex")
        if not isinstance(max_at, int) and values:
            numeric = [float(v) if _finite(v) else -math.inf for v in values]
            max_at = int(np.argmax(numeric))
        toks = []
        for i, tok in enumerate(tokens):
            v = values[i] if i < len(values) else None
            toks.append({"text": visible_token(tok), "value": _num(v), "bg": _colour(v, top), "max": i == max_at})
        out.append({"max": _num(a.get("maxValue")), "tokens": toks, "bin": a.get("binMin") is not None})
    return out


def _explanations(raw: dict[str, Any], rd: MirrorReader, key: str) -> list[dict[str, Any]]:
    out = []
    for e in raw.get("explanations") or []:
        scores = [s for s in (e.get("scores") or []) if isinstance(s, dict)]
        out.append({"description": e.get("description") or "", "model": e.get("explanationModelName"),
                    "type": e.get("typeName"),
                    "scores": [{"name": s.get("explanationScoreTypeName"), "value": _num(s.get("value"))} for s in scores]})
    if not out:
        for r in rd.rows("SELECT description, explanation_model_name, type_name, scores FROM explanations "
                         "WHERE feature_key = ? ORDER BY rank", [key]):
            scores = orjson.loads(r["scores"]) if r["scores"] else []
            out.append({"description": r["description"] or "", "model": r["explanation_model_name"], "type": r["type_name"],
                        "scores": [{"name": s.get("explanationScoreTypeName"), "value": _num(s.get("value"))}
                                   for s in scores if isinstance(s, dict)]})
    return out


def _neighbours(rd: MirrorReader, model_id: str, source_id: str, index: int, raw: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    pairs: list[tuple[int, Optional[float]]] = []
    origin = "Neuronpedia's topkCosSim"
    if rd.has_table("neighbors"):
        rows = rd.rows('SELECT neighbor_index, cosine FROM neighbors WHERE model_id = ? AND source = ? AND "index" = ? '
                       "ORDER BY rank", [model_id, source_id, index])
        pairs = [(r["neighbor_index"], r["cosine"]) for r in rows if r["neighbor_index"] is not None]
        origin = "the mirror's decoder neighbours (np-mirror neighbors)"
    if not pairs:
        origin = "Neuronpedia's topkCosSim"
        idx = raw.get("topkCosSimIndices") or []
        vals = raw.get("topkCosSimValues") or []
        if not idx:
            for r in rd.rows("SELECT topk_cos_sim_indices AS i, topk_cos_sim_values AS v FROM features "
                             "WHERE model_id = ? AND source = ? AND \"index\" = ?", [model_id, source_id, index]):
                idx, vals = r["i"] or [], r["v"] or []
        pairs = [(int(i), vals[k] if k < len(vals) else None) for k, i in enumerate(idx) if i is not None]
    pairs = [(i, c) for i, c in pairs if i != index][:25]
    if not pairs:
        return origin, []
    found = {r["index"]: r["top_explanation"] for r in rd.rows(
        'SELECT "index", top_explanation FROM features WHERE model_id = ? AND source = ? AND list_contains(?, "index")',
        [model_id, source_id, [i for i, _ in pairs]])}
    return origin, [{"index": i, "cosine": _num(c), "explanation": found.get(i), "stored": i in found} for i, c in pairs]


def _logits(raw: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    def pair(strs: Any, vals: Any) -> list[dict[str, str]]:
        return [{"token": visible_token(t), "value": _num(v)} for t, v in zip(strs or [], vals or [])]

    return {"pos": pair(raw.get("pos_str"), raw.get("pos_values")), "neg": pair(raw.get("neg_str"), raw.get("neg_values"))}


def feature_context(rd: MirrorReader, model_id: str, source_id: str, index: int) -> Optional[dict[str, Any]]:
    raw = rd.feature_raw(model_id, source_id, index)
    if raw is None:
        return None
    acts = wire.rank_activations(a for a in (raw.get("activations") or []) if isinstance(a, dict))
    origin, neighbours = _neighbours(rd, model_id, source_id, index, raw)
    return {
        "model_id": model_id, "source_id": source_id, "index": index,
        "title": f"{model_id}/{source_id}/{index}",
        "max_act": _num(raw.get("maxActApprox")),
        "frac_nonzero": _num(raw.get("frac_nonzero"), 6),
        "explanations": _explanations(raw, rd, f"{model_id}/{source_id}/{index}"),
        "activations": _activations(acts),
        "logits": _logits(raw),
        "histogram": _histogram(raw, acts),
        "neighbour_origin": origin,
        "neighbours": neighbours,
        "prev": index - 1 if index > 0 else None,
        "next": index + 1,
    }


def _umap(rd: MirrorReader, model_id: str, source_id: str) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = []
    if rd.has_table("coordinates"):
        points = rd.rows("SELECT c.\"index\", c.x, c.y, f.top_explanation FROM coordinates c LEFT JOIN features f "
                         "ON f.model_id = c.model_id AND f.source = c.source AND f.\"index\" = c.\"index\" "
                         "WHERE c.model_id = ? AND c.source = ? AND c.method = 'umap' AND c.x IS NOT NULL AND c.y IS NOT NULL "
                         "ORDER BY c.\"index\" LIMIT 20000", [model_id, source_id])
    if not points:
        return []
    xs = [p["x"] for p in points]
    ys = [p["y"] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx, sy = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    return [{"index": p["index"], "cx": round(10 + 580 * (p["x"] - x0) / sx, 2), "cy": round(10 + 380 * (1 - (p["y"] - y0) / sy), 2),
             "title": f"{p['index']}: {p['top_explanation'] or ''}"} for p in points]


def source_context(rd: MirrorReader, model_id: str, source_id: str, offset: int, q: str) -> Optional[dict[str, Any]]:
    if not rd.source_known(model_id, source_id):
        return None
    total = rd.rows("SELECT count(*) AS n FROM features WHERE model_id = ? AND source = ?", [model_id, source_id])[0]["n"]
    results = None
    if q:
        results, _ = rd.search(model_id, [source_id], q, 0, neurons=False)
        features = []
    else:
        features = rd.rows('SELECT "index", top_explanation, max_act_approx, frac_nonzero FROM features '
                           'WHERE model_id = ? AND source = ? ORDER BY "index" LIMIT ? OFFSET ?',
                           [model_id, source_id, SOURCE_PAGE, offset])
        for f in features:
            f["max_act_approx"] = _num(f["max_act_approx"])
            f["frac_nonzero"] = _num(f["frac_nonzero"], 6)
    return {
        "model_id": model_id, "source_id": source_id, "title": f"{model_id}/{source_id}", "total": total,
        "features": features, "results": results, "q": q, "offset": offset,
        "prev": max(offset - SOURCE_PAGE, 0) if offset > 0 else None,
        "next": offset + SOURCE_PAGE if offset + SOURCE_PAGE < total else None,
        "umap": _umap(rd, model_id, source_id),
    }


# --------------------------------------------------------------------------- handlers


async def index_page(request: Request) -> Response:
    rows = await run_in_threadpool(_reader(request).mirror.status)
    return render("index.html", title="np-mirror", sources=rows)


async def source_page(request: Request) -> Response:
    model_id, source_id = request.path_params["model_id"], request.path_params["source_id"]
    if model_id == "static" or _valid_source(model_id, source_id) is None:
        return render_error(404, "This page could not be found.")
    raw_offset = request.query_params.get("offset", "0")
    offset = int(raw_offset) if _INT_RE.fullmatch(raw_offset) and len(raw_offset) < 10 else 0
    q = request.query_params.get("q", "").strip()[:200]
    ctx = await run_in_threadpool(source_context, _reader(request), model_id, source_id, offset, q)
    if ctx is None:
        return render_error(404, f"The mirror has no source {model_id}/{source_id}.")
    return render("source.html", **ctx)


async def feature_page(request: Request) -> Response:
    model_id, source_id = request.path_params["model_id"], request.path_params["source_id"]
    index = _stored_index(request.path_params["index"])
    if model_id == "static" or _valid_source(model_id, source_id) is None or index is None:
        return render_error(404, "This page could not be found.")
    ctx = await run_in_threadpool(feature_context, _reader(request), model_id, source_id, index)
    if ctx is None:
        return render_error(404, f"The mirror has no feature {model_id}/{source_id}/{index}.")
    return render("feature.html", **ctx)


def page_routes() -> list[Route]:
    return [
        Route("/", index_page, methods=["GET"]),
        Route("/{model_id}/{source_id}", source_page, methods=["GET"]),
        Route("/{model_id}/{source_id}/{index}", feature_page, methods=["GET"]),
    ]
