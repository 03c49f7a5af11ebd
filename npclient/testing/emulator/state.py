"""The emulator's truth: a seeded catalog and the exact payloads the routes serve.

Every payload is a pure function of (config, model, source, index) (blake2b-derived numpy
seeds, never Python's `hash`), so tests can ask the state what the server *should* have
said and compare bytes. Per-source metadata (holes, dead features, explanations, decoder
and its cosine top-k) is built once, vectorised; per-feature payloads are built on demand
and kept serialised in an LRU.

`EmulatorState` is assembled from its parts: the catalog rows (`catalog.py`), the per-feature
payloads and the other read routes (`payloads.py`), the seeded helpers and vocabularies
(`seeded.py`), the request log (`requestlog.py`) and the cosine top-k (`topk.py`); this module
holds the run-time knobs and the per-source data (decoder, holes, explanations, top-k blocks).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..saes import PlantedSAE, can_plant, plant
from ..synthetic import SyntheticDecoder, make_synthetic
from .catalog import CatalogRows
from .config import EmulatorConfig, FaultConfig, RateLimitConfig, SourceSpec
from .faults import FaultInjector, stable_unit
from .payloads import FeaturePayloads
from .ratelimit import RateLimiter
from .requestlog import RequestLog, RequestRecord
from .seeded import (
    _TOPK_BLOCK,
    _WORDS,
    CREATOR_ID,  # noqa: F401 - importable from here, as before the split
    DAYS,
    FAMILY_TOPICS,
    OFFSET_PAGE,
    SEARCH_PAGE,
    TEMPLATES,
    TOPICS,
    _cuid,
    _digest,
    _rng,
    words,
)
from .topk import _normalise, _topk_rows, cosine_topk

__all__ = ["EmulatorState", "RequestRecord", "RequestLog", "cosine_topk", "SEARCH_PAGE", "OFFSET_PAGE", "words"]


# --------------------------------------------------------------------------- per-source data


@dataclass
class _SaeData:
    spec: SourceSpec
    decoder: PlantedSAE | SyntheticDecoder  # both have .weights, .circle, .zero_rows, .planted
    present: np.ndarray  # bool, not a hole
    status: np.ndarray  # int8: 0 live, 1 dead (maxActApprox 0), 2 maxActApprox null
    max_act: np.ndarray  # float64
    descriptions: list[tuple[str, ...]]
    expl_scores: np.ndarray  # (d_sae, 2)
    expl_kind: np.ndarray  # (d_sae, 2) int: explainer / type choice
    v2_null: np.ndarray  # (d_sae, 2) bool: never scored (scoreV2 NULL, first in GET's order)
    keyword: list[str | None]
    offset_indices: list[int]
    normalised: tuple[np.ndarray, np.ndarray] | None = None
    topk_blocks: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    search_index: list[tuple[int, int, str, frozenset[str]]] | None = None


@dataclass
class _VectorData:
    spec: SourceSpec
    indices: list[int]
    vectors: dict[int, np.ndarray]
    labels: dict[int, str]
    strengths: dict[int, float]


@dataclass
class _Runtime:
    """Settings that the control routes may change while the server runs."""

    latency_s: float
    faults: FaultInjector
    limiter: RateLimiter | None
    connection_closer: Any = None  # set by EmulatorServer: (client, hard) -> bool
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- state


class EmulatorState(CatalogRows, FeaturePayloads):
    """Catalog + deterministic payloads + request log + run-time knobs of one emulator."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self._lock = threading.RLock()
        self._specs: dict[tuple[str, str], SourceSpec] = {
            (s.model_id, s.source_id): s for s in self.config.sources
        }
        self._sae: dict[tuple[str, str], _SaeData] = {}
        self._vec: dict[tuple[str, str], _VectorData] = {}
        self._cache: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._rel_cache: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {}
        self.log = RequestLog()
        self.runtime = _Runtime(
            latency_s=self.config.latency_s,
            faults=FaultInjector(self.config.faults),
            limiter=RateLimiter(self.config.rate_limit) if self.config.rate_limit else None,
        )
        self.stats = {"generated": 0, "cache_hits": 0}

    # ---------------------------------------------------------------- run-time knobs

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of the request log (every /api request, in arrival order)."""
        return self.log.snapshot()

    @property
    def faults(self) -> FaultConfig:
        return self.runtime.faults.config

    @faults.setter
    def faults(self, value: FaultConfig) -> None:
        self.runtime.faults.config = value

    @property
    def latency_s(self) -> float:
        return self.runtime.latency_s

    @latency_s.setter
    def latency_s(self, value: float) -> None:
        self.runtime.latency_s = float(value)

    @property
    def rate_limit(self) -> RateLimitConfig | None:
        return self.runtime.limiter.config if self.runtime.limiter else None

    @rate_limit.setter
    def rate_limit(self, value: RateLimitConfig | None) -> None:
        self.runtime.limiter = RateLimiter(value) if value else None

    def reset(self) -> None:
        """Forget traffic: request log, rate-limit windows, fault attempt counters.

        Fault/latency/rate-limit *settings* stay as they are; the catalog never changes.
        """
        self.log.clear()
        self.runtime.faults.reset()
        if self.runtime.limiter:
            self.runtime.limiter.reset()

    # ---------------------------------------------------------------- catalog

    # ---------------------------------------------------------------- per-source build

    def _seed(self, *parts: Any) -> tuple[Any, ...]:
        return ("npemu", self.config.seed, *parts)

    def sae_data(self, model_id: str, source_id: str) -> _SaeData | None:
        key = (model_id, source_id)
        data = self._sae.get(key)
        if data is not None:
            return data
        spec = self._specs.get(key)
        if spec is None or spec.kind != "sae":
            return None
        with self._lock:
            if key not in self._sae:
                self._sae[key] = self._build_sae(spec)
            return self._sae[key]

    def decoder_seed(self, model_id: str, source_id: str) -> int:
        """The seed of a source's decoder: `saes.plant(d_sae, d_in, seed)` (or `make_sae(...,
        seed=seed)`) rebuilds its rows exactly (see `saes.make_emulator_sae`)."""
        return int.from_bytes(_digest(*self._seed("decoder", model_id, source_id))[:4], "little")

    def _build_sae(self, spec: SourceSpec) -> _SaeData:
        n = spec.d_sae
        dec_seed = self.decoder_seed(spec.model_id, spec.source_id)
        decoder: PlantedSAE | SyntheticDecoder
        if can_plant(n, spec.d_in):
            decoder = plant(n, spec.d_in, dec_seed)
        else:  # too small for the planted SAE: the foundation's decoder
            decoder = make_synthetic(n, spec.d_in, dec_seed)
        rng = _rng(*self._seed("meta", spec.model_id, spec.source_id))
        u_hole = np.array(
            [stable_unit(b"hole", self.config.seed, spec.model_id, spec.source_id, i) for i in range(n)]
        )
        present = u_hole >= self.config.hole_rate
        u = rng.random(n)
        status = np.where(u < 0.02, 1, np.where(u < 0.035, 2, 0)).astype(np.int8)
        max_act = np.round(np.exp(rng.normal(1.2, 0.6, n)) + 0.5, 4)
        n_expl = rng.choice(3, size=n, p=[0.2, 0.6, 0.2])
        topic = rng.integers(0, len(TOPICS), size=(n, 2))
        tmpl = rng.integers(0, len(TEMPLATES), size=(n, 2))
        expl_scores = np.round(rng.uniform(0.05, 0.95, size=(n, 2)), 4)
        expl_kind = rng.integers(0, 1 << 16, size=(n, 2))
        kw_pick = rng.integers(0, len(_WORDS), size=n)
        v2_null = _rng(*self._seed("v2null", spec.model_id, spec.source_id)).random((n, 2)) < 0.08

        descriptions: list[tuple[str, ...]] = []
        keyword: list[str | None] = []
        for i in range(n):
            k = 0 if status[i] == 1 else int(n_expl[i])
            descriptions.append(tuple(TEMPLATES[tmpl[i, j]].format(t=TOPICS[topic[i, j]]) for j in range(k)))
            keyword.append(_WORDS[int(kw_pick[i])])
        # Planted structure: always present, live and explained in a findable way.
        planted = decoder.planted
        present[planted] = True
        status[planted] = 0
        if isinstance(decoder, PlantedSAE):
            # Every labelled feature (days, months, tree) has its label as first explanation,
            # first both in GET's score order and in storage (id) order, which exports follow.
            def label_first(idx: int, label: str, other: str | None) -> None:
                keyword[idx] = label
                if other is None:
                    descriptions[idx] = (label,)
                    return
                ids = [_cuid("expl", self.config.seed, spec.model_id, spec.source_id, idx, j) for j in (0, 1)]
                j = 0 if ids[0] < ids[1] else 1
                descriptions[idx] = (label, other) if j == 0 else (other, label)
                if expl_scores[idx, j] < expl_scores[idx, 1 - j]:
                    expl_scores[idx] = expl_scores[idx, ::-1].copy()

            labels = decoder.labels
            for idx in decoder.days:
                label_first(idx, labels[idx], f"mentions of {labels[idx]} and other days of the week")
            for idx in decoder.months:
                label_first(idx, labels[idx], f"mentions of {labels[idx]} and other months of the year")
            label_first(decoder.tree_root, labels[decoder.tree_root], None)
            for parent, children in decoder.tree.items():
                for child in children:
                    label_first(child, labels[child], f"{labels[child]} ({labels[parent]})")
        else:
            for pos, idx in enumerate(decoder.circle):
                day = DAYS[pos % len(DAYS)]
                descriptions[idx] = (day, f"mentions of {day} and other days of the week")
                keyword[idx] = day
            for (parent, children), (topic_name, names) in zip(decoder.families.items(), FAMILY_TOPICS):
                descriptions[parent] = (topic_name,)
                keyword[parent] = topic_name
                for child, name in zip(children, names):
                    descriptions[child] = (f"{name} ({topic_name})",)
                    keyword[child] = name
        max_act[status == 1] = 0.0
        v2_null[planted] = False  # labelled features keep their label first in every order
        offset_indices = [int(i) for i in np.flatnonzero(present & (status == 0))]
        return _SaeData(spec, decoder, present, status, max_act, descriptions, expl_scores, expl_kind,
                        v2_null, keyword, offset_indices)

    def vector_data(self, model_id: str, source_id: str) -> _VectorData | None:
        key = (model_id, source_id)
        data = self._vec.get(key)
        if data is not None:
            return data
        spec = self._specs.get(key)
        if spec is None or spec.kind != "vector":
            return None
        with self._lock:
            if key not in self._vec:
                idx: set[int] = set()
                k = 0
                while len(idx) < spec.n_vectors:  # Neuronpedia files a vector under a random 8-9 digit index
                    idx.add(90_000_000 + int(stable_unit(b"vec", self.config.seed, model_id, source_id, k) * 9e7))
                    k += 1
                labels = ("happy", "formal tone", "talk like a pirate", "French", "golden gate bridge", "sad")
                indices = sorted(idx)
                vectors, lab, strength = {}, {}, {}
                for j, i in enumerate(indices):
                    r = _rng(*self._seed("vector", model_id, source_id, i))
                    vectors[i] = np.round(r.standard_normal(spec.d_in) / np.sqrt(spec.d_in), 5)
                    lab[i] = labels[j % len(labels)]
                    strength[i] = float((4, 8, 10, 20)[j % 4])
                self._vec[key] = _VectorData(spec, indices, vectors, lab, strength)
            return self._vec[key]

    def decoder(self, model_id: str, source_id: str) -> PlantedSAE | SyntheticDecoder:
        """The decoder behind a source's `topkCosSim*` (KeyError if no such SAE): the planted
        SAE of `saes.plant` (labels, days, months, tree, ...), or for a source too small to hold
        it the foundation's `make_synthetic` decoder. Both expose `.weights`."""
        data = self.sae_data(model_id, source_id)
        if data is None:
            raise KeyError(f"{model_id}/{source_id} is not an SAE source")
        return data.decoder

    def topk(self, model_id: str, source_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(indices int64, cosines float32) of shape (d_sae, k): self first, NaN ranked last."""
        data = self.sae_data(model_id, source_id)
        if data is None:
            raise KeyError(f"{model_id}/{source_id} is not an SAE source")
        blocks = [self._topk_block(data, b) for b in range(0, data.spec.d_sae, _TOPK_BLOCK)]
        return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])

    def _topk_block(self, data: _SaeData, start: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of one block of rows, computed on first use (a 24k source costs seconds in all)."""
        got = data.topk_blocks.get(start)
        if got is None:
            with self._lock:
                got = data.topk_blocks.get(start)
                if got is None:
                    if data.normalised is None:
                        data.normalised = _normalise(data.decoder.weights)
                    wn, bad = data.normalised
                    got = _topk_rows(wn, bad, start, min(start + _TOPK_BLOCK, data.spec.d_sae), self.config.top_k)
                    data.topk_blocks[start] = got
        return got

    def _topk_row(self, data: _SaeData, index: int) -> tuple[np.ndarray, np.ndarray]:
        start = index - index % _TOPK_BLOCK
        idx, vals = self._topk_block(data, start)
        return idx[index - start], vals[index - start]

    # ---------------------------------------------------------------- catalog queries

    def feature_indices(self, model_id: str, source_id: str) -> list[int]:
        """Every index that exists (not a hole), ascending; vectors' indices for vector sources."""
        sae = self.sae_data(model_id, source_id)
        if sae is not None:
            return [int(i) for i in np.flatnonzero(sae.present)]
        vec = self.vector_data(model_id, source_id)
        return list(vec.indices) if vec else []

    def feature_count(self, model_id: str, source_id: str) -> int:
        return len(self.feature_indices(model_id, source_id))

    def is_hole(self, model_id: str, source_id: str, index: int) -> bool:
        sae = self.sae_data(model_id, source_id)
        return sae is not None and 0 <= index < sae.spec.d_sae and not bool(sae.present[index])

    def offset_indices(self, model_id: str, source_id: str) -> list[int]:
        """Indices POST /api/features-offset pages through (maxActApprox > 0), natural order."""
        sae = self.sae_data(model_id, source_id)
        return list(sae.offset_indices) if sae else []

    def vector_indices(self, model_id: str, source_id: str) -> list[int]:
        vec = self.vector_data(model_id, source_id)
        return list(vec.indices) if vec else []

    def exists(self, model_id: str, source_id: str, index: int) -> bool:
        sae = self.sae_data(model_id, source_id)
        if sae is not None:
            return 0 <= index < sae.spec.d_sae and bool(sae.present[index])
        vec = self.vector_data(model_id, source_id)
        return vec is not None and index in vec.vectors
