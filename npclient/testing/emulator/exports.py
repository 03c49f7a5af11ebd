"""Write the emulator's SAE sources as a Neuronpedia bulk-export tree.

The layout is the public bucket's (`neuronpedia-datasets`, prefix `v1/`)::

    v1/{modelId}/{source}/model.jsonl, release.jsonl, source.jsonl, sourceset.jsonl
    v1/{modelId}/{source}/features/batch-N.jsonl.gz       text order of index
    v1/{modelId}/{source}/activations/batch-N.jsonl.gz    numeric range N*bs .. N*bs+bs-1
    v1/{modelId}/{source}/explanations/batch-N.jsonl.gz   text order of index, bs explanations
    v1/{modelId}/headvis/..., v1/{modelId}/jlens/...      not sources (decoys)

Every value is taken from what the emulator's API serves (`EmulatorState.feature`,
`EmulatorState.explanations`), so a mirror filled from the export must agree with one
filled through the API on every field both carry. Holes are absent from every file. The
output is a pure function of (state config, sources, quirks): gzip is written with
mtime 0, so two exports are byte-identical.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import orjson

from .config import SourceSpec
from .faults import stable_unit
from .state import CREATOR_ID, EmulatorState

__all__ = [
    "ExportQuirks",
    "write_export",
    "export_prefix",
    "FEATURE_DROP_FIELDS",
    "ACTIVATION_FIELDS",
    "ACTIVATION_OPTIONAL_FIELDS",
    "EXPLANATION_FIELDS",
    "EMBEDDING_DIM",
]

EMBEDDING_DIM = 256
# Relations and nested lists of the GET payload that a features record leaves out.
FEATURE_DROP_FIELDS: tuple[str, ...] = (
    "model", "lists", "creator", "source", "sourceSet", "comments", "activations", "explanations",
)
ACTIVATION_FIELDS: tuple[str, ...] = (
    "id", "modelId", "layer", "index", "creatorId", "dataSource", "tokens", "values",
    "maxValue", "minValue", "maxValueTokenIndex", "dfaValues", "dfaMaxValue", "dfaTargetIndex",
    "binContains", "binMin", "binMax",
)
ACTIVATION_OPTIONAL_FIELDS: tuple[str, ...] = (
    "createdAt", "dataIndex", "lossValues", "logitContributions", "qualifyingTokenIndex",
)
EXPLANATION_FIELDS: tuple[str, ...] = (
    "id", "modelId", "layer", "index", "authorId", "description", "embedding", "typeName",
    "explanationModelName", "umap_x", "umap_y", "umap_cluster", "umap_log_feature_sparsity",
)
# Columns of the explanation row that the export also carries when `extra_fields` is on.
_EXPLANATION_EXTRA = ("triggeredByUserId", "notes", "scoreV1", "scoreV2", "createdAt")
_EXPORT_VERSION = "2025-02"

SourceRef = Union[SourceSpec, tuple[str, str], str]


@dataclass(frozen=True)
class ExportQuirks:
    """The irregularities of the real exports (see docs/neuronpedia.md, "Bulk exports").

    - `index_as_int_fraction`: share of records (picked by stable hash) whose `index` is an
      int instead of a string (0 = never).
    - `embedding_style`: explanations' `embedding` as a JSON list, a string `"[...]"`,
      absent, or `"mixed"` (each explanation picks one by hash: ~50% list, 35% string,
      15% absent).
    - `explanations_folder`: e.g. `"explanations-gpt-4o-mini"`, as some sources use.
    - `extra_fields`: unknown keys on records (`_exportVersion`, features' `decoderNorm`,
      activations' `topLogitToken`, explanations' DB columns `scoreV2`, `createdAt`, ...).
    - `non_source_folders`: also write `v1/{model}/headvis/...` and `v1/{model}/jlens/...`
      (not sources; `jlens/features/batch-0.jsonl.gz` looks like one on purpose).
    - `batch_size`: records a batch (real: 1024; some sources were converted from 128).
    - `activation_optional`: whether activation records carry `createdAt, dataIndex,
      lossValues, logitContributions, qualifyingTokenIndex`: `"all"`, `"none"`, or
      `"mixed"` (alternating by batch file, so any source with two or more batches has both).
    """

    index_as_int_fraction: float = 0.0
    embedding_style: Literal["list", "string", "absent", "mixed"] = "mixed"
    explanations_folder: str = "explanations"
    extra_fields: bool = True
    non_source_folders: bool = True
    batch_size: int = 1024
    activation_optional: Literal["all", "none", "mixed"] = "mixed"

    def __post_init__(self) -> None:
        if not 0.0 <= self.index_as_int_fraction <= 1.0:
            raise ValueError("index_as_int_fraction must be in [0, 1]")
        if self.embedding_style not in ("list", "string", "absent", "mixed"):
            raise ValueError(f"unknown embedding_style {self.embedding_style!r}")
        if self.activation_optional not in ("all", "none", "mixed"):
            raise ValueError(f"unknown activation_optional {self.activation_optional!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        folder = self.explanations_folder
        if not folder.startswith("explanations") or "/" in folder or "\\" in folder or folder in (".", ".."):
            raise ValueError(f"explanations_folder must be 'explanations' or 'explanations-<model>', got {folder!r}")


def export_prefix(model_id: str, source_id: str) -> str:
    """Key prefix of one source in the bucket: `v1/{model}/{source}/`."""
    return f"v1/{model_id}/{source_id}/"


# --------------------------------------------------------------------------- helpers


def _jsonl(records: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def _write(path: Path, data: bytes, written: list[Path]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    written.append(path)


def _write_gz(path: Path, records: Sequence[dict[str, Any]], written: list[Path], level: int) -> None:
    _write(path, gzip.compress(_jsonl(records), compresslevel=level, mtime=0), written)


def _embedding(explanation_id: str) -> list[float]:
    """A stable unit vector of EMBEDDING_DIM floats for an explanation."""
    seed = int.from_bytes(hashlib.blake2b(b"emb\x00" + explanation_id.encode(), digest_size=8).digest(), "little")
    v = np.random.default_rng(seed).standard_normal(EMBEDDING_DIM)
    v /= np.linalg.norm(v)
    out: list[float] = np.round(v, 6).tolist()
    return out


def _resolve_sources(state: EmulatorState, sources: Iterable[SourceRef] | None) -> list[SourceSpec]:
    if sources is None:
        return [s for s in state.sources() if s.kind == "sae"]
    out: list[SourceSpec] = []
    for ref in sources:
        if isinstance(ref, SourceSpec):
            m, s = ref.model_id, ref.source_id
        elif isinstance(ref, str):
            if ref.count("/") != 1:
                raise ValueError(f"expected 'model/source', got {ref!r}")
            m, s = ref.split("/")
        else:
            m, s = ref
        spec = state.source(m, s)
        if spec is None:
            raise KeyError(f"unknown source {m}/{s}")
        if spec.kind == "sae" and spec not in out:
            out.append(spec)
    return out


class _Exporter:
    def __init__(self, state: EmulatorState, root: Path, quirks: ExportQuirks, compresslevel: int) -> None:
        self.level = compresslevel
        self.state = state
        self.root = Path(root)
        self.q = quirks
        self.seed = state.config.seed
        self.written: list[Path] = []

    # ---------------------------------------------------------------- quirks

    def _index(self, kind: str, m: str, s: str, index: int, *extra: Any) -> str | int:
        frac = self.q.index_as_int_fraction
        if frac > 0 and stable_unit(b"export-int-index", self.seed, kind, m, s, index, *extra) < frac:
            return index
        return str(index)

    def _embedding_style(self, eid: str) -> str:
        style = self.q.embedding_style
        if style != "mixed":
            return style
        u = stable_unit(b"export-embedding", self.seed, eid)
        return "list" if u < 0.5 else "string" if u < 0.85 else "absent"

    def _activation_optional(self, m: str, s: str, batch: int) -> bool:
        mode = self.q.activation_optional
        if mode != "mixed":
            return mode == "all"
        flip = int(stable_unit(b"export-act-optional", self.seed, m, s) * 2)
        return (batch + flip) % 2 == 0

    # ---------------------------------------------------------------- rows

    def _meta_rows(self, spec: SourceSpec) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
        m = spec.model_id
        model = next(r for r in self.state.models_list() if r["id"] == m)
        model.pop("sourceSets", None)
        sset = self.state.source_set(m, spec.set_name)
        assert sset is not None
        sources = sset.pop("sources")
        source = next(r for r in sources if r["id"] == spec.source_id)
        release_name = sset.get("releaseName") or source.get("saelensRelease") or f"{m}-{spec.set_name}"
        release = {
            "name": release_name,
            "description": f"Synthetic sparse autoencoders for {model['displayName']} ({spec.set_name})",
            "descriptionShort": f"{model['displayNameShort']} {spec.set_name}",
            "urls": [],
            "isNewUi": False,
            "featured": False,
            "creatorEmail": None,
            "creatorName": sset.get("creatorName", "synthetic"),
            "creatorNameShort": sset.get("creatorName", "synthetic"),
            "creatorId": CREATOR_ID,
            "defaultSourceSetName": spec.set_name,
            "defaultSourceId": spec.source_id,
            "defaultUmapSourceIds": [],
            "visibility": "PUBLIC",
            "createdAt": sset["createdAt"],
        }
        return model, release, source, sset

    def _feature_record(self, full: dict[str, Any], m: str, s: str, index: int) -> dict[str, Any]:
        rec = {k: v for k, v in full.items() if k not in FEATURE_DROP_FIELDS}
        rec["index"] = self._index("feature", m, s, index)
        if self.q.extra_fields:
            w = self.state.decoder(m, s).weights[index]
            rec["decoderNorm"] = round(float(np.linalg.norm(w)), 6)
            rec["_exportVersion"] = _EXPORT_VERSION
        return rec

    def _activation_record(self, act: dict[str, Any], m: str, s: str, index: int, optional: bool) -> dict[str, Any]:
        rec = {k: act[k] for k in ACTIVATION_FIELDS}
        if optional:
            rec.update((k, act[k]) for k in ACTIVATION_OPTIONAL_FIELDS)
        rec["index"] = self._index("activation", m, s, index, act["id"])
        if self.q.extra_fields:
            rec["topLogitToken"] = None
            rec["_exportVersion"] = _EXPORT_VERSION
        return rec

    def _explanation_record(self, e: dict[str, Any], m: str, s: str, index: int) -> dict[str, Any]:
        rec: dict[str, Any] = {}
        style = self._embedding_style(e["id"])
        for k in EXPLANATION_FIELDS:
            if k == "embedding":
                if style == "list":
                    rec[k] = _embedding(e["id"])
                elif style == "string":
                    rec[k] = orjson.dumps(_embedding(e["id"])).decode()
                continue
            rec[k] = e[k]
        rec["index"] = self._index("explanation", m, s, index, e["id"])
        if self.q.extra_fields:
            rec.update((k, e[k]) for k in _EXPLANATION_EXTRA)
            rec["_exportVersion"] = _EXPORT_VERSION
        return rec

    # ---------------------------------------------------------------- writers

    def source(self, spec: SourceSpec) -> None:
        m, s = spec.model_id, spec.source_id
        base = self.root / "v1" / m / s
        bs = self.q.batch_size
        for name, row in zip(("model", "release", "source", "sourceset"), self._meta_rows(spec)):
            _write(base / f"{name}.jsonl", _jsonl([row]), self.written)

        indices = self.state.feature_indices(m, s)  # holes excluded, ascending
        # Pass 1, numeric order: activation batches; keep the feature rows for pass 2.
        features: dict[int, dict[str, Any]] = {}
        by_range: dict[int, list[int]] = {}
        for i in indices:
            by_range.setdefault(i // bs, []).append(i)
        for batch in sorted(by_range):
            optional = self._activation_optional(m, s, batch)
            records: list[dict[str, Any]] = []
            for i in by_range[batch]:
                full = self.state.feature(m, s, i)
                assert full is not None
                records.extend(self._activation_record(a, m, s, i, optional) for a in full["activations"])
                features[i] = self._feature_record(full, m, s, i)
            if records:  # a range with no activations at all has no file
                _write_gz(base / "activations" / f"batch-{batch}.jsonl.gz", records, self.written, self.level)

        # Pass 2, text order of index: feature and explanation batches.
        text_order = sorted(indices, key=str)
        for n, start in enumerate(range(0, len(text_order), bs)):
            chunk = [features[i] for i in text_order[start : start + bs]]
            _write_gz(base / "features" / f"batch-{n}.jsonl.gz", chunk, self.written, self.level)
        explanations = [
            self._explanation_record(e, m, s, i) for i in text_order for e in self.state.explanations(m, s, i)
        ]
        for n, start in enumerate(range(0, len(explanations), bs)):
            _write_gz(base / self.q.explanations_folder / f"batch-{n}.jsonl.gz",
                      explanations[start : start + bs], self.written, self.level)

    def decoys(self, model_id: str) -> None:
        """headvis/ and jlens/ folders: under a model, not sources."""
        base = self.root / "v1" / model_id
        rng = np.random.default_rng(int.from_bytes(hashlib.blake2b(
            f"decoy\x00{self.seed}\x00{model_id}".encode(), digest_size=8).digest(), "little"))
        heads = [
            {"modelId": model_id, "layer": layer, "head": head,
             "tokens": [" the", " cat", " sat"], "pattern": np.round(rng.random(9), 4).tolist()}
            for layer in range(2) for head in range(3)
        ]
        _write_gz(base / "headvis" / "batch-0.jsonl.gz", heads, self.written, self.level)
        lens = [
            {"modelId": model_id, "layer": "jlens", "index": str(i), "lens": np.round(rng.random(4), 4).tolist()}
            for i in range(5)
        ]
        _write_gz(base / "jlens" / "features" / "batch-0.jsonl.gz", lens, self.written, self.level)
        _write(base / "jlens" / "config.json", orjson.dumps({"modelId": model_id, "kind": "jlens"}) + b"\n",
               self.written)


def write_export(
    state: EmulatorState,
    root: Path,
    *,
    sources: Iterable[SourceRef] | None = None,
    quirks: ExportQuirks = ExportQuirks(),
    compresslevel: int = 1,
) -> list[Path]:
    """Write the SAE sources of `state` under `root/v1/...`; return the files written, sorted.

    `sources`: SourceSpecs, `(model, source)` pairs or `"model/source"` strings (default:
    every source of the state); vector sources are skipped, unknown ones raise KeyError.
    Existing files at the same paths are overwritten; nothing else under `root` is touched.
    `compresslevel` is gzip's (1 keeps big exports fast; the bytes are deterministic either way).
    """
    if not 0 <= compresslevel <= 9:
        raise ValueError("compresslevel must be in 0..9")
    exporter = _Exporter(state, Path(root), quirks, compresslevel)
    specs = _resolve_sources(state, sources)
    for spec in specs:
        exporter.source(spec)
    if quirks.non_source_folders:
        for model_id in dict.fromkeys(s.model_id for s in specs):
            exporter.decoys(model_id)
    return sorted(exporter.written)
