"""The emulator's truth: a seeded catalog and the exact payloads the routes serve.

Every payload is a pure function of (config, model, source, index) (blake2b-derived numpy
seeds, never Python's `hash`), so tests can ask the state what the server *should* have
said and compare bytes. Per-source metadata (holes, dead features, explanations, decoder
and its cosine top-k) is built once, vectorised; per-feature payloads are built on demand
and kept serialised in an LRU.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import orjson

from ..saes import PlantedSAE, can_plant, plant
from ..synthetic import SyntheticDecoder, make_synthetic
from .config import EmulatorConfig, FaultConfig, RateLimitConfig, SourceSpec
from .faults import FaultInjector, stable_unit
from .ratelimit import RateLimiter
from ... import wire
from ...wire import explanation_order_key

__all__ = ["EmulatorState", "RequestRecord", "RequestLog", "cosine_topk", "SEARCH_PAGE", "OFFSET_PAGE", "words"]

SEARCH_PAGE = wire.SEARCH_PAGE
OFFSET_PAGE = 25
CREATOR_ID = "clsxqq2xd0000vvp2k5itlhqj"  # the account public activations are filed under
CREATOR_NAME = "bot"
VECTOR_USER = {"id": "clv7x2hdl0001gq8u3m0rlk2b", "name": "synthetic-user"}

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# Explanations of the fallback decoder (`make_synthetic`, sources too small for `saes.plant`).
FAMILY_TOPICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sports", ("football", "basketball", "tennis", "golf")),
    ("colors", ("red", "green", "blue", "yellow")),
    ("animals", ("dogs", "cats", "birds", "horses")),
)
TOPICS = (
    "legal terminology", "dates and years", "French words", "closing parentheses",
    "city names", "sadness and grief", "medical terms", "python code", "chemical elements",
    "numbers in lists", "the word 'the'", "questions", "music genres", "programming errors",
    "financial markets", "weather conditions", "family members", "body parts", "cooking recipes",
    "religious texts", "military ranks", "space exploration", "video games", "social media",
    "academic citations", "HTML tags", "mathematical operators", "quotation marks",
    "first names", "last names", "countries in Europe", "American politics", "emotions of anger",
    "computer hardware", "plural nouns", "past tense verbs", "comparative adjectives",
    "negation", "uncertainty", "time durations", "measurement units", "currency symbols",
    "web URLs", "email addresses", "Japanese text", "emoji", "line breaks", "indentation",
    "sentence endings", "the start of a document", "names of rivers", "car brands",
    "chess moves", "poetry", "movie titles", "scientific units", "genetics", "ancient history",
    "superheroes", "coffee and tea", "travel destinations", "legal contracts", "sports scores",
)
TEMPLATES = (
    "{t}", "references to {t}", "mentions of {t}", "{t} in text", "words related to {t}",
    "tokens about {t}", "{t} and related concepts",
)
EXPLAINERS = ("gpt-4o-mini", "claude-3-5-haiku-20241022", "gpt-3.5-turbo", "gemini-2.0-flash")
EXPLANATION_TYPES = ("oai_token-act-pair", "np_max-act-logits", "eleuther_acts_top20")
SCORE_TYPES = ("recall_alt", "eleuther_fuzz", "eleuther_detection")

_WORDS = (
    "the of and to in is was for that on with as by at from his her it an be are this which "
    "or had not but have were one all their they been has who more new would when there she "
    "time will can about year into only other people after some them than first also two over "
    "could such these its most made between state world under city known during while where "
    "school house water government market music family system power night street money story "
    "war game team book church court report police party field history office market river "
    "north south east west black white small large early later public local second third "
    "because before through without against however although therefore perhaps never always"
).split()
_PIECES = (
    "ing", "ed", "ly", "er", "s", "tion", "ment", "'s", "n't", "ness", "able", "ist", "un", "re",
    ".", ",", "!", "?", ":", ";", " (", ")", "\n", "\n\n", " \"", "\"", " -", " 2", "0", "1", "19",
    " 2024", "%", " $", " 100", "://", "www", ".com", " {", "}", " =", "()", "_", "  ", "    ",
)
_SPECIAL = (
    "東京", "的", "日本語", "한국어", "中", "🙂", "🚀", "👍🏽", "👨‍👩‍👧", "e\u0301", "n\u0303o",
    "\u200b", "\x00", "\t", "\x1b[0m", "\x1b", "\u2028", "\u2029", "\ufeff", "\ufffd",
    "<|endoftext|>", "\\", "\\n", "\"q\"", "\r\n", "\x7f", "Ω", "ÿ", "\u00a0", "\U0001d400",
    "\x01\x02", "</s>", "\u202e", "Ё", "ß", "ﬁ",
)
_COMMON = np.array(
    [" " + w for w in _WORDS] + [w.capitalize() for w in _WORDS[:60]] + [" " + w.capitalize() for w in _WORDS[:60]]
    + list(_PIECES),
    dtype=object,
)
_SPECIAL_ARR = np.array(_SPECIAL, dtype=object)
_SPECIAL_RATE = 0.012
_EPOCH = datetime(2024, 3, 1, tzinfo=timezone.utc)
_N_HIST = 50
_TOPK_BLOCK = 512
_FREQ_X = np.linspace(-6.0, -1.0, _N_HIST)
_LOGIT_X = np.linspace(-0.8, 0.8, _N_HIST)


# --------------------------------------------------------------------------- helpers


def _digest(*parts: Any) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        b = p if isinstance(p, bytes) else str(p).encode()
        h.update(len(b).to_bytes(4, "little"))
        h.update(b)
    return h.digest()


def _rng(*parts: Any) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int.from_bytes(_digest(*parts), "little")))


def _cuid(*parts: Any) -> str:
    """A cuid-looking id ('cl' + 23 lower-case hex chars), stable for its inputs."""
    return "cl" + _digest("id", *parts).hex()[:23]


def _iso(*parts: Any) -> str:
    """A stable ISO-8601 timestamp with milliseconds and 'Z', as Prisma renders it."""
    ms = int(stable_unit(b"ts", *parts) * 400 * 86400 * 1000)
    t = _EPOCH + timedelta(milliseconds=ms)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _floats(a: np.ndarray, decimals: int = 4) -> list[float]:
    """Round and convert. NaN/Inf stay as they are in the database row: the API renders them
    `null` (JSON.stringify; orjson does the same) and the bulk exports bare `NaN`/`Infinity`
    (Python's json.dumps defaults, utils/neuronpedia-utils/neuronpedia_utils/export-data.py)."""
    out: list[float] = np.round(np.asarray(a, dtype=np.float64), decimals).tolist()
    return out


words = wire.words


# --------------------------------------------------------------------------- request log



@dataclass(slots=True)
class RequestRecord:
    """One request as the emulator saw it (mutable only while it is in flight)."""

    t: float  # time.monotonic() at arrival
    method: str
    path: str
    query: str
    body: bytes
    json: Any
    client: str
    status: int | None = None  # None: no status line was sent (e.g. reset)
    fault: str | None = None
    limited: bool = False
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "t": self.t, "method": self.method, "path": self.path, "query": self.query,
            "body": self.body.decode("utf-8", "replace"), "json": self.json, "client": self.client,
            "status": self.status, "fault": self.fault, "limited": self.limited, "done": self.done,
        }


class RequestLog:
    """Thread-safe append-only log of every /api request."""

    def __init__(self) -> None:
        self._items: list[RequestRecord] = []
        self._lock = threading.Lock()

    def add(self, record: RequestRecord) -> RequestRecord:
        with self._lock:
            self._items.append(record)
        return record

    def snapshot(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def matching(self, path_prefix: str = "", method: str | None = None) -> list[RequestRecord]:
        return [
            r for r in self.snapshot()
            if r.path.startswith(path_prefix) and (method is None or r.method == method.upper())
        ]


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


@dataclass(frozen=True)
class _ModelInfo:
    display: str
    short: str
    layers: int
    neurons_per_layer: int
    hf: str


_KNOWN_MODELS = {
    "gpt2-small": _ModelInfo("GPT2-Small", "GPT2-SM", 12, 3072, "openai-community/gpt2"),
    "gemma-2-2b": _ModelInfo("Gemma 2 2B", "Gemma2-2B", 26, 9216, "google/gemma-2-2b"),
    "llama3.1-8b": _ModelInfo("Llama 3.1 8B", "Llama3.1-8B", 32, 14336, "meta-llama/Llama-3.1-8B"),
}


@dataclass
class _Runtime:
    """Settings that the control routes may change while the server runs."""

    latency_s: float
    faults: FaultInjector
    limiter: RateLimiter | None
    connection_closer: Any = None  # set by EmulatorServer: (client, hard) -> bool
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- state


class EmulatorState:
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

    def sources(self) -> list[SourceSpec]:
        return list(self.config.sources)

    def source(self, model_id: str, source_id: str) -> SourceSpec | None:
        return self._specs.get((model_id, source_id))

    def model_ids(self) -> list[str]:
        return list(dict.fromkeys(s.model_id for s in self.config.sources))

    # Catalog rows carry the columns of prisma/schema.prisma's Model, Source, SourceSet and
    # SourceRelease (apps/webapp/prisma/schema.prisma), in that order.

    def model_row(self, model_id: str) -> dict[str, Any]:
        """The Model row (every scalar column), as GET /api/feature's `model` relation has it."""
        info = _KNOWN_MODELS.get(model_id) or _ModelInfo(model_id, model_id, 12, 3072, model_id)
        specs = [s for s in self.config.sources if s.model_id == model_id]
        first_sae = next((s for s in specs if s.kind == "sae"), specs[0])
        return {
            "id": model_id,
            "displayNameShort": info.short,
            "displayName": info.display,
            "creatorId": CREATOR_ID,
            "tlensId": model_id,
            "openRouterId": None,
            "dimension": specs[0].d_in,
            "thinking": False,
            "visibility": "PUBLIC",
            "defaultSourceSetName": first_sae.set_name,
            "defaultSourceId": first_sae.source_id,
            "defaultGraphSourceSetName": None,
            "inferenceEnabled": False,
            "instruct": False,
            "layers": info.layers,
            "neuronsPerLayer": info.neurons_per_layer,
            "createdAt": _iso("model", model_id),
            "owner": info.hf.split("/")[0],
            "updatedAt": _iso("model-u", model_id),
            "website": f"https://huggingface.co/{info.hf}",
        }

    _model_row = model_row

    def _release(self, spec: SourceSpec) -> tuple[str, str, str]:
        """(saelens release, sae id, HF repo) in the style of the real registry."""
        if spec.set_name.startswith("gemmascope"):
            width = spec.set_name.rsplit("-", 1)[-1]
            return ("gemma-scope-2b-pt-res-canonical", f"layer_{spec.layer_num}/width_{width}/canonical",
                    "google/gemma-scope-2b-pt-res")
        return f"{spec.model_id}-{spec.set_name}", spec.hook, f"synthetic/{spec.model_id}-{spec.set_name}"

    def saelens_config(self, spec: SourceSpec) -> dict[str, Any] | None:
        """The sae_lens config a source carries when its spec says it has one as an object."""
        if spec.kind != "sae":
            return None
        release, sae_id, _ = self._release(spec)
        np_id = f"{spec.model_id}/{spec.source_id}"
        return {
            "architecture": "standard",
            "d_in": spec.d_in,
            "d_sae": spec.d_sae,
            "dtype": "float32",
            "model_name": spec.model_id,
            "hook_name": spec.hook,
            "hook_layer": spec.layer_num,
            "hook_head_index": None,
            "activation_fn_str": "relu",
            "apply_b_dec_to_input": True,
            "finetuning_scaling_factor": False,
            "context_size": 128,
            "prepend_bos": True,
            "normalize_activations": "none",
            "dataset_path": "Skylion007/openwebtext",
            "neuronpedia_id": np_id,
            "metadata": {"neuronpedia_id": np_id, "sae_lens_release": release, "sae_lens_id": sae_id},
        }

    def source_row(self, spec: SourceSpec) -> dict[str, Any]:
        """The Source row. `saelensConfig` is nullable (`Json?`) and the upload-eval route stores
        the uploaded config as a JSON *string* (app/api/admin/upload-eval/route.ts): the spec's
        `saelens_config` picks object, null or string."""
        release, sae_id, hf_repo = self._release(spec)
        np_id = f"{spec.model_id}/{spec.source_id}"
        cfg: Any = self.saelens_config(spec)
        if spec.saelens_config == "null":
            cfg = None
        elif spec.saelens_config == "string" and cfg is not None:
            cfg = orjson.dumps(cfg).decode()
        sae = spec.kind == "sae"
        return {
            "id": spec.source_id,
            "modelId": spec.model_id,
            "hasDashboards": sae,
            "inferenceEnabled": False,
            "saelensConfig": cfg,
            "saelensRelease": release if sae else None,
            "saelensSaeId": sae_id if sae else None,
            "hfRepoId": hf_repo if sae else None,
            "hfFolderId": sae_id if sae else None,
            "visibility": "PUBLIC",
            "defaultOfModelId": None,
            "setName": spec.set_name,
            "creatorId": CREATOR_ID,
            "hasUmap": sae,
            "hasUmapLogSparsity": sae,
            "hasUmapClusters": False,
            "num_prompts": 24576 if sae else None,
            "num_tokens_in_prompt": 128 if sae else None,
            "dataset": "Skylion007/openwebtext" if sae else None,
            "notes": None,
            "cosSimMatchModelId": None,
            "cosSimMatchSourceId": None,
            "createdAt": _iso("source", np_id),
        }

    _source_row = source_row

    def set_row(self, model_id: str, set_name: str) -> dict[str, Any]:
        """The SourceSet row (every scalar column)."""
        specs = [s for s in self.config.sources if s.model_id == model_id and s.set_name == set_name]
        release = self._release(specs[0])[0]
        is_vec = specs[0].kind == "vector"
        return {
            "modelId": model_id,
            "name": set_name,
            "hasDashboards": not is_vec,
            "allowInferenceSearch": True,
            "visibility": "PUBLIC",
            "description": "Steering vectors" if is_vec else f"Residual stream SAEs ({set_name})",
            "type": "STEER" if is_vec else "SAE",
            "creatorName": "synthetic",
            "urls": [],
            "creatorEmail": None,
            "creatorId": CREATOR_ID,
            "releaseName": None if is_vec else release,
            "hasGraphs": False,
            "graphEnabled": False,
            "similarityMatrixEnabled": False,
            "defaultOfModelId": None,
            "defaultGraphModelId": None,
            "defaultRange": 1,
            "defaultShowBreaks": True,
            "showDfa": False,
            "showCorrelated": False,
            "showHeadAttribution": False,
            "showUmap": not is_vec,
            "createdAt": _iso("set", model_id, set_name),
        }

    _set_row = set_row

    def release_row(self, model_id: str, set_name: str) -> dict[str, Any] | None:
        """The SourceRelease a set belongs to (a set has at most one), or None."""
        sset = self.set_row(model_id, set_name)
        name = sset["releaseName"]
        if name is None:
            return None
        model = self.model_row(model_id)
        return {
            "name": name,
            "visibility": "PUBLIC",
            "isNewUi": False,
            "featured": False,
            "description": f"Synthetic sparse autoencoders for {model['displayName']} ({set_name})",
            "descriptionShort": f"{model['displayNameShort']} {set_name}",
            "urls": [],
            "creatorEmail": None,
            "creatorName": sset["creatorName"],
            "creatorNameShort": sset["creatorName"],
            "creatorId": CREATOR_ID,
            "defaultSourceSetName": set_name,
            "defaultSourceId": next(s.source_id for s in self.config.sources
                                    if s.model_id == model_id and s.set_name == set_name),
            "defaultUmapSourceIds": [],
            "createdAt": sset["createdAt"],
        }

    def set_names(self, model_id: str) -> list[str]:
        return list(dict.fromkeys(s.set_name for s in self.config.sources if s.model_id == model_id))

    def can_access(self, model_id: str, source_id: str) -> bool:
        """lib/db/userCanAccess.ts `assertUserCanAccessModelAndSource`: the model and the source
        *set* derived from the layer must exist; the source row itself is not checked."""
        return model_id in self.model_ids() and wire.set_name_of(source_id) in self.set_names(model_id)

    def models_list(self) -> list[dict[str, Any]]:
        """Body of POST /api/model/list (lib/db/model.ts `getGlobalModels`): every model row with
        its sets and sources that have dashboards; sources carry only the few columns that
        query selects (no saelensConfig, saelensRelease, saelensSaeId, hfRepoId ...)."""
        out = []
        for model_id in self.model_ids():
            row = self.model_row(model_id)
            sets = []
            for name in self.set_names(model_id):
                sset = self.set_row(model_id, name)
                if not sset["hasDashboards"]:
                    continue
                sset["sources"] = [
                    {k: src[k] for k in wire.MODEL_LIST_SOURCE_FIELDS}
                    for src in (self.source_row(s) for s in self.config.sources
                                if s.model_id == model_id and s.set_name == name)
                    if src["hasDashboards"]
                ]
                sets.append(sset)
            row["sourceSets"] = sets
            out.append(row)
        return out

    def source_set(self, model_id: str, set_name: str) -> dict[str, Any] | None:
        """Body of GET /api/source-set/{model}/{set} (lib/db/source.ts `getSourceSet`): the set
        row with every column of its sources, its release (one object or null) and its model;
        None (served as `null` with 200) for an unknown set."""
        specs = [s for s in self.config.sources if s.model_id == model_id and s.set_name == set_name]
        if not specs:
            return None
        row = self.set_row(model_id, set_name)
        row["sources"] = [self.source_row(s) for s in specs]
        row["releases"] = self.release_row(model_id, set_name)
        row["model"] = self.model_row(model_id)
        return row

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

    # ---------------------------------------------------------------- features

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


def _normalise(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows (float32) and a mask of rows whose cosine is undefined (zero or non-finite)."""
    w = np.asarray(weights, dtype=np.float32)
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        wn = w / norms
    bad = ~np.isfinite(wn).all(axis=1)
    wn[bad] = np.nan
    return wn, bad


def _topk_rows(wn: np.ndarray, bad: np.ndarray, start: int, stop: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k neighbours of rows start..stop-1 (see `cosine_topk`)."""
    n = wn.shape[0]
    k = min(k, n)
    with np.errstate(invalid="ignore"):
        sims = wn[start:stop] @ wn.T  # NaN wherever either row is undefined
    rows = np.arange(start, stop)
    key = np.where(np.isnan(sims), -np.inf, sims)
    key[rows - start, rows] = np.inf
    part = np.argpartition(-key, k - 1, axis=1)[:, :k]
    pkey = np.take_along_axis(key, part, axis=1)
    chosen = np.take_along_axis(part, np.lexsort((part, -pkey), axis=-1), axis=1)
    # argpartition picks arbitrarily among keys tied with the k-th one: redo those rows
    kth = pkey.min(axis=1)
    for r in np.flatnonzero((key >= kth[:, None]).sum(axis=1) > k):
        cand = np.flatnonzero(key[r] >= kth[r])
        chosen[r] = cand[np.lexsort((cand, -key[r, cand]))[:k]]
    vals = np.take_along_axis(sims, chosen, axis=1).astype(np.float32)
    vals[:, 0] = np.where(bad[rows], np.nan, 1.0)
    return chosen.astype(np.int64), vals


def cosine_topk(weights: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Dense blocked brute force: for each row its k most cosine-similar rows.

    Zero (or NaN) rows have undefined cosine: they rank after every defined value, ties
    broken by index. Position 0 is always the row itself, with 1.0 (NaN for an undefined row).
    """
    wn, bad = _normalise(weights)
    n = wn.shape[0]
    parts = [_topk_rows(wn, bad, st, min(st + block, n), k) for st in range(0, n, block)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
