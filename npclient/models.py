"""Typed views of Neuronpedia payloads that never lose what the server sent.

Neuronpedia adds fields over time and sends NaN as `null`, so every model accepts unknown
fields (`extra="allow"`), takes `None` for any float, and normalises `index` (sent as a
string) to `int`. A `Feature` also keeps the exact parsed body in `.raw`, which is what the
mirror stores, so nothing is lost even if these models lag the API.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

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
]

OptFloat = Optional[float]


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
    tokens: list[str] = Field(default_factory=list)
    values: list[OptFloat] = Field(default_factory=list)
    max_value: OptFloat = Field(None, alias="maxValue")
    max_value_token_index: Optional[int] = Field(None, alias="maxValueTokenIndex")
    min_value: OptFloat = Field(None, alias="minValue")
    data_index: Optional[Any] = Field(None, alias="dataIndex")
    data_source: Optional[str] = Field(None, alias="dataSource")
    dfa_values: list[OptFloat] = Field(default_factory=list, alias="dfaValues")
    dfa_target_index: Optional[int] = Field(None, alias="dfaTargetIndex")
    dfa_max_value: OptFloat = Field(None, alias="dfaMaxValue")
    loss_values: list[OptFloat] = Field(default_factory=list, alias="lossValues")
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


class Feature(NPModelBase):
    """One feature as `GET /api/feature/...` returns it; `.raw` is the body exactly as parsed."""

    model_id: str = Field(alias="modelId")
    layer: str
    index: int
    source_set_name: Optional[str] = Field(None, alias="sourceSetName")
    creator_id: Optional[str] = Field(None, alias="creatorId")
    created_at: Optional[str] = Field(None, alias="createdAt")
    max_act_approx: OptFloat = Field(None, alias="maxActApprox")
    frac_nonzero: OptFloat = None
    has_vector: Optional[bool] = Field(None, alias="hasVector")
    vector: list[OptFloat] = Field(default_factory=list)
    vector_label: Optional[str] = Field(None, alias="vectorLabel")
    vector_default_steer_strength: OptFloat = Field(None, alias="vectorDefaultSteerStrength")
    hook_name: Optional[str] = Field(None, alias="hookName")
    umap_x: OptFloat = None
    umap_y: OptFloat = None
    umap_log_feature_sparsity: OptFloat = None
    umap_cluster: Optional[int] = None
    topk_cos_sim_indices: list[Optional[int]] = Field(default_factory=list, alias="topkCosSimIndices")
    topk_cos_sim_values: list[OptFloat] = Field(default_factory=list, alias="topkCosSimValues")
    pos_str: list[str] = Field(default_factory=list)
    neg_str: list[str] = Field(default_factory=list)
    pos_values: list[OptFloat] = Field(default_factory=list)
    neg_values: list[OptFloat] = Field(default_factory=list)
    freq_hist_data_bar_heights: list[OptFloat] = Field(default_factory=list)
    freq_hist_data_bar_values: list[OptFloat] = Field(default_factory=list)
    logits_hist_data_bar_heights: list[OptFloat] = Field(default_factory=list)
    logits_hist_data_bar_values: list[OptFloat] = Field(default_factory=list)
    decoder_weights_dist: list[OptFloat] = Field(default_factory=list)
    neuron_alignment_indices: list[Optional[int]] = Field(default_factory=list)
    neuron_alignment_values: list[OptFloat] = Field(default_factory=list)
    neuron_alignment_l1: list[OptFloat] = Field(default_factory=list)
    correlated_neurons_indices: list[Optional[int]] = Field(default_factory=list)
    correlated_neurons_pearson: list[OptFloat] = Field(default_factory=list)
    correlated_neurons_l1: list[OptFloat] = Field(default_factory=list)
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

    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    _norm_index = field_validator("index", mode="before")(_index_to_int)

    @field_validator(
        "vector", "topk_cos_sim_indices", "topk_cos_sim_values", "pos_str", "neg_str",
        "pos_values", "neg_values", "activations", "explanations", "lists", "comments",
        mode="before",
    )
    @classmethod
    def _null_list(cls, value: Any) -> Any:
        return [] if value is None else value

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> "Feature":
        """Parse a response body, keeping the body itself as `.raw`."""
        feature = cls.model_validate(raw)
        feature._raw = raw
        return feature

    @property
    def raw(self) -> dict[str, Any]:
        return self._raw

    @property
    def id(self) -> FeatureId:
        return FeatureId(self.model_id, self.layer, self.index)

    @property
    def top_explanation(self) -> Optional[str]:
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
    vector: list[OptFloat] = Field(default_factory=list)
    created_at: Optional[str] = Field(None, alias="createdAt")

    _norm_index = field_validator("index", mode="before")(_index_to_int)


ModelInfo.model_rebuild()
