"""The shapes serve answers in: JSON out and in, Neuronpedia's rows, activation order.

`dumps`/`loads` write and read bodies the way Neuronpedia's JSON does (NaN and Infinity out as
`null`, wide integers kept); the column defaults are those of `prisma/schema.prisma`, which a
row built from what the mirror stores is laid over (`_overlay`); the activation helpers rank
as `wire.activation_rank_key` says.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional

import orjson
import pydantic_core

from .. import wire

__all__ = ["dumps", "loads"]

# --------------------------------------------------------------------------- JSON out


def _finite(value: Any) -> Any:
    """`value` with every NaN/Infinity replaced by None (what JSON.stringify writes)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any) -> bytes:
    """Compact JSON that is always valid: NaN/Infinity become `null` (orjson does that); the rare
    integer wider than 64 bits or lone surrogate (orjson refuses both) is written by the standard
    library, exactly."""
    try:
        return orjson.dumps(value)
    except TypeError:
        # ASCII with escapes: a lone surrogate (JSON.parse accepts "\ud800") cannot be UTF-8
        return json.dumps(_finite(value), separators=(",", ":"), allow_nan=False).encode()


def loads(body: bytes | str) -> Any:
    """A stored body, exactly (wide integers kept) and leniently: an export's bare `NaN`,
    `Infinity` and out-of-range numbers are read as floats (and written back as `null`)."""
    return pydantic_core.from_json(body, allow_inf_nan=True)


# --------------------------------------------------------------------------- Neuronpedia's column defaults
# prisma/schema.prisma (apps/webapp), in column order. `visibility` defaults to PRIVATE there; what
# a mirror holds came from public answers, so PUBLIC. Required columns without a default (strings:
# "", integers and dates: null) are the ones the mirror may not know.


def _model_defaults(model_id: str) -> dict[str, Any]:
    return {
        "id": model_id, "displayNameShort": "", "displayName": "", "creatorId": "", "tlensId": None,
        "openRouterId": None, "dimension": None, "thinking": False, "visibility": "PUBLIC",
        "defaultSourceSetName": None, "defaultSourceId": None, "defaultGraphSourceSetName": None,
        "inferenceEnabled": False, "instruct": False, "layers": None, "neuronsPerLayer": None,
        "createdAt": None, "owner": "", "updatedAt": None, "website": None,
    }


def _source_defaults(model_id: str, source_id: str) -> dict[str, Any]:
    return {
        "id": source_id, "modelId": model_id, "hasDashboards": True, "inferenceEnabled": False,
        "saelensConfig": None, "saelensRelease": None, "saelensSaeId": None, "hfRepoId": None,
        "hfFolderId": None, "visibility": "PUBLIC", "defaultOfModelId": None, "setName": wire.set_name_of(source_id),
        "creatorId": "", "hasUmap": False, "hasUmapLogSparsity": False, "hasUmapClusters": False,
        "num_prompts": None, "num_tokens_in_prompt": None, "dataset": None, "notes": None,
        "cosSimMatchModelId": None, "cosSimMatchSourceId": None, "createdAt": None,
    }


def _set_defaults(model_id: str, set_name: str) -> dict[str, Any]:
    return {
        "modelId": model_id, "name": set_name, "hasDashboards": True, "allowInferenceSearch": True,
        "visibility": "PUBLIC", "description": "", "type": "", "creatorName": "", "urls": [],
        "creatorEmail": None, "creatorId": "", "releaseName": None, "hasGraphs": False, "graphEnabled": False,
        "similarityMatrixEnabled": False, "defaultOfModelId": None, "defaultGraphModelId": None,
        "defaultRange": 1, "defaultShowBreaks": True, "showDfa": False, "showCorrelated": False,
        "showHeadAttribution": False, "showUmap": False, "createdAt": None,
    }


def _release_defaults(name: str) -> dict[str, Any]:
    return {
        "name": name, "visibility": "PUBLIC", "isNewUi": False, "featured": False, "description": "",
        "descriptionShort": None, "urls": [], "creatorEmail": None, "creatorName": "", "creatorNameShort": None,
        "creatorId": "", "defaultSourceSetName": None, "defaultSourceId": None, "defaultUmapSourceIds": [],
        "createdAt": None,
    }


def _overlay(base: dict[str, Any], *layers: Optional[dict[str, Any]]) -> dict[str, Any]:
    """`base` updated by each layer in turn; a layer's null never hides a value an earlier one knew."""
    out = dict(base)
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        for key, value in layer.items():
            if value is not None or out.get(key) is None:
                out[key] = value
    return out


def _visible(row: dict[str, Any], *allowed: str) -> bool:
    return row.get("visibility") in (None, *allowed)


# --------------------------------------------------------------------------- activations


def _act_key(a: Any) -> tuple[float, str]:
    return wire.activation_rank_key(a.get("maxValue"), a.get("id"))


def _all_dicts(items: Any) -> bool:
    return isinstance(items, list) and all(isinstance(a, dict) for a in items)


def _in_rank_order(acts: Any) -> bool:
    if not _all_dicts(acts):
        return True  # nothing we can rank: leave it as stored
    keys = [_act_key(a) for a in acts]
    return all(keys[k] <= keys[k + 1] for k in range(len(keys) - 1))


def _by_storage_id(items: list[Any]) -> list[Any]:
    """Database order for a query without ORDER BY, as the emulator models it: by row id."""
    if _all_dicts(items) and all(isinstance(x.get("id"), str) for x in items):
        return sorted(items, key=lambda x: x["id"])
    return items
