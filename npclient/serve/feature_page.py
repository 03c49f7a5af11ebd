"""What the feature page shows, built from the stored body: examples windowed around their max
token, the two histograms, explanations with their scores, correlated neurons and features,
and decoder neighbours with where they came from.

Neuronpedia's dashboard is the model; every part is drawn from what the mirror holds, and a part
the mirror lacks says so instead of vanishing.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import orjson

from .. import wire
from ..errors import NPError
from ..tokens import visible_token
from .charts import histogram
from .reader import MirrorReader, PageReads

__all__ = ["feature_context", "DEFAULT_WINDOW", "MAX_WINDOW", "window"]

#: Tokens shown either side of an example's max token before it is expanded.
DEFAULT_WINDOW = 10
MAX_WINDOW = 200
N_NEIGHBOURS = 25


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f"{f:.{digits}f}" if math.isfinite(f) else "–"


def _colour(value: Any, top: float) -> str:
    if not _finite(value) or value <= 0 or top <= 0:
        return "transparent"
    return f"rgba(255, 128, 0, {min(1.0, float(value) / top):.3f})"


def window(n_tokens: int, max_at: int, n: int) -> tuple[int, int]:
    """[start, stop) of the tokens within `n` of `max_at`."""
    return max(0, max_at - n), min(n_tokens, max_at + n + 1)


def _activations(acts: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    top = max([float(a["maxValue"]) for a in acts if _finite(a.get("maxValue"))] + [0.0])
    out = []
    for a in acts:
        tokens = a.get("tokens") or []
        values = a.get("values") or []
        max_at = a.get("maxValueTokenIndex")
        if not (isinstance(max_at, int) and 0 <= max_at < len(tokens)):
            numeric = [float(v) if _finite(v) else -math.inf for v in values[:len(tokens)]]
            max_at = int(np.argmax(numeric)) if numeric else -1
        toks = []
        for i, tok in enumerate(tokens):
            v = values[i] if i < len(values) else None
            toks.append({"text": visible_token(tok), "value": num(v), "bg": _colour(v, top), "max": i == max_at})
        start, stop = window(len(toks), max(max_at, 0), n)
        out.append({"max": num(a.get("maxValue")), "tokens": toks, "window": toks[start:stop],
                    "cut_left": start > 0, "cut_right": stop < len(toks), "windowed": start > 0 or stop < len(toks)})
    return out


def _histograms(raw: dict[str, Any], acts: list[dict[str, Any]]) -> dict[str, Optional[dict[str, Any]]]:
    density = histogram(raw.get("freq_hist_data_bar_values") or [], raw.get("freq_hist_data_bar_heights") or [],
                        xlabel="activation value", ylabel="count",
                        label="Activation density (Neuronpedia's histogram of non-zero activations)")
    if density is None:  # an imported feature may lack it: the stored top activations still tell something
        vals = np.array([float(v) for a in acts for v in (a.get("values") or []) if _finite(v) and float(v) > 0])
        if vals.size:
            counts, edges = np.histogram(vals, bins=min(40, max(5, int(vals.size ** 0.5))))
            density = histogram(((edges[:-1] + edges[1:]) / 2).tolist(), counts.tolist(), xlabel="activation value",
                                ylabel="tokens", label="Non-zero values in the stored top activations "
                                "(Neuronpedia's density histogram is not stored)")
    logits = histogram(raw.get("logits_hist_data_bar_values") or [], raw.get("logits_hist_data_bar_heights") or [],
                       xlabel="logit weight", ylabel="vocabulary tokens", signed=True,
                       label="Logit histogram (Neuronpedia's, over the vocabulary)")
    return {"density": density, "logits": logits}


def _scores(scores: Any) -> list[dict[str, str]]:
    return [{"name": s.get("explanationScoreTypeName") or "score", "model": s.get("explanationScoreModelName") or "",
             "value": num(s.get("value"))} for s in (scores or []) if isinstance(s, dict)]


def _explanations(raw: dict[str, Any], pages: PageReads, model_id: str, source_id: str, index: int) -> list[dict[str, Any]]:
    out = [{"description": e.get("description") or "", "model": e.get("explanationModelName"), "type": e.get("typeName"),
            "scores": _scores(e.get("scores"))}
           for e in (raw.get("explanations") or []) if isinstance(e, dict)]
    if not out:
        for r in pages.explanation_rows(model_id, source_id, index):
            out.append({"description": r["description"] or "", "model": r["explanation_model_name"], "type": r["type_name"],
                        "scores": _scores(orjson.loads(r["scores"]) if r["scores"] else [])})
    return out


def _triples(raw: dict[str, Any], prefix: str, second: str, third: str) -> list[tuple[Any, Any, Any]]:
    idx = raw.get(f"{prefix}_indices") or []
    a, b = raw.get(f"{prefix}_{second}") or [], raw.get(f"{prefix}_{third}") or []
    return [(i, a[k] if k < len(a) else None, b[k] if k < len(b) else None) for k, i in enumerate(idx)
            if isinstance(i, int) and not isinstance(i, bool) or (isinstance(i, str) and i.isdigit())]


def _correlations(raw: dict[str, Any], model_id: str, source_id: str) -> list[dict[str, Any]]:
    """Neuronpedia's neuron alignment and correlated neurons (links to the layer's neurons source,
    a bare layer number) and correlated features (this source), as stored."""
    layer = wire.layer_number(source_id)
    neurons = f"/{model_id}/{layer}" if layer is not None and layer < 1 << 30 else None
    groups = [
        ("neuron-alignment", "Neuron alignment", "neuron", neurons, _triples(raw, "neuron_alignment", "values", "l1"),
         ("value", "L1")),
        ("correlated-neurons", "Correlated neurons", "neuron", neurons,
         _triples(raw, "correlated_neurons", "pearson", "l1"), ("Pearson", "L1")),
        ("correlated-features", "Correlated features", "feature", f"/{model_id}/{source_id}",
         _triples(raw, "correlated_features", "pearson", "l1"), ("Pearson", "L1")),
    ]
    out = []
    for key, title, kind, base, rows, heads in groups:
        out.append({"id": key, "title": title, "kind": kind, "heads": heads,
                    "rows": [{"index": int(i), "href": f"{base}/{int(i)}" if base else None, "a": num(a), "b": num(b)}
                             for i, a, b in rows]})
    return out


def _neighbours(rd: MirrorReader, pages: PageReads, model_id: str, source_id: str, index: int) -> tuple[str, list[dict[str, Any]]]:
    """Decoder neighbours: those `np-mirror neighbors` computed from attached weights, else
    `Mirror.neighbors` (live from the attached weights, or Neuronpedia's stored topkCosSim lists)."""
    pairs = pages.precomputed_neighbours(model_id, source_id, index)
    origin = "the attached decoder weights (computed by np-mirror neighbors)"
    found: dict[int, Optional[str]] = {}
    if not pairs:
        try:
            table = rd.mirror.neighbors(f"{model_id}/{source_id}/{index}", k=N_NEIGHBOURS + 1)
        except (NPError, ValueError, ImportError):
            return "nowhere: no decoder weights are attached and no topkCosSim list is stored", []
        kind = table.column("origin")[0].as_py() if table.num_rows else None
        origin = ("the attached decoder weights" if kind == "weights" else "Neuronpedia's topkCosSim lists (stored)")
        pairs = list(zip(table.column("index").to_pylist(), table.column("cosine").to_pylist()))
        found = {i: e for i, e in zip(table.column("index").to_pylist(), table.column("explanation").to_pylist())
                 if e is not None}
    pairs = [(int(i), c) for i, c in pairs if i is not None and int(i) != index][:N_NEIGHBOURS]
    stored = pages.top_explanations(model_id, source_id, [i for i, _ in pairs])
    stored.update(found)
    return origin, [{"index": i, "cosine": num(c), "explanation": stored.get(i), "stored": i in stored} for i, c in pairs]


def _logits(raw: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    def pair(strs: Any, vals: Any) -> list[dict[str, str]]:
        return [{"token": visible_token(t), "value": num(v)} for t, v in zip(strs or [], vals or [])]

    return {"pos": pair(raw.get("pos_str"), raw.get("pos_values")), "neg": pair(raw.get("neg_str"), raw.get("neg_values"))}


def feature_context(rd: MirrorReader, model_id: str, source_id: str, index: int, n: int = DEFAULT_WINDOW) -> Optional[dict[str, Any]]:
    """The feature page's data, or None when the mirror does not hold the feature."""
    raw = rd.feature_raw(model_id, source_id, index)
    if raw is None:
        return None
    pages = PageReads(rd)
    acts = wire.rank_activations(a for a in (raw.get("activations") or []) if isinstance(a, dict))
    origin, neighbours = _neighbours(rd, pages, model_id, source_id, index)
    size = pages.source_size(model_id, source_id)
    return {
        "model_id": model_id, "source_id": source_id, "index": index,
        "title": f"{model_id}/{source_id}/{index}",
        "max_act": num(raw.get("maxActApprox")),
        "frac_nonzero": num(raw.get("frac_nonzero"), 6),
        "explanations": _explanations(raw, pages, model_id, source_id, index),
        "activations": _activations(acts, n),
        "window": n,
        "logits": _logits(raw),
        "histograms": _histograms(raw, acts),
        "correlations": _correlations(raw, model_id, source_id),
        "neighbour_origin": origin,
        "neighbours": neighbours,
        "prev": index - 1 if index > 0 else None,
        "next": index + 1 if size is None or index + 1 < size else None,
    }
