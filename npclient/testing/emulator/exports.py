"""Write the emulator's SAE sources as a Neuronpedia bulk-export tree, as Neuronpedia's writer does.

The behaviour modelled is that of Neuronpedia's exporter,
`utils/neuronpedia-utils/neuronpedia_utils/export-data.py` (cited below as export-data.py),
whose output is synced to the public bucket (`neuronpedia-datasets`, prefix `v1/`)::

    v1/{modelId}/{source}/model.jsonl, release.jsonl, source.jsonl, sourceset.jsonl,
                          inference_hosts_on_source.jsonl, inference_hosts.jsonl   (plain JSONL)
    v1/{modelId}/{source}/features/batch-N.jsonl.gz       1,024 features, text order of index
    v1/{modelId}/{source}/activations/batch-N.jsonl.gz    indices N*1024 .. min(N*1024+1023, count-1)
    v1/{modelId}/{source}/explanations/batch-N.jsonl.gz   1,024 explanation *rows*, text order of index
    v1/{modelId}/headvis/..., v1/{modelId}/jlens/...      not sources (decoys)

Values come from the emulator's database view (`EmulatorState.feature_db`,
`EmulatorState.explanations`), so NaN/Infinity that the API renders `null` appear here as the
bare `NaN`/`Infinity` tokens of Python's `json.dumps`. Holes are absent from every file. The
output is a pure function of (state config, sources, quirks, compresslevel): gzip is written
with mtime 0 (the real writer's `gzip.compress` stamps the current time), so two exports are
byte-identical.

`ExportQuirks()` is the faithful default; its fields switch on the irregularities seen in
other exports (int indices, list or absent embeddings, `explanations-<model>/` folders,
unknown keys, batches of 128, per-page tie order of explanations).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
import orjson

from ...wire import EXPORT_ACTIVATION_FIELDS, EXPORT_EXPLANATION_FIELDS, EXPORT_FEATURE_FIELDS
from .config import SourceSpec
from .faults import stable_unit
from .seeded import CREATOR_ID
from .state import EmulatorState

__all__ = [
    "ExportQuirks",
    "write_export",
    "export_prefix",
    "exported_explanation_ids",
    "activation_ranges",
    "DEFAULT_CREATOR_ID",
    "GZIP_LEVEL",
    "BATCH_SIZE",
    "FEATURE_FIELDS",
    "FEATURE_DROP_FIELDS",
    "ACTIVATION_FIELDS",
    "ACTIVATION_OPTIONAL_FIELDS",
    "EXPLANATION_FIELDS",
    "EMBEDDING_DIM",
]

EMBEDDING_DIM = 256
#: export-data.py: FEATURES_EXPLANATIONS_BATCH_SIZE = ACTIVATIONS_BATCH_SIZE = 1024
BATCH_SIZE = 1024
#: export-data.py `compress_files`: gzip.compress(..., compresslevel=5)
GZIP_LEVEL = 5
#: export-data.py replaces every creatorId/authorId by the env's DEFAULT_CREATOR_ID; ours is a
#: stable cuid-looking stand-in, distinct from the emulator's own CREATOR_ID so a test sees it.
DEFAULT_CREATOR_ID = "clexp0rtdefau1tcreat0r000"
#: export-data.py PUBLIC_ACTIVATION_USER_IDS holds four accounts; the emulator files every
#: activation under the first of them (state.CREATOR_ID), so the filter keeps them all.
_PUBLIC_ACTIVATION_CREATORS = frozenset({CREATOR_ID})

#: The feature columns export-data.py selects, in its order (wire.EXPORT_FEATURE_FIELDS).
FEATURE_FIELDS: tuple[str, ...] = EXPORT_FEATURE_FIELDS
#: Keys of the GET payload that a features record leaves out (relations, nested lists, and the
#: Neuron columns export-data.py does not select).
FEATURE_DROP_FIELDS: tuple[str, ...] = (
    "model", "lists", "creator", "source", "sourceSet", "comments", "activations", "explanations",
    "createdAt", "umap_x", "umap_y", "umap_cluster", "umap_log_feature_sparsity",
    "correlated_features_indices", "correlated_features_pearson", "correlated_features_l1",
)
ACTIVATION_FIELDS: tuple[str, ...] = EXPORT_ACTIVATION_FIELDS
#: Activation columns some converted exports carry and export-data.py does not select.
ACTIVATION_OPTIONAL_FIELDS: tuple[str, ...] = (
    "createdAt", "dataIndex", "lossValues", "logitContributions", "qualifyingTokenIndex",
)
EXPLANATION_FIELDS: tuple[str, ...] = EXPORT_EXPLANATION_FIELDS
# Columns of the explanation row that the export also carries when `extra_fields` is on.
_EXPLANATION_EXTRA = ("triggeredByUserId", "notes", "scoreV1", "scoreV2", "createdAt")
_EXPORT_VERSION = "2025-02"

SourceRef = Union[SourceSpec, tuple[str, str], str]


@dataclass(frozen=True)
class ExportQuirks:
    """What the export looks like. The defaults are export-data.py's own output; every other
    value is an irregularity seen in real dumps (see docs/neuronpedia.md, "Bulk exports").

    - `index_as_int_fraction`: share of records (picked by stable hash) whose `index` is an
      int instead of a string (0 = never, as export-data.py: `index` is a TEXT column).
    - `embedding_style`: explanations' `embedding`: `"string"` (default: the pgvector column
      reaches psycopg2 as text `"[...]"`, export-data.py registers no adapter), a JSON list,
      absent, or `"mixed"` (each explanation picks one by hash: ~50% list, 35% string, 15% absent).
    - `explanations_folder`: e.g. `"explanations-gpt-4o-mini"`, as some sources use.
    - `extra_fields`: unknown keys on records (`_exportVersion`, features' `decoderNorm`,
      activations' `topLogitToken`, explanations' DB columns `scoreV2`, `createdAt`, ...).
    - `non_source_folders`: also write `v1/{model}/headvis/...` and `v1/{model}/jlens/...`
      (in the bucket next to sources, not sources; `jlens/features/batch-0.jsonl.gz` looks like
      one on purpose).
    - `batch_size`: rows a batch (export-data.py: 1024; some sources were converted from 128).
    - `activation_optional`: whether activation records carry `createdAt, dataIndex,
      lossValues, logitContributions, qualifyingTokenIndex`: `"none"` (export-data.py),
      `"all"`, or `"mixed"` (alternating by batch file).
    - `explanation_ties`: how rows of one index are ordered on each explanations page.
      export-data.py pages with `ORDER BY index LIMIT/OFFSET` and no tiebreak; `"stable"`
      (default) gives every page the same (storage) order, so a feature's explanations may
      straddle two files but each row is written once; `"per_page"` orders ties differently on
      alternate pages, as Postgres may, so a straddling feature has one row written twice and
      another never (`exported_explanation_ids` says which).
    - `inference_host_files`: write `inference_hosts_on_source.jsonl` and `inference_hosts.jsonl`
      (export-data.py at ebb8426; the emulator has no inference hosts, so both are empty).
    """

    index_as_int_fraction: float = 0.0
    embedding_style: Literal["list", "string", "absent", "mixed"] = "string"
    explanations_folder: str = "explanations"
    extra_fields: bool = False
    non_source_folders: bool = True
    batch_size: int = BATCH_SIZE
    activation_optional: Literal["all", "none", "mixed"] = "none"
    explanation_ties: Literal["stable", "per_page"] = "stable"
    inference_host_files: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.index_as_int_fraction <= 1.0:
            raise ValueError("index_as_int_fraction must be in [0, 1]")
        if self.embedding_style not in ("list", "string", "absent", "mixed"):
            raise ValueError(f"unknown embedding_style {self.embedding_style!r}")
        if self.activation_optional not in ("all", "none", "mixed"):
            raise ValueError(f"unknown activation_optional {self.activation_optional!r}")
        if self.explanation_ties not in ("stable", "per_page"):
            raise ValueError(f"unknown explanation_ties {self.explanation_ties!r}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        folder = self.explanations_folder
        if not folder.startswith("explanations") or "/" in folder or "\\" in folder or folder in (".", ".."):
            raise ValueError(f"explanations_folder must be 'explanations' or 'explanations-<model>', got {folder!r}")


def export_prefix(model_id: str, source_id: str) -> str:
    """Key prefix of one source in the bucket: `v1/{model}/{source}/`."""
    return f"v1/{model_id}/{source_id}/"


# --------------------------------------------------------------------------- serialisation


def _line(record: Any) -> bytes:
    """One JSONL line as export-data.py writes it: `json.dumps` with its defaults (separators
    `", "`/`": "`, ensure_ascii, allow_nan: NaN/Infinity as bare tokens), then `"\\n"`."""
    return json.dumps(record).encode("ascii") + b"\n"


def _jsonl(records: Iterable[Any]) -> bytes:
    return b"".join(_line(r) for r in records)


def _write(path: Path, data: bytes, written: list[Path]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    written.append(path)


def _write_gz(path: Path, records: Sequence[Any], written: list[Path], level: int) -> None:
    # export-data.py `compress_files`: every .jsonl below the source folder is gzipped (level 5)
    # and the original removed; an empty batch is an empty file, gzipped too.
    _write(path, gzip.compress(_jsonl(records), compresslevel=level, mtime=0), written)


def _embedding(explanation_id: str) -> list[float]:
    """A stable unit vector of EMBEDDING_DIM floats for an explanation."""
    seed = int.from_bytes(hashlib.blake2b(b"emb\x00" + explanation_id.encode(), digest_size=8).digest(), "little")
    v = np.random.default_rng(seed).standard_normal(EMBEDDING_DIM)
    v /= np.linalg.norm(v)
    out: list[float] = np.round(v, 6).tolist()
    return out


def _pg_timestamp(value: Any) -> Any:
    """export-data.py `getFormattedJsonlRow`: a datetime becomes `isoformat()`. Prisma's DateTime
    is a Postgres `timestamp(3)` without zone, so psycopg2 hands back a naive datetime: no `Z`,
    microseconds (6 digits), none at all when they are 0. The emulator holds the API's `...Z`."""
    if isinstance(value, str) and value.endswith("Z"):
        try:
            return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").isoformat()
        except ValueError:
            return value
    return value


def _meta_row(row: Optional[dict[str, Any]], creator: Optional[str]) -> Optional[dict[str, Any]]:
    """A metadata row as export-data.py `getFormattedJsonlRow` writes it: datetimes in
    isoformat, `creatorId` replaced by DEFAULT_CREATOR_ID; key order is the table's."""
    if row is None:
        return None
    out = {}
    for k, v in row.items():
        if k in ("createdAt", "updatedAt"):
            v = _pg_timestamp(v)
        if k == "creatorId":
            v = creator
        out[k] = v
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


def _one_source(state: EmulatorState, source: SourceRef) -> SourceSpec:
    specs = _resolve_sources(state, [source])
    if not specs:
        raise KeyError(f"{source} is not an SAE source")
    return specs[0]


# --------------------------------------------------------------------------- pagination truths


def activation_ranges(state: EmulatorState, source: SourceRef, quirks: ExportQuirks = ExportQuirks()) -> list[tuple[int, int]]:
    """`(first, last)` index of each activations batch, inclusive, batch N at position N.

    export-data.py `export_activations`: the number of batches comes from the *count* of the
    source's Neuron rows, and batch N selects `index IN generate_series(N*bs, min(N*bs+bs-1,
    count-1))`, i.e. it assumes indices 0..count-1. With holes, the highest indices are in no
    batch at all.
    """
    spec = _one_source(state, source)
    count = state.feature_count(spec.model_id, spec.source_id)
    bs = quirks.batch_size
    return [(n * bs, min(n * bs + bs - 1, count - 1)) for n in range(-(-count // bs))]


def _explanation_rows(state: EmulatorState, spec: SourceSpec) -> list[dict[str, Any]]:
    """Every explanation row of a source in `ORDER BY index` with ties in storage (id) order."""
    m, s = spec.model_id, spec.source_id
    out: list[dict[str, Any]] = []
    for i in sorted(state.feature_indices(m, s), key=str):  # `index` is TEXT: "0" < "1" < "10" < "100"
        out.extend(state.explanations(m, s, i))  # id (storage) order
    return out


def _explanation_pages(rows: list[dict[str, Any]], quirks: ExportQuirks) -> Iterator[list[dict[str, Any]]]:
    """export-data.py `export_explanations`: ceil(count/bs) pages of `ORDER BY index LIMIT bs
    OFFSET n*bs`. No tiebreak: "stable" keeps one order for every page; "per_page" reverses the
    rows of each index on odd pages, so a feature that straddles a page boundary has a row
    twice and another never."""
    bs = quirks.batch_size
    n_pages = -(-len(rows) // bs)
    reversed_ties: Optional[list[dict[str, Any]]] = None
    if quirks.explanation_ties == "per_page" and n_pages > 1:
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault(r["index"], []).append(r)
        reversed_ties = [r for g in groups.values() for r in reversed(g)]
    for n in range(n_pages):
        order = reversed_ties if (reversed_ties is not None and n % 2 == 1) else rows
        yield order[n * bs : (n + 1) * bs]


def exported_explanation_ids(
    state: EmulatorState, source: SourceRef, quirks: ExportQuirks = ExportQuirks()
) -> list[list[str]]:
    """The explanation ids each explanations batch of `source` holds, batch N at position N
    (the truth for tests: with `explanation_ties="per_page"` an id may be in two batches and
    another in none)."""
    spec = _one_source(state, source)
    return [[r["id"] for r in page] for page in _explanation_pages(_explanation_rows(state, spec), quirks)]


# --------------------------------------------------------------------------- the writer


class _Exporter:
    def __init__(self, state: EmulatorState, root: Path, quirks: ExportQuirks, compresslevel: int,
                 creator: Optional[str]) -> None:
        self.level = compresslevel
        self.state = state
        self.root = Path(root)
        self.q = quirks
        self.creator = creator
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

    # ---------------------------------------------------------------- metadata

    def _catalog_row(self, name: str, *args: Any) -> Any:
        """The state's catalog row (public `model_row` & co. where the state has them)."""
        fn = getattr(self.state, name, None) or getattr(self.state, "_" + name)
        return fn(*args)

    def _release_row(self, spec: SourceSpec) -> Optional[dict[str, Any]]:
        fn = getattr(self.state, "release_row", None)
        if fn is not None:
            row: Optional[dict[str, Any]] = fn(spec.model_id, spec.set_name)
            return row
        sset = self._catalog_row("set_row", spec.model_id, spec.set_name)
        model = self._catalog_row("model_row", spec.model_id)
        if sset.get("releaseName") is None:
            return None
        return {
            "name": sset["releaseName"],
            "visibility": "PUBLIC",
            "isNewUi": False,
            "featured": False,
            "description": f"Synthetic sparse autoencoders for {model['displayName']} ({spec.set_name})",
            "descriptionShort": f"{model['displayNameShort']} {spec.set_name}",
            "urls": [],
            "creatorEmail": None,
            "creatorName": sset.get("creatorName", "synthetic"),
            "creatorNameShort": sset.get("creatorName", "synthetic"),
            "creatorId": CREATOR_ID,
            "defaultSourceSetName": spec.set_name,
            "defaultSourceId": spec.source_id,
            "defaultUmapSourceIds": [],
            "createdAt": sset["createdAt"],
        }

    def metadata(self, spec: SourceSpec, base: Path) -> None:
        """export-data.py `export_model`, `export_release` (only for a set with a release),
        `export_source` (source.jsonl and sourceset.jsonl): one `SELECT *` row each, plain JSONL."""
        rows = {
            "model": self._catalog_row("model_row", spec.model_id),
            "release": self._release_row(spec),
            "source": self._catalog_row("source_row", spec),
            "sourceset": self._catalog_row("set_row", spec.model_id, spec.set_name),
        }
        for name, row in rows.items():
            row = _meta_row(row, self.creator)
            if row is not None:
                _write(base / f"{name}.jsonl", _line(row), self.written)
        if self.q.inference_host_files:
            # export-data.py (ebb8426) also writes the source's inference hosts (hostUrl blanked);
            # the emulator runs none, so both files are empty.
            for name in ("inference_hosts_on_source", "inference_hosts"):
                _write(base / f"{name}.jsonl", b"", self.written)

    # ---------------------------------------------------------------- records

    def _feature_record(self, row: dict[str, Any], m: str, s: str, index: int) -> dict[str, Any]:
        # export-data.py `export_features`: exactly these Neuron columns, in this order; then
        # `replace_author_and_creator_with_default_creator_id` overwrites creatorId.
        rec = {k: row[k] for k in FEATURE_FIELDS}
        rec["creatorId"] = self.creator
        rec["index"] = self._index("feature", m, s, index)
        if self.q.extra_fields:
            w = self.state.decoder(m, s).weights[index]
            rec["decoderNorm"] = round(float(np.linalg.norm(w)), 6)
            rec["_exportVersion"] = _EXPORT_VERSION
        return rec

    def _activation_record(self, act: dict[str, Any], m: str, s: str, index: int, optional: bool) -> dict[str, Any]:
        # export-data.py `export_activations` columns; `filter_author_and_creator_in_activations`
        # then replaces creatorId by DEFAULT_CREATOR_ID.
        rec = {k: act[k] for k in ACTIVATION_FIELDS}
        rec["creatorId"] = self.creator
        if optional:
            rec.update((k, act[k]) for k in ACTIVATION_OPTIONAL_FIELDS)
        rec["index"] = self._index("activation", m, s, index, act["id"])
        if self.q.extra_fields:
            rec["topLogitToken"] = None
            rec["_exportVersion"] = _EXPORT_VERSION
        return rec

    def _explanation_record(self, e: dict[str, Any], m: str, s: str) -> dict[str, Any]:
        # export-data.py `export_explanations` columns (no scores); authorId -> DEFAULT_CREATOR_ID.
        rec: dict[str, Any] = {}
        style = self._embedding_style(e["id"])
        for k in EXPLANATION_FIELDS:
            if k == "embedding":
                if style == "list":
                    rec[k] = _embedding(e["id"])
                elif style == "string":  # pgvector's text form: "[0.1,-0.2,...]"
                    rec[k] = orjson.dumps(_embedding(e["id"])).decode()
                continue
            rec[k] = e[k]
        rec["authorId"] = self.creator
        rec["index"] = self._index("explanation", m, s, int(e["index"]), e["id"])
        if self.q.extra_fields:
            rec.update((k, e[k]) for k in _EXPLANATION_EXTRA)
            rec["_exportVersion"] = _EXPORT_VERSION
        return rec

    # ---------------------------------------------------------------- writers

    def source(self, spec: SourceSpec) -> None:
        m, s = spec.model_id, spec.source_id
        base = self.root / "v1" / m / s
        bs = self.q.batch_size
        self.metadata(spec, base)

        indices = self.state.feature_indices(m, s)  # holes excluded, ascending
        present = set(indices)
        features: dict[int, dict[str, Any]] = {}

        def build(i: int) -> dict[str, Any]:
            row = self.state.feature_db(m, s, i)  # the DB's view: NaN/Infinity still floats
            assert row is not None
            features[i] = self._feature_record(row, m, s, i)
            return row

        # Activations: numeric ranges sized by the *count* of features (export-data.py assumes
        # indices 0..count-1), rows in storage (id) order: the query has no ORDER BY.
        for n, (lo, hi) in enumerate(activation_ranges(self.state, spec, self.q)):
            optional = self._activation_optional(m, s, n)
            records: list[dict[str, Any]] = []
            for i in range(lo, hi + 1):
                if i in present:
                    acts = build(i)["activations"]
                    records.extend(self._activation_record(a, m, s, i, optional) for a in acts
                                   if a.get("creatorId") in _PUBLIC_ACTIVATION_CREATORS)
            records.sort(key=lambda r: r["id"])
            _write_gz(base / "activations" / f"batch-{n}.jsonl.gz", records, self.written, self.level)
        for i in indices:  # above count-1: in no activations batch, but still a feature
            if i not in features:
                build(i)

        # Features: `ORDER BY index LIMIT bs OFFSET n*bs` on a TEXT column: text order.
        text_order = sorted(indices, key=str)
        for n, start in enumerate(range(0, len(text_order), bs)):
            chunk = [features[i] for i in text_order[start : start + bs]]
            _write_gz(base / "features" / f"batch-{n}.jsonl.gz", chunk, self.written, self.level)
        features.clear()

        # Explanations: pages of bs *rows* in text order of index, no tiebreak.
        for n, page in enumerate(_explanation_pages(_explanation_rows(self.state, spec), self.q)):
            _write_gz(base / self.q.explanations_folder / f"batch-{n}.jsonl.gz",
                      [self._explanation_record(e, m, s) for e in page], self.written, self.level)

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
        _write(base / "jlens" / "config.json", _line({"modelId": model_id, "kind": "jlens"}), self.written)


def write_export(
    state: EmulatorState,
    root: Path,
    *,
    sources: Iterable[SourceRef] | None = None,
    quirks: ExportQuirks = ExportQuirks(),
    compresslevel: int = GZIP_LEVEL,
    default_creator_id: Optional[str] = DEFAULT_CREATOR_ID,
) -> list[Path]:
    """Write the SAE sources of `state` under `root/v1/...`; return the files written, sorted.

    `sources`: SourceSpecs, `(model, source)` pairs or `"model/source"` strings (default:
    every source of the state); vector sources are skipped, unknown ones raise KeyError.
    Existing files at the same paths are overwritten; nothing else under `root` is touched.
    `compresslevel` is gzip's (5, as export-data.py; 1 is faster for big test exports).
    `default_creator_id` replaces every creatorId/authorId (export-data.py reads it from the
    environment, and writes null when it is unset).
    """
    if not 0 <= compresslevel <= 9:
        raise ValueError("compresslevel must be in 0..9")
    exporter = _Exporter(state, Path(root), quirks, compresslevel, default_creator_id)
    specs = _resolve_sources(state, sources)
    for spec in specs:
        exporter.source(spec)
    if quirks.non_source_folders:
        for model_id in dict.fromkeys(s.model_id for s in specs):
            exporter.decoys(model_id)
    return sorted(exporter.written)
