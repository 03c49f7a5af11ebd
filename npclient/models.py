"""Typed views of Neuronpedia payloads that never lose what the server sent.

Neuronpedia adds fields over time and sends NaN as `null`, so every model accepts unknown
fields (`extra="allow"`), takes `None` for any float, and normalises `index` (sent as a
string) to `int`. A `Feature` also keeps the body it was parsed from (`.raw_json`, bytes;
`.raw` parses it again), which is what the mirror stores, so nothing is lost even if these
models lag the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from . import jsonio, wire
from .ids import FeatureId

__all__ = [
    "NPModelBase",
    "ExplanationScore",
    "Explanation",
    "Activation",
    "Feature",
    "ModelInfo",
    "SourceInfo",
    "SourceSetInfo",
    "SearchResult",
    "SearchPage",
    "VectorInfo",
    "Column",
    "TABLE_COLUMNS",
    "FEATURE_COLUMNS",
    "ACTIVATION_COLUMNS",
    "EXPLANATION_COLUMNS",
    "payload_fields",
]

OptFloat = Optional[float]
Floats = tuple[OptFloat, ...]
Strs = tuple[str, ...]
OptInts = tuple[Optional[int], ...]


class NPModelBase(BaseModel):
    """Lenient base: unknown fields kept, camelCase names from the API, snake_case in Python."""

    model_config = ConfigDict(
        extra="allow",
        populate_by_name=False,  # by alias only: a stray `creator_id` key is an unknown field, not `creatorId`
        protected_namespaces=(),
        arbitrary_types_allowed=False,
    )


def _index_to_int(value: Any) -> Any:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class ExplanationScore(NPModelBase):
    id: Optional[str] = None
    value: OptFloat = None
    explanation_score_type_name: Optional[str] = Field(None, alias="explanationScoreTypeName")
    explanation_score_model_name: Optional[str] = Field(None, alias="explanationScoreModelName")


class Explanation(NPModelBase):
    id: Optional[str] = None
    description: Optional[str] = None
    explanation_model_name: Optional[str] = Field(None, alias="explanationModelName")
    type_name: Optional[str] = Field(None, alias="typeName")
    scores: list[ExplanationScore] = Field(default_factory=list)
    triggered_by_user: Optional[Any] = Field(None, alias="triggeredByUser")
    # Present in bulk exports, absent from the feature endpoint.
    model_id: Optional[str] = Field(None, alias="modelId")
    layer: Optional[str] = None
    index: Optional[int] = None
    author_id: Optional[str] = Field(None, alias="authorId")

    _norm_index = field_validator("index", mode="before")(_index_to_int)


class Activation(NPModelBase):
    id: Optional[str] = None
    model_id: Optional[str] = Field(None, alias="modelId")
    layer: Optional[str] = None
    index: Optional[int] = None
    tokens: Strs = Field(default_factory=tuple)
    values: Floats = Field(default_factory=tuple)
    max_value: OptFloat = Field(None, alias="maxValue")
    max_value_token_index: Optional[int] = Field(None, alias="maxValueTokenIndex")
    min_value: OptFloat = Field(None, alias="minValue")
    data_index: Optional[Any] = Field(None, alias="dataIndex")
    data_source: Optional[str] = Field(None, alias="dataSource")
    dfa_values: Floats = Field(default_factory=tuple, alias="dfaValues")
    dfa_target_index: Optional[int] = Field(None, alias="dfaTargetIndex")
    dfa_max_value: OptFloat = Field(None, alias="dfaMaxValue")
    loss_values: Floats = Field(default_factory=tuple, alias="lossValues")
    logit_contributions: Optional[Any] = Field(None, alias="logitContributions")
    bin_min: OptFloat = Field(None, alias="binMin")
    bin_max: OptFloat = Field(None, alias="binMax")
    bin_contains: OptFloat = Field(None, alias="binContains")
    qualifying_token_index: Optional[int] = Field(None, alias="qualifyingTokenIndex")
    creator_id: Optional[str] = Field(None, alias="creatorId")
    created_at: Optional[str] = Field(None, alias="createdAt")

    _norm_index = field_validator("index", mode="before")(_index_to_int)

    @field_validator("dfa_values", "loss_values", "values", "tokens", mode="before")
    @classmethod
    def _null_list(cls, value: Any) -> Any:
        return [] if value is None else value


class ModelInfo(NPModelBase):
    id: str
    display_name: Optional[str] = Field(None, alias="displayName")
    dimension: Optional[int] = None
    layers: Optional[int] = None
    neurons_per_layer: Optional[int] = Field(None, alias="neuronsPerLayer")
    source_sets: list["SourceSetInfo"] = Field(default_factory=list, alias="sourceSets")


class SourceInfo(NPModelBase):
    id: str
    model_id: Optional[str] = Field(None, alias="modelId")
    set_name: Optional[str] = Field(None, alias="setName")
    saelens_release: Optional[str] = Field(None, alias="saelensRelease")
    saelens_sae_id: Optional[str] = Field(None, alias="saelensSaeId")
    saelens_config: Optional[dict[str, Any]] = Field(None, alias="saelensConfig")
    hf_repo_id: Optional[str] = Field(None, alias="hfRepoId")
    hf_folder_id: Optional[str] = Field(None, alias="hfFolderId")
    has_dashboards: Optional[bool] = Field(None, alias="hasDashboards")
    num_prompts: Optional[int] = None
    num_tokens_in_prompt: Optional[int] = None
    dataset: Optional[str] = None

    @field_validator("saelens_config", mode="before")
    @classmethod
    def _config_object(cls, value: Any) -> Any:
        """`saelensConfig` is nullable, and some upload paths store it as a JSON *string*
        (Neuronpedia's app/api/admin/upload-eval/route.ts): read the string as its object;
        anything else that is not an object carries no config."""
        if isinstance(value, str):
            try:
                value = jsonio.loads(value.encode())
            except ValueError:
                return None
        return value if isinstance(value, dict) else None

    @property
    def d_sae(self) -> Optional[int]:
        """The feature count, when the source carries its sae_lens config."""
        cfg = self.saelens_config or {}
        value = cfg.get("d_sae")
        return int(value) if isinstance(value, (int, float, str)) and str(value).isdigit() else None


class SourceSetInfo(NPModelBase):
    name: str
    model_id: Optional[str] = Field(None, alias="modelId")
    description: Optional[str] = None
    type: Optional[str] = None
    sources: list[SourceInfo] = Field(default_factory=list)
    #: GET /api/source-set includes the model row (lib/db/source.ts `getSourceSet`); model/list does not
    model: Optional[ModelInfo] = None


class Feature(NPModelBase):
    """One feature as `GET /api/feature/...` returns it; `.raw_json` is the body it came from.

    The body is kept as bytes, not as a parsed dict beside the typed fields: a dict tree per
    feature doubles the objects the garbage collector walks, and with a few thousand
    features held in memory that walking cost more than the HTTP stack
    (benchmarks/RESULTS.md, bench_client). `.raw` parses the bytes on each access.
    """

    model_id: str = Field(alias="modelId")
    layer: str
    index: int
    source_set_name: Optional[str] = Field(None, alias="sourceSetName")
    creator_id: Optional[str] = Field(None, alias="creatorId")
    created_at: Optional[str] = Field(None, alias="createdAt")
    max_act_approx: OptFloat = Field(None, alias="maxActApprox")
    frac_nonzero: OptFloat = None
    has_vector: Optional[bool] = Field(None, alias="hasVector")
    vector: Floats = Field(default_factory=tuple)
    vector_label: Optional[str] = Field(None, alias="vectorLabel")
    vector_default_steer_strength: OptFloat = Field(None, alias="vectorDefaultSteerStrength")
    hook_name: Optional[str] = Field(None, alias="hookName")
    umap_x: OptFloat = None
    umap_y: OptFloat = None
    umap_log_feature_sparsity: OptFloat = None
    umap_cluster: Optional[int] = None
    topk_cos_sim_indices: OptInts = Field(default_factory=tuple, alias="topkCosSimIndices")
    topk_cos_sim_values: Floats = Field(default_factory=tuple, alias="topkCosSimValues")
    pos_str: Strs = Field(default_factory=tuple)
    neg_str: Strs = Field(default_factory=tuple)
    pos_values: Floats = Field(default_factory=tuple)
    neg_values: Floats = Field(default_factory=tuple)
    freq_hist_data_bar_heights: Floats = Field(default_factory=tuple)
    freq_hist_data_bar_values: Floats = Field(default_factory=tuple)
    logits_hist_data_bar_heights: Floats = Field(default_factory=tuple)
    logits_hist_data_bar_values: Floats = Field(default_factory=tuple)
    decoder_weights_dist: Floats = Field(default_factory=tuple)
    neuron_alignment_indices: OptInts = Field(default_factory=tuple)
    neuron_alignment_values: Floats = Field(default_factory=tuple)
    neuron_alignment_l1: Floats = Field(default_factory=tuple)
    correlated_neurons_indices: OptInts = Field(default_factory=tuple)
    correlated_neurons_pearson: Floats = Field(default_factory=tuple)
    correlated_neurons_l1: Floats = Field(default_factory=tuple)
    correlated_features_indices: list[Any] = Field(default_factory=list)
    correlated_features_pearson: list[Any] = Field(default_factory=list)
    correlated_features_l1: list[Any] = Field(default_factory=list)
    model: Optional[ModelInfo] = None
    source: Optional[SourceInfo] = None
    source_set: Optional[SourceSetInfo] = Field(None, alias="sourceSet")
    creator: Optional[dict[str, Any]] = None
    lists: list[Any] = Field(default_factory=list)
    comments: list[Any] = Field(default_factory=list)
    activations: list[Activation] = Field(default_factory=list)
    explanations: list[Explanation] = Field(default_factory=list)

    _raw_json: bytes = PrivateAttr(default=b"{}")

    _norm_index = field_validator("index", mode="before")(_index_to_int)

    @field_validator("activations", mode="after")
    @classmethod
    def _top_first(cls, acts: list[Activation]) -> list[Activation]:
        """Rank 0 is the largest `maxValue` (ties by id) whatever order the server sent:
        GET sends them so (checked in one pass, the common case), POST /api/features
        unordered unless asked for the top N (sorted)."""
        for before, after in zip(acts, acts[1:]):
            b, a = before.max_value, after.max_value
            if b is None or a is None or b != b or a != a or b < a or (b == a and (before.id or "") > (after.id or "")):
                return wire.rank_activations(acts, max_value="max_value", ident="id")
        return acts

    @field_validator(
        "vector", "topk_cos_sim_indices", "topk_cos_sim_values", "pos_str", "neg_str",
        "pos_values", "neg_values", "activations", "explanations", "lists", "comments",
        "freq_hist_data_bar_heights", "freq_hist_data_bar_values", "logits_hist_data_bar_heights",
        "logits_hist_data_bar_values", "decoder_weights_dist", "neuron_alignment_indices",
        "neuron_alignment_values", "neuron_alignment_l1", "correlated_neurons_indices",
        "correlated_neurons_pearson", "correlated_neurons_l1", "correlated_features_indices",
        "correlated_features_pearson", "correlated_features_l1",
        mode="before",
    )
    @classmethod
    def _null_list(cls, value: Any) -> Any:
        return [] if value is None else value

    @classmethod
    def from_json(cls, body: bytes) -> "Feature":
        """Parse a response body, keeping the bytes themselves (exact, even where orjson is not).

        orjson + `model_validate` measured ~0.1 ms faster per 40 kB body than pydantic's
        `model_validate_json`. Raises a `ValueError` for a body that is not JSON or not a feature.
        """
        feature = cls.model_validate(orjson.loads(body))
        feature._raw_json = bytes(body)
        return feature

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> "Feature":
        """Parse an already decoded body (an item of a `POST /api/features` answer, an export record)."""
        feature = cls.model_validate(raw)
        feature._raw_json = jsonio.dumps(raw)
        return feature

    @property
    def raw(self) -> dict[str, Any]:
        """The body as the server sent it, freshly parsed (yours to change)."""
        value: dict[str, Any] = jsonio.loads(self._raw_json)
        return value

    @property
    def raw_json(self) -> bytes:
        """The body as JSON bytes: what the mirror stores."""
        return self._raw_json

    @property
    def id(self) -> FeatureId:
        return FeatureId(self.model_id, self.layer, self.index)

    @property
    def top_explanation(self) -> Optional[str]:
        """The first explanation in the server's order: with scores (GET) that is Neuronpedia's
        rank, `scoreV2` then `scoreV1` descending with unscored ones first; without (POST
        answers carry no scores) it is the database's order. See README, "Top explanation"."""
        return next((e.description for e in self.explanations if e.description), None)


class SearchResult(NPModelBase):
    model_id: str = Field(alias="modelId")
    layer: str
    index: int
    description: Optional[str] = None
    cosine_similarity: OptFloat = None

    _norm_index = field_validator("index", mode="before")(_index_to_int)

    @property
    def feature_id(self) -> FeatureId:
        return FeatureId(self.model_id, self.layer, self.index)


class SearchPage(NPModelBase):
    results: list[SearchResult] = Field(default_factory=list)
    results_count: Optional[int] = Field(None, alias="resultsCount")
    has_more: bool = Field(False, alias="hasMore")
    next_offset: Optional[int] = Field(None, alias="nextOffset")


class VectorInfo(NPModelBase):
    model_id: Optional[str] = Field(None, alias="modelId")
    layer: Optional[str] = None
    index: Optional[int] = None
    vector_label: Optional[str] = Field(None, alias="vectorLabel")
    vector_default_steer_strength: OptFloat = Field(None, alias="vectorDefaultSteerStrength")
    hook_name: Optional[str] = Field(None, alias="hookName")
    vector: Floats = Field(default_factory=tuple)
    created_at: Optional[str] = Field(None, alias="createdAt")

    _norm_index = field_validator("index", mode="before")(_index_to_int)


ModelInfo.model_rebuild()


# --------------------------------------------------------------------------- the column map
# One map from Neuronpedia's payload fields to the mirror's columns and their DuckDB types.
# The store's DDL, the writer's Arrow schemas, the export importer's `read_json` columns, the
# rebuilding of imported features and the Parquet export all read it (tests/test_one_map.py).


@dataclass(frozen=True)
class Column:
    """A mirror column: its `name`, DuckDB `sql` type, and the payload field it holds (`api`,
    None for the mirror's own bookkeeping)."""

    name: str
    sql: str
    api: Optional[str] = None

    @property
    def base_type(self) -> str:
        """The type without constraints (`INTEGER NOT NULL` -> `INTEGER`)."""
        return self.sql.replace(" NOT NULL", "")


def _key_columns() -> tuple[Column, ...]:
    return (
        Column("feature_key", "VARCHAR NOT NULL"),
        Column("model_id", "VARCHAR NOT NULL", "modelId"),
        Column("source", "VARCHAR NOT NULL", "layer"),
        Column("index", "INTEGER NOT NULL", "index"),
    )


FEATURE_COLUMNS: tuple[Column, ...] = (
    *_key_columns(),
    Column("origin", "VARCHAR NOT NULL"),
    Column("max_act_approx", "DOUBLE", "maxActApprox"),
    Column("frac_nonzero", "DOUBLE", "frac_nonzero"),
    Column("hook_name", "VARCHAR", "hookName"),
    Column("has_vector", "BOOLEAN", "hasVector"),
    Column("umap_x", "DOUBLE", "umap_x"),
    Column("umap_y", "DOUBLE", "umap_y"),
    Column("umap_cluster", "INTEGER", "umap_cluster"),
    Column("umap_log_feature_sparsity", "DOUBLE", "umap_log_feature_sparsity"),
    Column("topk_cos_sim_indices", "INTEGER[]", "topkCosSimIndices"),
    Column("topk_cos_sim_values", "DOUBLE[]", "topkCosSimValues"),
    Column("pos_str", "VARCHAR[]", "pos_str"),
    Column("pos_values", "DOUBLE[]", "pos_values"),
    Column("neg_str", "VARCHAR[]", "neg_str"),
    Column("neg_values", "DOUBLE[]", "neg_values"),
    Column("n_activations", "INTEGER"),
    Column("n_explanations", "INTEGER"),
    Column("top_explanation", "VARCHAR"),
    Column("run_id", "BIGINT"),
    Column("fetched_at", "TIMESTAMP"),
    # An imported feature's record exactly as the export had it (API features keep theirs in raw_chunks).
    Column("export_raw", "JSON"),
)

ACTIVATION_COLUMNS: tuple[Column, ...] = (
    *_key_columns(),
    Column("rank", "INTEGER NOT NULL"),
    Column("activation_id", "VARCHAR", "id"),
    Column("tokens", "VARCHAR[]", "tokens"),
    Column("values", "DOUBLE[]", "values"),
    Column("max_value", "DOUBLE", "maxValue"),
    Column("max_value_token_index", "INTEGER", "maxValueTokenIndex"),
    Column("min_value", "DOUBLE", "minValue"),
    Column("data_source", "VARCHAR", "dataSource"),
    Column("data_index", "VARCHAR", "dataIndex"),
    Column("creator_id", "VARCHAR", "creatorId"),
    Column("created_at", "VARCHAR", "createdAt"),
    Column("dfa_values", "DOUBLE[]", "dfaValues"),
    Column("dfa_max_value", "DOUBLE", "dfaMaxValue"),
    Column("dfa_target_index", "INTEGER", "dfaTargetIndex"),
    Column("loss_values", "DOUBLE[]", "lossValues"),
    Column("logit_contributions", "JSON", "logitContributions"),
    Column("bin_min", "DOUBLE", "binMin"),
    Column("bin_max", "DOUBLE", "binMax"),
    Column("bin_contains", "DOUBLE", "binContains"),
    Column("qualifying_token_index", "INTEGER", "qualifyingTokenIndex"),
    Column("origin", "VARCHAR NOT NULL"),
)

EXPLANATION_COLUMNS: tuple[Column, ...] = (
    *_key_columns(),
    Column("rank", "INTEGER NOT NULL"),
    Column("explanation_id", "VARCHAR", "id"),
    Column("description", "VARCHAR", "description"),
    Column("explanation_model_name", "VARCHAR", "explanationModelName"),
    Column("type_name", "VARCHAR", "typeName"),
    Column("scores", "JSON", "scores"),
    Column("author_id", "VARCHAR", "authorId"),
    Column("embedding", "FLOAT[]", "embedding"),
    Column("umap_x", "DOUBLE", "umap_x"),
    Column("umap_y", "DOUBLE", "umap_y"),
    Column("umap_cluster", "INTEGER", "umap_cluster"),
    Column("umap_log_feature_sparsity", "DOUBLE", "umap_log_feature_sparsity"),
    Column("origin", "VARCHAR NOT NULL"),
    # The description's number of distinct search words (store/search.py: NULL unless ASCII), so
    # keyword search ranks and counts in SQL and returns a page, not every hit.
    Column("n_words", "INTEGER"),
)

#: table -> its columns, in order: THE map.
TABLE_COLUMNS: dict[str, tuple[Column, ...]] = {
    "features": FEATURE_COLUMNS,
    "activations": ACTIVATION_COLUMNS,
    "explanations": EXPLANATION_COLUMNS,
}


def payload_fields(table: str) -> dict[str, str]:
    """column name -> payload field, for the columns of `table` that hold one."""
    return {c.name: c.api for c in TABLE_COLUMNS[table] if c.api is not None}
