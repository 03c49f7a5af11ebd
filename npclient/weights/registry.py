"""Neuronpedia source id <-> sae_lens (release, sae_id), from the registry sae_lens ships.

sae_lens's `pretrained_saes.yaml` (read by
`sae_lens.loading.pretrained_saes_directory.get_pretrained_saes_directory()`) maps each
release + sae_id to a `neuronpedia:` id such as `gpt2-small/7-res-jb`. We invert it once
(cached) and fall back to the `saelensRelease` / `saelensSaeId` that Neuronpedia's source
record carries, when the mirror has synced it (`sources.saelens_release`/`saelens_sae_id`).

Importing `sae_lens.loading...` imports the whole `sae_lens` package (~10 s, transformer_lens
included), so the registry is read here straight from the YAML file that sae_lens ships (found
without importing the package, parsed as `get_pretrained_saes_directory` parses it, ~0.5 s):
looking a source up, and deciding whether the Hugging Face hub is needed at all, costs no
sae_lens import. Only loading weights imports it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional

from ..errors import WeightsError
from ..ids import SourceId

if TYPE_CHECKING:
    from ..store.database import Database

__all__ = ["RegistryEntry", "Resolution", "registry_index", "lookup", "neuronpedia_id", "resolve", "repo_and_folder"]


@dataclass(frozen=True)
class RegistryEntry:
    """One SAE of sae_lens's registry that carries a Neuronpedia id."""

    neuronpedia_id: str
    release: str
    sae_id: str
    repo_id: str
    path: str  # folder (or file) inside the Hugging Face repo
    model: str
    conversion_func: Optional[str]


@dataclass(frozen=True)
class Resolution:
    """Where a source's weights come from: `via` says which table answered."""

    release: str
    sae_id: str
    via: Literal["registry", "mirror", "given"]
    entry: Optional[RegistryEntry] = None


@dataclass(frozen=True)
class _Release:
    """One release of sae_lens's `pretrained_saes.yaml`: the fields of its `PretrainedSAELookup` we use."""

    repo_id: str
    model: str
    conversion_func: Optional[str]
    saes_map: dict
    neuronpedia_id: dict


@functools.cache
def _directory() -> dict[str, _Release]:
    """sae_lens's registry, read from the YAML it ships without importing sae_lens."""
    import importlib.util
    from pathlib import Path

    import yaml

    spec = importlib.util.find_spec("sae_lens")
    if spec is None or spec.origin is None:  # pragma: no cover - sae_lens is a dependency
        raise WeightsError("sae_lens is not installed; pip install sae-lens")
    path = Path(spec.origin).parent / "pretrained_saes.yaml"
    with open(path, encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    directory: dict[str, _Release] = {}
    for release, value in (data or {}).items():
        saes = value.get("saes") or []
        directory[release] = _Release(
            repo_id=value["repo_id"],
            model=value.get("model", ""),
            conversion_func=value.get("conversion_func"),
            saes_map={h["id"]: str(h["path"]) for h in saes},
            neuronpedia_id={h["id"]: h.get("neuronpedia") for h in saes},
        )
    return directory


def repo_and_folder(release: str, sae_id: str) -> tuple[str, str]:
    """(Hugging Face repo, folder in it) of a release's SAE, as sae_lens's
    `get_repo_id_and_folder_name` gives them (a release it does not list is a repo itself)."""
    entry = _directory().get(release)
    if entry is None:
        return release, sae_id
    return entry.repo_id, entry.saes_map.get(sae_id, sae_id)


@functools.cache
def registry_index() -> dict[str, RegistryEntry]:
    """Neuronpedia id -> registry entry, for every SAE in sae_lens's registry that has one.

    If two entries ever claimed the same id, the first one in the file wins (none do in
    sae_lens 6.54: 2,441 ids, all distinct).
    """
    index: dict[str, RegistryEntry] = {}
    for release, lookup_ in _directory().items():
        for sae_id, np_id in (lookup_.neuronpedia_id or {}).items():
            if not np_id or np_id in index:
                continue
            index[np_id] = RegistryEntry(
                neuronpedia_id=np_id,
                release=release,
                sae_id=sae_id,
                repo_id=lookup_.repo_id,
                path=lookup_.saes_map.get(sae_id, sae_id),
                model=lookup_.model,
                conversion_func=lookup_.conversion_func,
            )
    return index


def _sid(source: SourceId | str) -> SourceId:
    return source if isinstance(source, SourceId) else SourceId.parse(source)


def lookup(source: SourceId | str) -> Optional[RegistryEntry]:
    """The registry entry whose `neuronpedia:` id is `source`, or None."""
    return registry_index().get(str(_sid(source)))


def neuronpedia_id(release: str, sae_id: str) -> Optional[str]:
    """The Neuronpedia id the registry gives (release, sae_id); None if unknown or unset."""
    entry = _directory().get(release)
    if entry is None:
        return None
    return (entry.neuronpedia_id or {}).get(sae_id) or None


def _from_mirror(db: "Database", sid: SourceId) -> Optional[tuple[str, str]]:
    with db.connect() as cur:
        rows = cur.execute(
            "SELECT saelens_release, saelens_sae_id FROM sources WHERE model_id = ? AND source = ?",
            [sid.model_id, sid.source],
        ).fetchall()
    if rows and rows[0][0] and rows[0][1]:
        return rows[0][0], rows[0][1]
    return None


def resolve(source: SourceId | str, db: Optional["Database"] = None) -> Resolution:
    """(release, sae_id) for a Neuronpedia source: sae_lens's registry, then the mirror.

    Raises `WeightsError` (one line) when neither knows the source.
    """
    sid = _sid(source)
    entry = lookup(sid)
    if entry is not None:
        return Resolution(entry.release, entry.sae_id, "registry", entry)
    if db is not None:
        found = _from_mirror(db, sid)
        if found is not None:
            return Resolution(found[0], found[1], "mirror", None)
    raise WeightsError(
        f"{sid} is not in sae_lens's registry and the mirror has no saelensRelease/saelensSaeId for it; "
        "give its sae_lens release and sae_id, or a path to its weights"
    )
