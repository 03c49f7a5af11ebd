"""A large source written straight through the store's writer, for page tests and benchmarks.

Syncing 131,072 features from the emulator takes minutes of HTTP; what the pages' scale
depends on is the rows in the file, so this writes Neuronpedia-shaped bodies in batches with
`write_batch` (the same code a sync uses). Deterministic: the same arguments give the same file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..ids import SourceId
from ..models import Feature
from ..store.catalog import save_source
from ..store.database import Database
from ..store.results import save_coordinates
from ..store.writer import FeatureRow, write_batch

__all__ = ["write_big_source", "BIG_WORDS"]

BIG_WORDS = ("cats", "dates", "numbers", "code", "French", "negation", "names", "colours", "verbs", "plurals",
             "questions", "money", "time", "places", "sport", "music")
_TOKENS = (" the", " a", " of", " cat", " dog", " 2024", " and", " to", " in", " is", ",", ".", " I", " you")


def _full(body: dict[str, Any], i: int, rng: np.random.Generator, n: int) -> None:
    """The dashboard parts (histograms, neighbours, correlations, two activations) of one feature."""
    top = body["maxActApprox"]
    body.update({
        "topkCosSimIndices": [i, *rng.integers(0, n, 8).tolist()],
        "topkCosSimValues": [1.0, *np.round(np.sort(rng.random(8))[::-1], 4).tolist()],
        "pos_str": [" cat", " dog"], "pos_values": [0.9, 0.7], "neg_str": [" not"], "neg_values": [-0.8],
        "freq_hist_data_bar_values": np.round(np.linspace(0.05, top, 30), 4).tolist(),
        "freq_hist_data_bar_heights": rng.integers(0, 5000, 30).tolist(),
        "logits_hist_data_bar_values": np.round(np.linspace(-1, 1, 30), 4).tolist(),
        "logits_hist_data_bar_heights": rng.integers(0, 3000, 30).tolist(),
        "correlated_neurons_indices": rng.integers(0, 3072, 3).tolist(),
        "correlated_neurons_pearson": [0.5, 0.4, 0.3], "correlated_neurons_l1": [0.2, 0.1, 0.1],
    })
    length = 48
    for k in range(2):
        values = np.round(np.where(rng.random(length) < 0.2, top * rng.random(length), 0.0), 3)
        peak = int(rng.integers(0, length))
        values[peak] = top if k == 0 else round(top / 2, 3)
        body["activations"].append({
            "id": f"a{i}-{k}", "tokens": [_TOKENS[t] for t in rng.integers(0, len(_TOKENS), length)],
            "values": values.tolist(), "maxValue": float(values[peak]), "maxValueTokenIndex": peak, "minValue": 0.0})


def _bodies(model_id: str, source_id: str, start: int, stop: int, rng: np.random.Generator, n: int,
            acts_every: int) -> list[dict[str, Any]]:
    """Bodies of features [start, stop): every one with the columns the source page reads
    (max activation, density, UMAP, an explanation), every `acts_every`-th with the rest."""
    m = stop - start
    top = np.round(0.5 + 20 * rng.random(m), 3).tolist()
    frac = np.round(10 ** (-5 + 3.5 * rng.random(m)), 8).tolist()
    ux = np.round(-10 + 30 * rng.random(m), 4).tolist()
    uy = np.round(-10 + 30 * rng.random(m), 4).tolist()
    out = []
    for k, i in enumerate(range(start, stop)):
        word = BIG_WORDS[i % len(BIG_WORDS)]
        body: dict[str, Any] = {
            "modelId": model_id, "layer": source_id, "index": str(i), "maxActApprox": top[k], "frac_nonzero": frac[k],
            "umap_x": ux[k], "umap_y": uy[k], "activations": [],
            "explanations": [{"id": f"e{i}", "description": f"{word} and feature {i}", "explanationModelName": "gpt-4o-mini",
                              "typeName": "oai_token-act-pair",
                              "scores": [{"value": 0.5, "explanationScoreTypeName": "eleuther_fuzz"}]}],
        }
        if i % acts_every == 0:
            _full(body, i, rng, n)
        out.append(body)
    return out


def write_big_source(path: str | Path, model_id: str = "gpt2-small", source_id: str = "8-res-big", n: int = 131_072, *,
                     acts_every: int = 32, local_umap: bool = False, batch: int = 8192, seed: int = 0,
                     db: Optional[Database] = None) -> SourceId:
    """Write `n` features of `model_id/source_id` into the mirror at `path` (every feature with
    an explanation and Neuronpedia UMAP coordinates; every `acts_every`-th also with
    histograms, topkCosSim lists, correlations and two 48-token activations), record the source's size, and with
    `local_umap` also a local UMAP (`coordinates`, method 'umap') of every feature."""
    sid = SourceId(model_id, source_id)
    own = db is None
    database = Database(path) if db is None else db
    try:
        rng = np.random.default_rng(seed)
        save_source(database, sid, None, n, "test")
        for start in range(0, n, batch):
            rows = [FeatureRow(Feature.from_raw(body), "get")
                    for body in _bodies(model_id, source_id, start, min(n, start + batch), rng, n, acts_every)]
            write_batch(database, rows)
        if local_umap:
            save_coordinates(database, sid, "umap", np.arange(n), rng.normal(size=(n, 2)))
    finally:
        if own:
            database.close()
    return sid
