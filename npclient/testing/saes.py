"""Synthetic SAEs with a known truth, written in sae_lens's on-disk format.

Grows the foundation's `synthetic.py` decoder into whole SAEs that `SAE.load_from_disk`
reads (`cfg.json` + `sae_weights.safetensors`, the exact files `save_model` writes), with
structure planted where geometry tools should find it:

- `days`: 7 features on a circle in a 2-D subspace, in order (Monday..Sunday: angle 2*pi*k/7);
- `months`: 12 features on a circle in another 2-D subspace, in order;
- a tree: a root, its children and grandchildren, each sharing its parent's direction
  (cos(parent, child) ~0.9);
- families split across two widths: `families[n]` lists the features of the *wide* SAE that
  each lie near narrow feature n (cos ~0.96) and near no other narrow feature;
- a toy attention head saved beside the SAE (`attention_head.safetensors`: `W_Q`, `W_K`,
  `W_V` as d_in x d_head, `W_O` as d_head x d_in, `W_OV` = W_V @ W_O as d_in x d_in):
  `null_space` features lie in the null space of `W_K` (d @ W_K = 0: invisible as keys),
  `suppressed` features are mapped by the OV circuit to `-suppression_gain` times themselves;
- an all-zero row (cosine undefined), optional NaN rows, and unit-norm noise features.

The planted parts sit in mutually orthogonal subspaces (circles, null space, suppressed space,
and the rest for tree and families), so one planted property does not blur another. Everything
is numpy + safetensors: no torch, no sae_lens, so the emulator can serve the same decoder.
Same arguments give bit-identical files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = [
    "DAYS",
    "MONTHS",
    "TREE",
    "ToyHead",
    "PlantedSAE",
    "SyntheticSAE",
    "plant",
    "split_families",
    "write_sae_folder",
    "write_head",
    "make_sae",
    "write_hf_cache",
    "HEAD_FILENAME",
    "min_d_sae",
    "can_plant",
    "make_emulator_sae",
    "write_emulator_sae",
]

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)
#: root -> children -> grandchildren (labels of the planted tree, in index order)
TREE: tuple[str, tuple[tuple[str, tuple[str, ...]], ...]] = (
    "animals",
    (("mammals", ("dogs", "cats")), ("birds", ("eagles", "sparrows")), ("fish", ("salmon", "sharks"))),
)
HEAD_FILENAME = "attention_head.safetensors"
SAE_CFG_FILENAME = "cfg.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
SAE_LENS_FORMAT_VERSION = "6.0.0"  # >= 6: sae_lens reads the config as is, metadata included

_CIRCLE_NOISE = 0.01
_CHILD_SPREAD = 0.5  # cos(parent, child) = 1/sqrt(1 + 0.25) ~ 0.89
_GRANDCHILD_SPREAD = 0.4  # ~ 0.93
_FAMILY_SPREAD = 0.3  # cos(narrow, wide) ~ 0.96
_NULL_DIM = 4
_SUPPRESSED_DIM = 4


@dataclass(frozen=True, eq=False)
class ToyHead:
    """One attention head over the SAE's space (rows act on residual vectors: `x @ W_K`)."""

    W_Q: np.ndarray  # (d_in, d_head)
    W_K: np.ndarray  # (d_in, d_head)
    W_V: np.ndarray  # (d_in, d_head)
    W_O: np.ndarray  # (d_head, d_in)
    suppression_gain: float

    @property
    def W_OV(self) -> np.ndarray:
        """The OV map (d_in x d_in): a residual vector x is written out as `x @ W_OV`."""
        return (self.W_V.astype(np.float64) @ self.W_O.astype(np.float64)).astype(np.float32)

    @property
    def d_head(self) -> int:
        return int(self.W_K.shape[1])


@dataclass(frozen=True, eq=False)
class PlantedSAE:
    """A decoder and what was planted in it (numpy only; nothing on disk)."""

    W_dec: np.ndarray  # float32 (d_sae, d_in)
    days: list[int]  # days[k] is the feature of DAYS[k]; ascending
    months: list[int]
    days_plane: np.ndarray  # (2, d_in) orthonormal basis of the days' subspace
    months_plane: np.ndarray
    tree_root: int
    tree: dict[int, list[int]]  # parent -> children, root first
    family_parents: list[int]  # narrow features that a wider SAE splits (see `split_families`)
    null_space: list[int]  # d @ head.W_K == 0
    suppressed: list[int]  # d @ head.W_OV == -gain * d
    null_basis: np.ndarray  # (4, d_in)
    suppressed_basis: np.ndarray  # (4, d_in)
    zero_rows: list[int]
    nan_rows: list[int]
    noise: list[int]
    head: ToyHead
    labels: dict[int, str]
    rest_basis: np.ndarray = field(repr=False)  # orthonormal basis of the tree/family subspace

    @property
    def d_sae(self) -> int:
        return int(self.W_dec.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.W_dec.shape[1])

    @property
    def tree_nodes(self) -> list[int]:
        out = [self.tree_root]
        for children in self.tree.values():
            out.extend(children)
        return out

    # The foundation's `SyntheticDecoder` names, so the emulator can serve either decoder.
    @property
    def weights(self) -> np.ndarray:
        """Alias of `W_dec` (float32, d_sae x d_in)."""
        return self.W_dec

    @property
    def circle(self) -> list[int]:
        """The 7-feature circle (`days`), in circle order."""
        return list(self.days)

    @property
    def planted(self) -> list[int]:
        """Every planted index except noise features, in a stable order."""
        out: list[int] = list(self.days) + list(self.months) + self.tree_nodes
        for part in (self.family_parents, self.null_space, self.suppressed, self.zero_rows, self.nan_rows):
            out.extend(part)
        return out

    def truth(self) -> dict[str, list[int]]:
        """Every planted index set by name."""
        return {
            "days": list(self.days), "months": list(self.months), "tree": self.tree_nodes,
            "family_parents": list(self.family_parents), "null_space": list(self.null_space),
            "suppressed": list(self.suppressed), "zero_rows": list(self.zero_rows),
            "nan_rows": list(self.nan_rows), "noise": list(self.noise),
        }


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]))


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _in_span(rng: np.random.Generator, basis: np.ndarray, n: int) -> np.ndarray:
    """n random unit vectors in the span of `basis` rows."""
    return _unit_rows(rng.standard_normal((n, basis.shape[0])) @ basis)


def _orthogonal_to(rng: np.random.Generator, basis: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """n random orthonormal vectors in span(basis) and orthogonal to unit vector v."""
    g = rng.standard_normal((n, basis.shape[0])) @ basis
    g -= np.outer(g @ v, v)
    q, _ = np.linalg.qr(g.T)
    return q.T[:n]


def min_d_sae(n_families: int = 8, n_null: int = 6, n_suppressed: int = 6) -> int:
    tree = 1 + sum(1 + len(g) for _, g in TREE[1])
    return len(DAYS) + len(MONTHS) + tree + n_families + n_null + n_suppressed + 1 + 8


def can_plant(d_sae: int, d_in: int) -> bool:
    """Whether `plant(d_sae, d_in)` (default sizes) fits; the emulator falls back otherwise."""
    return d_in >= 24 and d_sae >= min_d_sae()


def plant(
    d_sae: int,
    d_in: int = 64,
    seed: int = 0,
    *,
    n_families: int = 8,
    n_null: int = 6,
    n_suppressed: int = 6,
    n_zero: int = 1,
    n_nan: int = 0,
    d_head: int = 16,
    suppression_gain: float = 2.0,
) -> PlantedSAE:
    """Build a decoder with the planted structure described in the module docstring."""
    if d_in < 24:
        raise ValueError(f"d_in must be >= 24 to hold the planted subspaces, got {d_in}")
    if d_sae < min_d_sae(n_families, n_null, n_suppressed) + n_nan:
        raise ValueError(f"d_sae must be >= {min_d_sae(n_families, n_null, n_suppressed) + n_nan}, got {d_sae}")
    if not _SUPPRESSED_DIM < d_head <= d_in:
        raise ValueError(f"d_head must be in ({_SUPPRESSED_DIM}, d_in], got {d_head}")
    rng = _rng(seed, 0x5AE5, d_sae, d_in)
    basis, _ = np.linalg.qr(rng.standard_normal((d_in, d_in)))
    basis = basis.T  # rows: an orthonormal basis of R^d_in, cut into the planted subspaces
    days_plane, months_plane = basis[0:2], basis[2:4]
    null_basis = basis[4 : 4 + _NULL_DIM]
    sup_basis = basis[4 + _NULL_DIM : 4 + _NULL_DIM + _SUPPRESSED_DIM]
    rest = basis[4 + _NULL_DIM + _SUPPRESSED_DIM :]

    w = _unit_rows(rng.standard_normal((d_sae, d_in)))
    order = [int(i) for i in rng.permutation(d_sae)]
    pos = 0

    def take(n: int) -> list[int]:
        nonlocal pos
        out = sorted(order[pos : pos + n])
        pos += n
        return out

    labels: dict[int, str] = {}
    days, months = take(len(DAYS)), take(len(MONTHS))
    for idx, plane, names in ((days, days_plane, DAYS), (months, months_plane, MONTHS)):
        n = len(idx)
        theta = 2 * np.pi * np.arange(n) / n + rng.uniform(0, 2 * np.pi)
        pts = np.cos(theta)[:, None] * plane[0] + np.sin(theta)[:, None] * plane[1]
        pts += _CIRCLE_NOISE * rng.standard_normal(pts.shape) / np.sqrt(d_in)
        w[idx] = _unit_rows(pts)
        labels.update(zip(idx, names))

    root_label, branches = TREE
    tree_root = take(1)[0]
    children = take(len(branches))
    p = _in_span(rng, rest, 1)[0]
    w[tree_root] = p
    labels[tree_root] = root_label
    tree: dict[int, list[int]] = {tree_root: children}
    offsets = _orthogonal_to(rng, rest, p, len(children))
    child_spread = _CHILD_SPREAD * rng.uniform(0.8, 1.2, size=len(children))  # distinct cosines: no ties
    for child, e, s, (label, leaf_labels) in zip(children, offsets, child_spread, branches):
        c = _unit_rows(p + s * e)
        w[child] = c
        labels[child] = label
        leaves = take(len(leaf_labels))
        leaf_offsets = _orthogonal_to(rng, rest, c, len(leaves))
        spread = _GRANDCHILD_SPREAD * rng.uniform(0.8, 1.2, size=len(leaves))  # distinct cosines
        w[leaves] = _unit_rows(c + spread[:, None] * leaf_offsets)
        labels.update(zip(leaves, leaf_labels))
        tree[child] = leaves

    family_parents = take(n_families)
    w[family_parents] = _in_span(rng, rest, n_families)
    null_space = take(n_null)
    w[null_space] = _in_span(rng, null_basis, n_null)
    suppressed = take(n_suppressed)
    w[suppressed] = _in_span(rng, sup_basis, n_suppressed)
    zero_rows = take(n_zero)
    w[zero_rows] = 0.0
    nan_rows = take(n_nan)
    w[nan_rows] = np.nan
    noise = sorted(order[pos:])

    # The head. W_K = (I - N^T N) G: every vector in span(N) maps to 0 (the null space).
    g = rng.standard_normal((d_in, d_head)) / np.sqrt(d_in)
    proj_null = np.eye(d_in) - null_basis.T @ null_basis
    W_K = proj_null @ g
    W_Q = rng.standard_normal((d_in, d_head)) / np.sqrt(d_in)
    # OV = W_V @ W_O = -gain * S^T S + R M with R orthogonal to S: for d in span(S), d @ OV = -gain * d.
    other = rng.standard_normal((d_in, d_head - _SUPPRESSED_DIM))
    other -= sup_basis.T @ (sup_basis @ other)
    r, _ = np.linalg.qr(other)
    W_V = np.concatenate([sup_basis.T, r], axis=1)
    m = 0.3 * rng.standard_normal((d_head - _SUPPRESSED_DIM, d_in)) / np.sqrt(d_in)
    W_O = np.concatenate([-suppression_gain * sup_basis, m], axis=0)
    head = ToyHead(
        W_Q.astype(np.float32), W_K.astype(np.float32), W_V.astype(np.float32), W_O.astype(np.float32),
        float(suppression_gain),
    )
    return PlantedSAE(
        W_dec=w.astype(np.float32), days=days, months=months, days_plane=days_plane.astype(np.float32),
        months_plane=months_plane.astype(np.float32), tree_root=tree_root, tree=tree,
        family_parents=family_parents, null_space=null_space, suppressed=suppressed,
        null_basis=null_basis.astype(np.float32), suppressed_basis=sup_basis.astype(np.float32),
        zero_rows=zero_rows, nan_rows=nan_rows, noise=noise, head=head, labels=labels,
        rest_basis=rest.astype(np.float32),
    )


def split_families(
    narrow: PlantedSAE, d_sae_wide: int, seed: int = 0, sizes: tuple[int, ...] = (2, 3)
) -> tuple[np.ndarray, dict[int, list[int]]]:
    """A wider decoder whose families split the narrow SAE's `family_parents`.

    Returns (W_dec_wide, families): families[n] lists the wide features near narrow feature n
    (2 or 3 each, cycling through `sizes`); the rest of the wide SAE is unit-norm noise.
    """
    counts = [sizes[i % len(sizes)] for i in range(len(narrow.family_parents))]
    if d_sae_wide < sum(counts) + 1:
        raise ValueError(f"d_sae_wide must be >= {sum(counts) + 1}, got {d_sae_wide}")
    rng = _rng(seed, 0x3DE, d_sae_wide, narrow.d_sae, narrow.d_in)
    w = _unit_rows(rng.standard_normal((d_sae_wide, narrow.d_in)))
    order = [int(i) for i in rng.permutation(d_sae_wide)]
    pos = 0
    families: dict[int, list[int]] = {}
    for parent, k in zip(narrow.family_parents, counts):
        members = sorted(order[pos : pos + k])
        pos += k
        direction = narrow.W_dec[parent].astype(np.float64)
        offsets = _orthogonal_to(rng, narrow.rest_basis.astype(np.float64), direction, k)
        spread = _FAMILY_SPREAD * rng.uniform(0.8, 1.2, size=k)
        w[members] = _unit_rows(direction + spread[:, None] * offsets)
        families[parent] = members
    return w.astype(np.float32), families


# ---- files --------------------------------------------------------------------------------------


def write_sae_folder(
    path: str | Path,
    W_dec: np.ndarray,
    *,
    neuronpedia_id: Optional[str] = None,
    model_name: Optional[str] = None,
    hook_name: Optional[str] = None,
    dtype: str = "float32",
    W_enc: Optional[np.ndarray] = None,
    extra_metadata: Optional[dict] = None,
) -> Path:
    """Write a standard-architecture SAE exactly as sae_lens's `save_model` does.

    `W_enc` defaults to `W_dec.T` (NaN rows zeroed), biases to zero. `neuronpedia_id` goes
    under the config's `metadata`, where sae_lens 6 keeps it.
    """
    from safetensors.numpy import save_file

    if dtype not in ("float32", "float16"):
        raise ValueError("dtype must be float32 or float16 (numpy has no bfloat16)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    d_sae, d_in = W_dec.shape
    np_dtype = np.dtype(dtype)
    if W_enc is None:
        W_enc = np.nan_to_num(W_dec, nan=0.0).T
    tensors = {
        "W_dec": np.ascontiguousarray(W_dec, dtype=np_dtype),
        "W_enc": np.ascontiguousarray(W_enc, dtype=np_dtype),
        "b_dec": np.zeros(d_in, dtype=np_dtype),
        "b_enc": np.zeros(d_sae, dtype=np_dtype),
    }
    save_file(tensors, str(path / SAE_WEIGHTS_FILENAME))
    metadata: dict = {"sae_lens_version": SAE_LENS_FORMAT_VERSION, "sae_lens_training_version": SAE_LENS_FORMAT_VERSION}
    if model_name is not None:
        metadata["model_name"] = model_name
    if hook_name is not None:
        metadata["hook_name"] = hook_name
    if neuronpedia_id is not None:
        metadata["neuronpedia_id"] = neuronpedia_id
    metadata.update(extra_metadata or {})
    cfg = {
        "d_in": int(d_in), "d_sae": int(d_sae), "dtype": dtype, "device": "cpu", "apply_b_dec_to_input": True,
        "normalize_activations": "none", "reshape_activations": "none", "metadata": metadata,
        "architecture": "standard",
    }
    (path / SAE_CFG_FILENAME).write_text(json.dumps(cfg))
    return path


def write_head(path: str | Path, head: ToyHead) -> Path:
    """Save the toy head as a safetensors file (W_Q, W_K, W_V, W_O, W_OV)."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.ascontiguousarray(getattr(head, name), dtype=np.float32) for name in ("W_Q", "W_K", "W_V", "W_O", "W_OV")}
    save_file(tensors, str(path), metadata={"suppression_gain": repr(head.suppression_gain), "layout": "x @ W"})
    return path


@dataclass(frozen=True, eq=False)
class SyntheticSAE:
    """Two SAE folders (narrow and wide) and the truth planted in them."""

    path: Path  # the narrow SAE: cfg.json + sae_weights.safetensors + attention_head.safetensors
    wide_path: Path
    head_path: Path
    planted: PlantedSAE
    W_dec_wide: np.ndarray
    families: dict[int, list[int]]  # narrow index -> wide indices near it
    neuronpedia_id: Optional[str]
    wide_neuronpedia_id: Optional[str]

    @property
    def W_dec(self) -> np.ndarray:
        return self.planted.W_dec

    @property
    def head(self) -> ToyHead:
        return self.planted.head

    @property
    def d_sae(self) -> int:
        return self.planted.d_sae

    @property
    def d_sae_wide(self) -> int:
        return int(self.W_dec_wide.shape[0])

    @property
    def d_in(self) -> int:
        return self.planted.d_in

    def __getattr__(self, name: str):  # days, months, tree, null_space, suppressed, labels, ...
        if name.startswith("_") or name == "planted":
            raise AttributeError(name)
        return getattr(self.planted, name)


def make_sae(
    root: str | Path,
    *,
    d_in: int = 64,
    d_sae: int = 512,
    d_sae_wide: int = 1024,
    seed: int = 0,
    neuronpedia_id: Optional[str] = None,
    wide_neuronpedia_id: Optional[str] = None,
    model_name: Optional[str] = None,
    hook_name: Optional[str] = None,
    n_nan: int = 0,
    dtype: str = "float32",
) -> SyntheticSAE:
    """Write `root/narrow` (with the toy head beside its weights) and `root/wide`; return the truth."""
    root = Path(root)
    planted = plant(d_sae, d_in, seed, n_nan=n_nan)
    W_wide, families = split_families(planted, d_sae_wide, seed)
    narrow = write_sae_folder(root / "narrow", planted.W_dec, neuronpedia_id=neuronpedia_id,
                              model_name=model_name, hook_name=hook_name, dtype=dtype)
    head_path = write_head(narrow / HEAD_FILENAME, planted.head)
    wide = write_sae_folder(root / "wide", W_wide, neuronpedia_id=wide_neuronpedia_id,
                            model_name=model_name, hook_name=hook_name, dtype=dtype)
    return SyntheticSAE(narrow, wide, head_path, planted, W_wide, families, neuronpedia_id, wide_neuronpedia_id)


def make_emulator_sae(
    root: str | Path,
    state,
    model_id: str,
    source_id: str,
    *,
    d_sae_wide: Optional[int] = None,
    neuronpedia_id: Optional[str] = None,
    dtype: str = "float32",
) -> SyntheticSAE:
    """Write the SAE that an `EmulatorState` serves for (model_id, source_id), row for row.

    Same d_sae, d_in and seed (`state.decoder_seed`) as the emulator's decoder, so feature i
    of the emulator is row i of the folder's `W_dec`; `neuronpedia_id` defaults to
    "model_id/source_id". The wide SAE has `d_sae_wide` (default 2 x d_sae) features.
    """
    spec = state.source(model_id, source_id)
    if spec is None or spec.kind != "sae":
        raise KeyError(f"{model_id}/{source_id} is not an SAE source of this emulator")
    if not can_plant(spec.d_sae, spec.d_in):
        raise ValueError(f"{model_id}/{source_id} is too small for a planted SAE (d_sae >= {min_d_sae()}, d_in >= 24)")
    return make_sae(
        root, d_in=spec.d_in, d_sae=spec.d_sae, d_sae_wide=d_sae_wide or 2 * spec.d_sae,
        seed=state.decoder_seed(model_id, source_id),
        neuronpedia_id=neuronpedia_id or f"{model_id}/{source_id}", model_name=model_id,
        hook_name=getattr(spec, "hook", None), dtype=dtype,
    )


def write_emulator_sae(folder: str | Path, state, model_id: str, source_id: str, *, dtype: str = "float32") -> Path:
    """Write one sae_lens folder holding the decoder an `EmulatorState` serves for a source.

    Row i of `W_dec` is the emulator's feature i (the planted SAE of `make_emulator_sae`, without
    the wide SAE, which no emulator source serves); the toy head sits beside it as
    `attention_head.safetensors`. What `np-mirror emulator --write-sae` writes. Returns `folder`.
    """
    spec = state.source(model_id, source_id)
    if spec is None or spec.kind != "sae":
        raise KeyError(f"{model_id}/{source_id} is not an SAE source of this emulator")
    if not can_plant(spec.d_sae, spec.d_in):
        raise ValueError(f"{model_id}/{source_id} is too small for a planted SAE (d_sae >= {min_d_sae()}, d_in >= 24)")
    planted = plant(spec.d_sae, spec.d_in, state.decoder_seed(model_id, source_id))
    path = write_sae_folder(folder, planted.W_dec, neuronpedia_id=f"{model_id}/{source_id}", model_name=model_id,
                            hook_name=getattr(spec, "hook", None), dtype=dtype)
    write_head(path / HEAD_FILENAME, planted.head)
    return path


def write_hf_cache(
    cache_dir: str | Path,
    repo_id: str,
    folder_name: str,
    sae_folder: str | Path,
    *,
    revision: str = "main",
) -> Path:
    """Lay `sae_folder`'s files out in a Hugging Face hub cache as `hf_hub_download` leaves them.

    `<cache_dir>/models--<org>--<name>/blobs/<sha256>` holds each file,
    `snapshots/<commit>/<folder_name>/<file>` links to it (a relative symlink, or a copy where
    links are not allowed) and `refs/<revision>` holds the commit hash (no newline). With
    `HF_HUB_OFFLINE=1` and `HF_HUB_CACHE=cache_dir`, `SAE.from_pretrained` then loads the
    release whose registry entry points at (repo_id, folder_name) without any network.
    Returns the snapshot folder of `folder_name`.
    """
    import hashlib
    import os
    import shutil

    repo_dir = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    files = sorted(p for p in Path(sae_folder).iterdir() if p.is_file())
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    commit = hashlib.sha1(json.dumps([folder_name, sorted(digests.items())]).encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / commit / folder_name
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    for p in files:
        blob = repo_dir / "blobs" / digests[p.name]
        if not blob.exists():
            shutil.copyfile(p, blob)
        link = snapshot / p.name
        if link.exists() or link.is_symlink():
            link.unlink()
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:
            shutil.copyfile(blob, link)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    return snapshot
