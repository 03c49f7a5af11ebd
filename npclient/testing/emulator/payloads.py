"""The emulator's per-feature payloads: GET /api/feature's body (exact bytes, kept in an LRU),
POST /api/features items, the features-offset page, explanation search and stored vectors.
Each is a pure function of (config, model, source, index). A mixin of `EmulatorState`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from ... import wire
from ...wire import explanation_order_key
from .config import EmulatorConfig, SourceSpec
from .seeded import (
    _COMMON,
    _FREQ_X,
    _LOGIT_X,
    _N_HIST,
    _SPECIAL_ARR,
    _SPECIAL_RATE,
    CREATOR_ID,
    CREATOR_NAME,
    EXPLAINERS,
    EXPLANATION_TYPES,
    OFFSET_PAGE,
    SCORE_TYPES,
    SEARCH_PAGE,
    VECTOR_USER,
    _cuid,
    _digest,
    _floats,
    _iso,
    _rng,
    words,
)

if TYPE_CHECKING:
    import threading

    from .state import _SaeData

__all__ = ["FeaturePayloads"]


class FeaturePayloads:
    """Feature payloads of `EmulatorState`, built on demand from its per-source data."""

    config: EmulatorConfig
    _specs: dict[tuple[str, str], SourceSpec]
    _cache: OrderedDict[tuple[str, str, int], bytes]
    _cache_lock: threading.Lock
    _rel_cache: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]
    stats: dict[str, int]

    def feature_bytes(self, model_id: str, source_id: str, index: int) -> bytes | None:
        """Exact body of GET /api/feature/{model}/{source}/{index}, or None for a 404."""
        key = (model_id, source_id, index)
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.stats["cache_hits"] += 1
                return hit
        if not self.exists(model_id, source_id, index):
            return None
        body = orjson.dumps(self._build_feature(model_id, source_id, index))
        with self._cache_lock:
            self._cache[key] = body
            self.stats["generated"] += 1
            while len(self._cache) > self.config.cache_size:
                self._cache.popitem(last=False)
        return body

    def feature_db(self, model_id: str, source_id: str, index: int) -> dict[str, Any] | None:
        """The feature as the database holds it: GET's dict before JSON rendering, so NaN and
        Infinity are still floats (the API renders them `null`, the bulk exports `NaN`)."""
        if not self.exists(model_id, source_id, index):
            return None
        return self._build_feature(model_id, source_id, index)

    def feature(self, model_id: str, source_id: str, index: int) -> dict[str, Any] | None:
        """What GET /api/feature serves, parsed (None where it answers 404)."""
        body = self.feature_bytes(model_id, source_id, index)
        return None if body is None else orjson.loads(body)

    def explanations(self, model_id: str, source_id: str, index: int) -> list[dict[str, Any]]:
        """Full explanation rows of a feature, in id (storage) order."""
        sae = self.sae_data(model_id, source_id)
        if sae is None or not (0 <= index < sae.spec.d_sae) or not sae.present[index]:
            return []
        out = [self._explanation(sae, index, j) for j in range(len(sae.descriptions[index]))]
        # ids are random-looking, so storage (id) order differs from the score order GET uses
        out.sort(key=lambda e: e["id"])
        return out

    def _explanation(self, sae: _SaeData, index: int, j: int) -> dict[str, Any]:
        model_id, source_id = sae.spec.model_id, sae.spec.source_id
        kind = int(sae.expl_kind[index, j])
        eid = _cuid("expl", self.config.seed, model_id, source_id, index, j)
        score = float(sae.expl_scores[index, j])
        unscored = bool(sae.v2_null[index, j])
        umap = self._umap(sae, index)
        return {
            "id": eid,
            "modelId": model_id,
            "layer": source_id,
            "index": str(index),
            "description": sae.descriptions[index][j],
            "authorId": CREATOR_ID,
            "triggeredByUserId": None,
            "notes": None,
            # prisma/schema.prisma: scoreV1 Float @default(0), scoreV2 Float? (NULL: never scored)
            "scoreV1": 0,
            "scoreV2": None if unscored else score,
            "explanationModelName": EXPLAINERS[kind % len(EXPLAINERS)],
            "typeName": EXPLANATION_TYPES[(kind >> 4) % len(EXPLANATION_TYPES)],
            # UMAP coordinates ride on explanation rows too (the exports carry them only here)
            "umap_x": umap["umap_x"],
            "umap_y": umap["umap_y"],
            "umap_cluster": umap["umap_cluster"],
            "umap_log_feature_sparsity": umap["umap_log_feature_sparsity"],
            "createdAt": _iso("expl", model_id, source_id, index, j),
            "scores": [] if unscored else [{
                "id": _cuid("score", self.config.seed, model_id, source_id, index, j),
                "value": score,
                "explanationId": eid,
                "explanationScoreTypeName": SCORE_TYPES[(kind >> 8) % len(SCORE_TYPES)],
                "explanationScoreModelName": "gemini-1.5-flash",
                "initiatedByUserId": CREATOR_ID,
                "jsonDetails": "",
                "createdAt": _iso("score", model_id, source_id, index, j),
            }],
        }

    def _umap(self, sae: _SaeData, index: int) -> dict[str, Any]:
        """A feature's UMAP placement and sparsity (on its Neuron row and its explanation rows)."""
        u = _rng(*self._seed("umap", sae.spec.model_id, sae.spec.source_id, index)).random(5)
        dead = sae.status[index] == 1
        frac = 0.0 if dead else float(10 ** (-5 + 3.5 * u[0]))
        if u[1] < 0.3:
            return {"frac": frac, "umap_x": None, "umap_y": None, "umap_cluster": None, "umap_log_feature_sparsity": None}
        return {
            "frac": frac,
            "umap_x": round(-10 + 30 * float(u[2]), 4),
            "umap_y": round(-10 + 30 * float(u[3]), 4),
            "umap_cluster": int(u[4] * 40),
            "umap_log_feature_sparsity": round(float(np.log10(max(frac, 1e-9))), 4),
        }

    def _build_feature(self, model_id: str, source_id: str, index: int) -> dict[str, Any]:
        spec = self._specs[(model_id, source_id)]
        row = self._row(spec, index)
        if spec.kind == "vector":
            acts: list[dict[str, Any]] = []
            expl_get: list[dict[str, Any]] = []
            creator: dict[str, Any] | None = {"name": VECTOR_USER["name"]}
        else:
            acts = self._activations(spec, index, row)
            full = self.explanations(model_id, source_id, index)
            full.sort(key=lambda e: explanation_order_key(e["scoreV2"], e["scoreV1"], e["id"]))
            expl_get = [
                {
                    "id": e["id"],
                    "description": e["description"],
                    "explanationModelName": e["explanationModelName"],
                    "typeName": e["typeName"],
                    "scores": e["scores"],
                    "triggeredByUser": None,
                }
                for e in full
            ]
            creator = {"name": CREATOR_NAME}
        model_row, source_row, set_row = self._relations(spec)
        row.update({
            "model": model_row,
            "lists": [],
            "creator": creator,
            "source": source_row,
            "sourceSet": set_row,
            "comments": [],
            "activations": acts,
            "explanations": expl_get,
        })
        return row

    def _relations(self, spec: SourceSpec) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """model, source and sourceSet rows of a source (constant: built once, never mutated)."""
        key = (spec.model_id, spec.source_id)
        rel = self._rel_cache.get(key)
        if rel is None:
            rel = (self._model_row(spec.model_id), self._source_row(spec), self._set_row(spec.model_id, spec.set_name))
            self._rel_cache[key] = rel
        return rel

    def _row(self, spec: SourceSpec, index: int) -> dict[str, Any]:
        """The Neuron table row: scalars and arrays, no relations."""
        m, s = spec.model_id, spec.source_id
        base: dict[str, Any] = {
            "modelId": m,
            "layer": s,
            "index": str(index),
            "sourceSetName": spec.set_name,
            "creatorId": CREATOR_ID,
            "createdAt": _iso("feature", m, s, index),
        }
        if spec.kind == "vector":
            vec = self.vector_data(m, s)
            assert vec is not None
            base.update({
                "creatorId": VECTOR_USER["id"],
                "maxActApprox": 0,
                "hasVector": True,
                "vector": _floats(vec.vectors[index], 5),
                "vectorLabel": vec.labels[index],
                "vectorDefaultSteerStrength": vec.strengths[index],
                "hookName": spec.hook,
                "topkCosSimIndices": [], "topkCosSimValues": [],
                "neuron_alignment_indices": [], "neuron_alignment_values": [], "neuron_alignment_l1": [],
                "correlated_neurons_indices": [], "correlated_neurons_pearson": [], "correlated_neurons_l1": [],
                "correlated_features_indices": [], "correlated_features_pearson": [],
                "correlated_features_l1": [],
                "neg_str": [], "neg_values": [], "pos_str": [], "pos_values": [],
                "frac_nonzero": 0,
                "freq_hist_data_bar_heights": [], "freq_hist_data_bar_values": [],
                "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
                "decoder_weights_dist": [],
                "umap_cluster": None, "umap_log_feature_sparsity": None, "umap_x": None, "umap_y": None,
            })
            return base

        sae = self.sae_data(m, s)
        assert sae is not None
        rng = _rng(*self._seed("row", m, s, index))
        status = int(sae.status[index])
        dead = status == 1
        top_i, top_v = self._topk_row(sae, index)
        # One draw of each kind, sliced below: numpy call overhead dominates at this size.
        u = rng.random(32)
        z = rng.standard_normal(72)
        ints = rng.integers(0, 1 << 30, 140)
        n_hist = _N_HIST
        desc = -np.sort(-np.concatenate([
            0.05 + 0.35 * u[0:3], 0.01 + 0.09 * u[3:6], 0.5 * u[6:9], 0.3 * u[9:12],
        ]).reshape(4, 3), axis=1).ravel()
        floats = np.round(np.concatenate([
            desc,                                            # 0:12 alignment / correlation
            np.sort(-0.6 + 0.15 * z[0:10]),                  # 12:22 neg_values
            -np.sort(-(0.6 + 0.15 * z[10:20])),              # 22:32 pos_values
            _FREQ_X + 0.05 * z[20:70],                       # 32:82 freq hist values
            _LOGIT_X + 0.05 * z[70],                         # 82:132 logits hist values
        ]), 4).tolist()
        freq_vals: list[float | None] = floats[32:82]
        if u[23] < 0.1:  # a NaN slipped into the histogram once (the API shows null, exports NaN)
            freq_vals[int(ints[136]) % n_hist] = float("nan")
        if u[27] < 0.03:  # and an overflow somewhere in the logit histogram
            floats[82 + int(ints[138]) % n_hist] = float("inf") if u[28] < 0.5 else float("-inf")
        pos_tokens = np.where(u[12:22] < 0.1, _SPECIAL_ARR[ints[26:36] % len(_SPECIAL_ARR)],
                              _COMMON[ints[6:16] % len(_COMMON)]).tolist()
        umap = self._umap(sae, index)
        frac = umap["frac"]
        base.update({
            "maxActApprox": None if status == 2 else float(sae.max_act[index]),
            "hasVector": False,
            "vector": [],
            "vectorLabel": None,
            "vectorDefaultSteerStrength": 10,
            "hookName": None,
            "topkCosSimIndices": top_i.tolist(),
            "topkCosSimValues": _floats(top_v, 6),
            "neuron_alignment_indices": (ints[0:3] % spec.d_in).tolist(),
            "neuron_alignment_values": floats[0:3],
            "neuron_alignment_l1": floats[3:6],
            "correlated_neurons_indices": (ints[3:6] % 3072).tolist(),
            "correlated_neurons_pearson": floats[6:9],
            "correlated_neurons_l1": floats[9:12],
            "correlated_features_indices": [],
            "correlated_features_pearson": [],
            "correlated_features_l1": [],
            "neg_str": _COMMON[ints[16:26] % len(_COMMON)].tolist(),
            "neg_values": floats[12:22],
            "pos_str": pos_tokens,
            "pos_values": floats[22:32],
            "frac_nonzero": frac,
            "freq_hist_data_bar_heights": [] if dead else (ints[36:86] % 5000).tolist(),
            "freq_hist_data_bar_values": [] if dead else freq_vals,
            "logits_hist_data_bar_heights": (ints[86:136] % 3000).tolist(),
            "logits_hist_data_bar_values": floats[82:132],
            "decoder_weights_dist": [],
            "umap_cluster": umap["umap_cluster"],
            "umap_log_feature_sparsity": umap["umap_log_feature_sparsity"],
            "umap_x": umap["umap_x"],
            "umap_y": umap["umap_y"],
        })
        return base

    def _activations(self, spec: SourceSpec, index: int, row: dict[str, Any]) -> list[dict[str, Any]]:
        """Activation records sorted by maxValue desc (ids ascend in generation order)."""
        sae = self.sae_data(spec.model_id, spec.source_id)
        assert sae is not None
        if sae.status[index] == 1:
            return []
        m, s = spec.model_id, spec.source_id
        rng = _rng(*self._seed("acts", m, s, index))
        lo, hi = self.config.n_activations
        n_act = int(rng.integers(lo, hi + 1))
        if n_act == 0:
            return []
        tlo, thi = self.config.tokens_per_activation
        lengths = rng.integers(tlo, thi + 1, n_act)
        total = int(lengths.sum())
        u = rng.random(3 * total + 3 * n_act)
        ints = rng.integers(0, 1 << 30, 2 * total + n_act)
        tokens = _COMMON[ints[:total] % len(_COMMON)]
        special = u[:total] < _SPECIAL_RATE
        tokens[special] = _SPECIAL_ARR[ints[total : 2 * total][special] % len(_SPECIAL_ARR)]
        top = float(sae.max_act[index])
        maxes = 0.05 + 0.95 * u[3 * total : 3 * total + n_act]
        maxes[int(u[-1] * n_act)] = 1.0  # the strongest example sits anywhere in storage order
        maxes = np.round(top * maxes, 3)
        sparse = np.where(u[total : 2 * total] < 0.2, 0.6 * u[2 * total : 3 * total], 0.0)
        peaks = (u[3 * total + n_act : 3 * total + 2 * n_act] * lengths).astype(np.int64)
        keyword = sae.keyword[index]
        kw_token = " " + keyword if keyword else None
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        flat = np.round(sparse * np.repeat(maxes, lengths), 3)  # peaks stay <= 0.6 * max
        flat[starts + peaks] = maxes
        mins = np.minimum.reduceat(flat, starts).tolist()
        values = flat.tolist()
        token_list = tokens.tolist()
        if kw_token is not None:
            for p in (starts + peaks).tolist():
                token_list[p] = kw_token
        data_idx = (ints[2 * total :] % 10_000_000).tolist()
        created = row["createdAt"]
        index_s = str(index)
        act_base = _digest("act", self.config.seed, m, s, index)
        acts: list[dict[str, Any]] = []
        for a, (st, ln, peak, mx) in enumerate(zip(starts.tolist(), lengths.tolist(), peaks.tolist(), maxes.tolist())):
            acts.append({
                "id": "cl" + hashlib.blake2b(act_base + bytes((a,)), digest_size=12).hexdigest()[:23],
                "tokens": token_list[st : st + ln],
                "dataIndex": str(data_idx[a]),
                "index": index_s,
                "layer": s,
                "modelId": m,
                "dataSource": None,
                "maxValue": mx,
                "maxValueTokenIndex": peak,
                "minValue": mins[a],
                "values": values[st : st + ln],
                "dfaValues": [],
                "dfaTargetIndex": None,
                "dfaMaxValue": None,
                "creatorId": CREATOR_ID,
                "createdAt": created,
                "lossValues": [],
                "logitContributions": None,
                "binMin": None,
                "binMax": None,
                "binContains": None,
                "qualifyingTokenIndex": None,
                "zQIndices": [],  # prisma/schema.prisma Activation: attention z-pattern arrays
                "zKIndices": [],
                "zValues": [],
            })
        acts.sort(key=lambda r: r["id"])  # storage order
        ranked = sorted(acts, key=lambda r: -r["maxValue"])
        # The lower half are quantile-bin examples, as on real dashboards.
        n_top = (len(ranked) + 1) // 2
        for k, act in enumerate(ranked[n_top:]):
            act["binMin"] = round(act["maxValue"] * 0.9, 3)
            act["binMax"] = round(act["maxValue"] * 1.1, 3)
            act["binContains"] = round(0.01 * (k + 1), 4)
        return ranked

    # ---------------------------------------------------------------- other endpoints

    def features_post_item(
        self, model_id: str, source_id: str, index: int, max_acts: int | None = None
    ) -> dict[str, Any] | None:
        """One element of POST /api/features, as `getNeurons` builds it.

        The Neuron row, no model/source/sourceSet/creator/lists/comments relations,
        explanations trimmed to {description, explanationModelName, typeName} (storage
        order), activations in storage order, or the top `max_acts` by maxValue when given
        (a falsy value means all, as in the real route).
        """
        full = self.feature(model_id, source_id, index)
        if full is None:
            return None
        acts = full.pop("activations")
        for rel in ("model", "lists", "creator", "source", "sourceSet", "comments", "explanations"):
            full.pop(rel)
        if max_acts:
            acts = acts[:max_acts]
        else:
            acts.sort(key=lambda r: r["id"])
        full["explanations"] = [
            {"description": e["description"], "explanationModelName": e["explanationModelName"],
             "typeName": e["typeName"]}
            for e in self.explanations(model_id, source_id, index)
        ]
        full["activations"] = acts
        return full

    def features_post(self, items: Sequence[tuple[str, str, int]], max_acts: int | None = None) -> list[dict[str, Any]]:
        """POST /api/features for these (model, layer, index) items (see `wire.order_features_post`)."""
        requests = [wire.FeatureRequest(m, s, str(i), max_acts) for m, s, i in items]

        def lookup(m: str, s: str, i: str) -> dict[str, Any] | None:
            index = wire.canonical_index(i)
            if index is None or self.source(m, s) is None:
                return None
            return self.features_post_item(m, s, index, max_acts)

        return wire.order_features_post(requests, lookup)

    def features_offset(self, model_id: str, source_id: str, offset: int) -> list[dict[str, Any]]:
        """POST /api/features-offset: 25 live features from `offset` in natural index order,
        returned in text order of index (the second query has no ORDER BY), each with
        sourceSet, model, activations and full explanations (author, votes)."""
        page = self.offset_indices(model_id, source_id)[max(offset, 0) : max(offset, 0) + OFFSET_PAGE]
        out = []
        for i in sorted(page, key=str):
            full = self.feature(model_id, source_id, i)
            assert full is not None
            for rel in ("lists", "creator", "source", "comments", "explanations"):
                full.pop(rel)
            exps = self.explanations(model_id, source_id, i)
            exps.sort(key=lambda e: explanation_order_key(e["scoreV2"], e["scoreV1"], e["id"]))
            for e in exps:
                e.pop("scores")
                e["author"] = {"name": CREATOR_NAME}
                e["votes"] = []
            full["explanations"] = exps
            out.append(full)
        return out

    def _search_index(self, sae: _SaeData) -> list[tuple[int, int, str, frozenset[str]]]:
        if sae.search_index is None:
            sae.search_index = [
                (i, j, d, frozenset(words(d)))
                for i in np.flatnonzero(sae.present).tolist()
                for j, d in enumerate(sae.descriptions[i])
            ]
        return sae.search_index

    def search(self, model_id: str, layers: Iterable[str], query: str, offset: int = 0, *,
               request: Any = None) -> dict[str, Any]:
        """POST /api/explanation/search (app/api/explanation/search/route.tsx), scored by word
        overlap (the cosine of word sets) where Neuronpedia compares embeddings.

        Results carry modelId, layer, index, description, explanationModelName, typeName,
        cosine_similarity and `neuron` (getNeurons with 3 activations), no id and no authorId;
        `request` echoes the body (default: these arguments); `nextOffset` only on a full page.
        """
        req = wire.SearchRequest(model_id, tuple(layers), query, max(int(offset), 0))
        if request is None:
            request = {"modelId": model_id, "layers": list(req.layers), "query": query, "offset": offset}
        q = words(req.query)
        hits: list[tuple[float, int, int, int, str, str]] = []
        for order, layer in enumerate(req.layers):
            sae = self.sae_data(req.model_id, layer)
            if sae is None or not q:
                continue
            for i, j, desc, ws in self._search_index(sae):
                common = len(q & ws)
                if common:
                    score = common / float(np.sqrt(len(q) * len(ws)))
                    hits.append((-score, order, i, j, layer, desc))
        hits.sort()
        page = hits[req.offset : req.offset + SEARCH_PAGE]
        results = []
        for neg, _, i, j, layer, desc in page:
            sae = self.sae_data(req.model_id, layer)
            assert sae is not None
            e = self._explanation(sae, i, j)
            result: dict[str, Any] = {
                "modelId": req.model_id,
                "layer": layer,
                "index": str(i),
                "description": desc,
                "explanationModelName": e["explanationModelName"],
                "typeName": e["typeName"],
                "cosine_similarity": round(-neg, 6),
            }
            neuron = self.features_post_item(req.model_id, layer, i, 3)
            if neuron is not None:
                result["neuron"] = neuron
            results.append(result)
        return wire.search_page(request, results, req.offset)

    def vector(self, model_id: str, source_id: str, index: int) -> dict[str, Any] | None:
        """`vector` of POST /api/vector/get for a stored steering vector, else None."""
        vec = self.vector_data(model_id, source_id)
        if vec is None or index not in vec.vectors:
            return None
        return {
            "modelId": model_id,
            "layer": source_id,
            "index": str(index),
            "vectorLabel": vec.labels[index],
            "createdAt": _iso("feature", model_id, source_id, index),
            "creatorId": VECTOR_USER["id"],
            "vectorDefaultSteerStrength": vec.strengths[index],
            "hookName": vec.spec.hook,
            "vector": _floats(vec.vectors[index], 5),
        }
