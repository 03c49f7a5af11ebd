"""Attach an SAE's decoder to a mirrored source, and hand it back as a torch tensor.

`attach()` loads the decoder (any loader in `loaders.LOADERS`), checks it against what the
mirror knows (d_sae = the source's feature count; a `neuronpedia_id` in the weights' config
= the target), counts NaN and all-zero rows, copies it once into
`$NP_MIRROR_HOME/weights/<model>/<source>/decoder.npy` (plus `norms.npy`, the row norms) and
records it in the `weights` table. `decoder()` then memory-maps that copy without importing
sae_lens. Every error is one line (`WeightsError`) and attaches nothing: the copy is
written under a temporary name and moved into place inside the transaction that records it.

Memory: the copy is written in row blocks into a memory-mapped `.npy`, so a decoder is held
at most once (a bare safetensors file is itself memory-mapped, so not even once); sae_lens
loaders hold the SAE they load (encoder included) until the copy is written.

Storage dtypes: float32 (default), float16, bfloat16. numpy has no bfloat16, so a bfloat16
decoder is kept as its raw 16-bit patterns (a uint16 `.npy`) and viewed as
`torch.bfloat16` on the way out.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import WeightsError, WeightsMismatch, WeightsRequestError
from ..ids import SourceId
from ..paths import home
from ..store import weights as records
from ..store.catalog import stored_feature_count
from ..store.database import Database
from ..store.weights import WEIGHTS_COLUMNS, WeightsRecord
from . import registry
from .loaders import LOADERS, DecoderLoader, LoadedDecoder, LoadRequest, choose_loader

__all__ = [
    "DTYPES",
    "WEIGHTS_COLUMNS",
    "WeightsRecord",
    "attach",
    "decoder",
    "decoder_norms",
    "get_weights",
    "list_weights",
    "weights_root",
]

DTYPES = ("float32", "bfloat16", "float16")
_BLOCK_BYTES = 8 << 20  # rows copied at a time: ~8 MB of float32 per block

def weights_root() -> Path:
    """Where decoder copies live: `$NP_MIRROR_HOME/weights`."""
    return home() / "weights"


def _sid(source: SourceId | str) -> SourceId:
    return source if isinstance(source, SourceId) else SourceId.parse(source)


# ---- reading the table ------------------------------------------------------------------------


def list_weights(db: Database) -> list[WeightsRecord]:
    """Every attached decoder, by model and source."""
    return records.list_weights(db)


def get_weights(db: Database, source: SourceId | str) -> Optional[WeightsRecord]:
    """The attached decoder of `source`, or None."""
    return records.get_weights(db, _sid(source))


# ---- attaching ----------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(4 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_request(path: Optional[Path], tensor: Optional[str], transpose: bool, release: Optional[str],
                   sae_id: Optional[str], dtype: str) -> None:
    if dtype not in DTYPES:
        raise WeightsRequestError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}", option="dtype")
    if (release is None) != (sae_id is None):
        raise WeightsRequestError("give both release and sae_id, or neither",
                                  option="sae_id" if sae_id is None else "release")
    if path is not None and release is not None:
        raise WeightsRequestError("give either a path or a release and sae_id, not both", option="path")
    if path is not None and not path.exists():
        raise WeightsRequestError(f"no such file or folder: {path}", option="path")
    if (tensor is not None or transpose) and (path is None or path.is_dir()):
        raise WeightsRequestError("a tensor name or transpose applies to a bare safetensors file only (a path to a file)",
                                  option="tensor" if tensor is not None else "transpose")


def _validate(sid: SourceId, loaded: LoadedDecoder, feature_count: Optional[int],
              expected_id: Optional[str]) -> None:
    if loaded.d_sae <= 0 or loaded.d_in <= 0:
        raise WeightsMismatch(f"the decoder for {sid} is empty (shape {loaded.d_sae}x{loaded.d_in})")
    if feature_count is not None and loaded.d_sae != feature_count:
        hint = ""
        if loaded.d_in == feature_count:
            hint = (" (it looks stored d_in x d_sae: attach it with transpose)" if not loaded.transposed
                    else " (it looks stored d_sae x d_in: attach it without transpose)")
        raise WeightsMismatch(
            f"{sid} has {feature_count} features but the decoder has {loaded.d_sae} rows "
            f"(shape {loaded.d_sae}x{loaded.d_in}){hint}"
        )
    claimed = loaded.neuronpedia_id
    if claimed and claimed.strip() != str(sid):
        raise WeightsMismatch(f"these weights are {claimed.strip()} (neuronpedia_id in their config), not {sid}")
    if expected_id and expected_id != str(sid):
        raise WeightsMismatch(
            f"sae_lens's registry maps {loaded.release}/{loaded.sae_id} to {expected_id}, not {sid}"
        )


def _torch_dtype(name: Any) -> Any:
    import torch

    if name is None or isinstance(name, torch.dtype):
        return name
    text = str(name).replace("torch.", "")
    value = getattr(torch, text, None)
    if not isinstance(value, torch.dtype):
        raise WeightsRequestError(f"unknown dtype {name!r}", option="dtype")
    return value


def _write_copy(loaded: LoadedDecoder, decoder_tmp: Path, norms_tmp: Path, dtype: str,
                block_rows: int) -> tuple[int, int]:
    """Copy the decoder by row blocks into a `.npy`; count NaN/inf and all-zero rows; save norms."""
    import numpy as np
    import torch

    store_np = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dtype]
    store_torch = _torch_dtype(dtype)
    out = np.lib.format.open_memmap(decoder_tmp, mode="w+", dtype=store_np, shape=(loaded.d_sae, loaded.d_in))
    norms = np.empty(loaded.d_sae, dtype=np.float32)
    nan_rows = zero_rows = 0
    try:
        for start in range(0, loaded.d_sae, block_rows):
            stop = min(start + block_rows, loaded.d_sae)
            block = loaded.block(start, stop).to(store_torch)
            values = block.float()
            nan_rows += int((~torch.isfinite(values)).any(dim=1).sum())
            zero_rows += int((values == 0).all(dim=1).sum())
            norms[start:stop] = torch.linalg.vector_norm(values, dim=1).numpy()
            if dtype == "bfloat16":
                out[start:stop] = block.view(torch.int16).numpy().view(np.uint16)
            else:
                out[start:stop] = block.numpy()
        out.flush()
    finally:
        del out
    np.save(norms_tmp, norms)
    return nan_rows, zero_rows


def attach(
    db: Database,
    source: SourceId | str,
    *,
    path: Union[str, Path, None] = None,
    tensor: Optional[str] = None,
    transpose: bool = False,
    release: Optional[str] = None,
    sae_id: Optional[str] = None,
    dtype: str = "float32",
    loader: Union[str, DecoderLoader, None] = None,
    root: Union[str, Path, None] = None,
    block_rows: Optional[int] = None,
) -> WeightsRecord:
    """Load `source`'s decoder, check it, keep a copy and record it; return the record.

    Where the weights come from: `path` (an sae_lens folder, or a bare safetensors file with
    `tensor` / `transpose`), or `release` + `sae_id`, or else sae_lens's registry entry for
    the source (then the mirror's saelensRelease/saelensSaeId). `loader` forces a loader by
    name (see `loaders.LOADERS`) or passes one. `dtype` is the dtype the copy is kept in.
    Attaching again replaces the previous decoder of the source.
    """
    sid = _sid(source)
    p = Path(path).expanduser() if path is not None else None
    _check_request(p, tensor, transpose, release, sae_id, dtype)
    if block_rows is not None and block_rows < 1:
        raise WeightsRequestError(f"block_rows must be >= 1, got {block_rows}", option="block_rows")

    expected_id: Optional[str] = None  # what sae_lens's registry says (release, sae_id) is
    if p is None:
        if release is None:
            resolution = registry.resolve(sid, db)
        else:
            resolution = registry.Resolution(release, sae_id or "", "given")
        release, sae_id = resolution.release, resolution.sae_id
        if resolution.entry is not None:
            expected_id = resolution.entry.neuronpedia_id
        else:
            expected_id = registry.neuronpedia_id(release, sae_id)
    request = LoadRequest(path=p, tensor=tensor, transpose=transpose, release=release, sae_id=sae_id, dtype=dtype)
    if loader is None or isinstance(loader, str):
        name = loader or choose_loader(request)
        if name not in LOADERS:
            raise WeightsRequestError(f"no weights loader named {name!r}; known: {', '.join(sorted(LOADERS))}",
                                      option="loader")
        load = LOADERS[name]
    else:
        name, load = getattr(loader, "__name__", "custom"), loader

    feature_count = stored_feature_count(db, sid)  # before loading: a bad --db fails fast
    if name == "registry" and release and sae_id:
        from .hub import require_hub_or_cache

        require_hub_or_cache(release, sae_id)  # not cached and offline: one line now, before sae_lens loads
    loaded = load(request)
    loaded.release = loaded.release or release
    loaded.sae_id = loaded.sae_id or sae_id
    _validate(sid, loaded, feature_count, expected_id)
    if feature_count is None:
        loaded.notes.append(f"the mirror does not know {sid}'s feature count (sync it first), so d_sae={loaded.d_sae} was not checked")
    if loaded.d_sae < loaded.d_in and not loaded.output_space:
        loaded.notes.append(f"d_sae={loaded.d_sae} < d_in={loaded.d_in}: is the tensor stored d_in x d_sae (then attach it with transpose)?")
    if block_rows is None:
        block_rows = max(1, _BLOCK_BYTES // (4 * loaded.d_in))

    folder = Path(root).expanduser() if root is not None else weights_root()
    target = folder / sid.model_id / sid.source
    target.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    decoder_tmp = target / f".tmp-{tag}-decoder.npy"  # ends in .npy: np.save would append it
    norms_tmp = target / f".tmp-{tag}-norms.npy"
    decoder_final = (target / "decoder.npy").resolve()
    norms_final = decoder_final.with_name("norms.npy")
    try:
        nan_rows, zero_rows = _write_copy(loaded, decoder_tmp, norms_tmp, dtype, block_rows)
        source_file = loaded.source_file
        digest = _sha256(source_file) if source_file is not None else None
        record = WeightsRecord(
            model_id=sid.model_id,
            source=sid.source,
            loader=name,
            source_path=str(p.resolve()) if p is not None else (str(source_file) if source_file else None),
            sha256=digest,
            tensor_name=loaded.tensor_name,
            transposed=loaded.transposed,
            release=loaded.release,
            sae_id=loaded.sae_id,
            architecture=loaded.architecture,
            output_space=loaded.output_space,
            hook_name=loaded.hook_name,
            neuronpedia_id=loaded.neuronpedia_id or expected_id,
            d_sae=loaded.d_sae,
            d_in=loaded.d_in,
            source_dtype=loaded.matrix_dtype,
            dtype=dtype,
            nan_rows=nan_rows,
            zero_rows=zero_rows,
            decoder_path=str(decoder_final),
            notes=tuple(loaded.notes),
        )
        del loaded  # the sae_lens SAE (if any) goes before the database work

        def move_into_place() -> None:
            os.replace(norms_tmp, norms_final)
            os.replace(decoder_tmp, decoder_final)

        records.save_weights(db, record, on_commit=move_into_place)
    finally:
        for leftover in (decoder_tmp, norms_tmp):
            with contextlib.suppress(OSError):
                leftover.unlink()
    stored = get_weights(db, sid)
    if stored is None:  # pragma: no cover - committed just above
        raise WeightsError(f"the weights of {sid} were not recorded")
    return WeightsRecord(**{**asdict(stored), "notes": record.notes})


# ---- reading the copy ---------------------------------------------------------------------------


def _require(db: Database, source: SourceId | str) -> WeightsRecord:
    sid = _sid(source)
    record = get_weights(db, sid)
    if record is None:
        raise WeightsError(f"no weights attached for {sid}; run `np-mirror weights add {sid}` first")
    if not Path(record.decoder_path).is_file():
        raise WeightsError(f"the decoder copy of {sid} is missing ({record.decoder_path}); run `np-mirror weights add {sid}` again")
    return record


def decoder(db: Database, source: SourceId | str, device: Any = None, dtype: Any = None) -> Any:
    """The decoder of `source` as a torch tensor (d_sae x d_in): row i is feature i.

    Memory-mapped from the copy `attach` made (copy-on-write: writing into the tensor never
    touches the file), so nothing is read until used. `device` / `dtype` move or convert it
    (which does read it); by default it stays on the CPU in the dtype it was attached with.
    """
    import numpy as np
    import torch

    record, array = _mapped(db, source)
    if record.dtype == "bfloat16":
        tensor = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    else:
        tensor = torch.from_numpy(array)
    if device is not None or dtype is not None:
        tensor = tensor.to(device=device, dtype=_torch_dtype(dtype))
    return tensor


def decoder_array(db: Database, source: SourceId | str) -> Optional[Any]:
    """The float32 decoder of `source` as a numpy array (memory-mapped, copy-on-write), without
    torch; None where it was attached in bfloat16 (numpy has no such dtype: use `decoder`)."""
    record, array = _mapped(db, source)
    return None if record.dtype == "bfloat16" else array


def _mapped(db: Database, source: SourceId | str) -> tuple[WeightsRecord, Any]:
    """The weights record of `source` and its decoder copy, memory-mapped and checked against it."""
    import numpy as np

    record = _require(db, source)
    try:
        array = np.load(record.decoder_path, mmap_mode="c")
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read the decoder copy {record.decoder_path}: {exc}") from None
    if array.shape != (record.d_sae, record.d_in):
        raise WeightsError(
            f"the decoder copy {record.decoder_path} has shape {array.shape}, the mirror recorded "
            f"({record.d_sae}, {record.d_in}); run `np-mirror weights add` again"
        )
    return record, array


def decoder_norms(db: Database, source: SourceId | str) -> Any:
    """Row norms of the decoder (float32 numpy array, d_sae), computed once at attach time."""
    import numpy as np

    record = _require(db, source)
    try:
        return np.load(record.norms_path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read {record.norms_path}: {exc}") from None
