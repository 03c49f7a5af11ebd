"""The emulator's catalog rows: Model, Source, SourceSet and SourceRelease as
`prisma/schema.prisma` (apps/webapp) has their columns, and the bodies of the catalog routes
(`POST /api/model/list`, `GET /api/source-set`). A mixin of `EmulatorState`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ... import wire
from .config import EmulatorConfig, SourceSpec
from .seeded import CREATOR_ID, _iso

__all__ = ["CatalogRows"]


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


class CatalogRows:
    """Catalog rows of `EmulatorState` (built from `self.config`, never changed)."""

    config: EmulatorConfig
    _specs: dict[tuple[str, str], SourceSpec]

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
