"""Decoder loaders: a small name -> function table, as sae_lens keeps `NAMED_PRETRAINED_SAE_LOADERS`.

Every loader takes a `LoadRequest` and returns a `LoadedDecoder`: the decoder (`W_dec`,
d_sae x d_in, row i = Neuronpedia feature i) plus what the config says about it. Three ship:

- `folder`: a local sae_lens folder (`cfg.json` + `sae_weights.safetensors`) through
  `SAE.load_from_disk`, so any architecture sae_lens knows loads (standard, topk, jumprelu,
  gated, transcoders...). A transcoder's decoder lives in its *output* space (d_out), not
  its input space: `output_space` says so and `d_in` is then the decoder's width (d_out).
- `registry`: `SAE.from_pretrained(release, sae_id)`, which reads the Hugging Face cache
  (offline once the cache holds the files, `HF_HUB_OFFLINE=1`).
- `safetensors`: one tensor of a bare safetensors file, memory-mapped straight from the
  file (no torch, no sae_lens, no copy): `tensor` names it (default `W_dec`, or the only 2-D
  tensor), `transpose` when it is stored d_in x d_sae.

`import sae_lens` (~10 s) and `import torch` happen inside the loaders that need them.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

from ..errors import CorruptWeights, InvalidOptionError, WeightsError, WeightsRequestError

__all__ = [
    "LoadRequest",
    "LoadedDecoder",
    "DecoderLoader",
    "LOADERS",
    "register_loader",
    "choose_loader",
    "load_folder",
    "load_registry",
    "load_safetensors",
    "SafetensorsTensor",
    "read_safetensors_header",
]

SAE_CFG_FILENAME = "cfg.json"  # sae_lens.constants, repeated so reading them needs no import
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"


@dataclass(frozen=True)
class LoadRequest:
    """What `weights add` was asked to load. `dtype` is the dtype the decoder is kept in."""

    path: Optional[Path] = None
    tensor: Optional[str] = None
    transpose: bool = False
    release: Optional[str] = None
    sae_id: Optional[str] = None
    dtype: str = "float32"


@dataclass
class LoadedDecoder:
    """A decoder ready to copy: `matrix` is (d_sae, d_in) after any transpose.

    `matrix` is a torch tensor (sae_lens loaders) or a numpy array / memory map (bare
    safetensors; bfloat16 arrives as its raw uint16 bits, `matrix_dtype` says so).
    """

    matrix: Any
    matrix_dtype: str
    d_sae: int
    d_in: int
    source_file: Optional[Path]  # the file whose sha256 is recorded
    architecture: Optional[str] = None
    neuronpedia_id: Optional[str] = None  # what the weights' own config claims
    hook_name: Optional[str] = None
    release: Optional[str] = None
    sae_id: Optional[str] = None
    tensor_name: Optional[str] = None
    transposed: bool = False
    output_space: bool = False
    notes: list[str] = field(default_factory=list)

    def block(self, start: int, stop: int) -> Any:
        """Rows [start, stop) as a contiguous CPU torch tensor, in the matrix's own dtype."""
        import numpy as np
        import torch

        m = self.matrix
        if isinstance(m, torch.Tensor):
            return m[start:stop].detach().to("cpu").contiguous()
        part = np.array(m[start:stop], order="C", copy=True)  # one block, writable: torch wants that
        if self.matrix_dtype == "bfloat16":
            return torch.from_numpy(part.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(part)


class DecoderLoader(Protocol):
    def __call__(self, request: LoadRequest) -> LoadedDecoder: ...


#: name -> loader. `weights.attach(..., loader="name")` picks one; `choose_loader` guesses.
LOADERS: dict[str, DecoderLoader] = {}


def register_loader(name: str, loader: DecoderLoader) -> None:
    """Add a loader under `name`; a name is registered once (as sae_lens's registry does)."""
    if name in LOADERS:
        raise InvalidOptionError(f"a weights loader named {name!r} is already registered", option="name")
    LOADERS[name] = loader


def choose_loader(request: LoadRequest) -> str:
    """`folder` for a directory, `safetensors` for a file, `registry` without a path."""
    if request.path is None:
        return "registry"
    return "folder" if Path(request.path).is_dir() else "safetensors"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


# ---- safetensors, read without torch --------------------------------------------------------

# safetensors dtype -> (numpy dtype name to map it with, bytes per element)
_ST_DTYPES: dict[str, tuple[Optional[str], int]] = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("uint16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
    "U64": ("uint64", 8), "U32": ("uint32", 4), "U16": ("uint16", 2), "U8": ("uint8", 1),
    "BOOL": ("bool", 1), "F8_E4M3": (None, 1), "F8_E5M2": (None, 1),
}
_FLOAT_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class SafetensorsTensor:
    name: str
    dtype: str  # safetensors spelling: F32, BF16, ...
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    stop: int


def read_safetensors_header(path: str | Path) -> tuple[dict[str, SafetensorsTensor], dict[str, str]]:
    """Tensors and `__metadata__` of a safetensors file, checked against the file's size.

    Raises `CorruptWeights` for anything that is not a whole safetensors file (too short, a
    header that is not JSON, offsets past the end: a truncated download).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CorruptWeights(f"{path} is not a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > _MAX_HEADER or 8 + n > size:
                raise CorruptWeights(f"{path} is not a safetensors file, or is truncated (header length {n}, file {size} bytes)")
            raw = fh.read(n)
    except OSError as exc:
        raise WeightsError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise CorruptWeights(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CorruptWeights(f"{path} is not a safetensors file (its header is not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise CorruptWeights(f"{path} has a malformed __metadata__")
    base = 8 + n
    tensors: dict[str, SafetensorsTensor] = {}
    for name, info in header.items():
        try:
            dtype = info["dtype"]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CorruptWeights(f"{path}: tensor {name!r} has a malformed header entry") from None
        if dtype not in _ST_DTYPES:
            raise CorruptWeights(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        if any(d < 0 for d in shape) or not 0 <= begin <= end:
            raise CorruptWeights(f"{path}: tensor {name!r} has a malformed shape or offsets")
        if end - begin != math.prod(shape) * _ST_DTYPES[dtype][1]:
            raise CorruptWeights(f"{path}: tensor {name!r} has {end - begin} bytes for shape {list(shape)} {dtype}")
        if base + end > size:
            raise CorruptWeights(
                f"{path} is truncated: tensor {name!r} ends at byte {base + end} but the file has {size}"
            )
        tensors[name] = SafetensorsTensor(name, dtype, shape, base + begin, base + end)
    return tensors, {str(k): str(v) for k, v in meta.items()}


def _check_safetensors(path: Path) -> dict[str, SafetensorsTensor]:
    tensors, _ = read_safetensors_header(path)
    return tensors


def load_safetensors(request: LoadRequest) -> LoadedDecoder:
    """One 2-D float tensor of a bare safetensors file, memory-mapped (never read whole)."""
    import numpy as np

    if request.path is None:
        raise WeightsRequestError("the safetensors loader needs the path of a file", option="path")
    path = Path(request.path)
    tensors, meta = read_safetensors_header(path)
    matrices = sorted(n for n, t in tensors.items() if len(t.shape) == 2)
    if request.tensor is not None:
        name = request.tensor
        if name not in tensors:
            listed = ", ".join(sorted(tensors)[:12]) or "none"
            raise WeightsRequestError(f"{path} has no tensor {name!r}; it has: {listed}", option="tensor")
    elif "W_dec" in tensors:
        name = "W_dec"
    elif len(matrices) == 1:
        name = matrices[0]
    else:
        raise WeightsRequestError(
            f"{path} has {len(matrices)} 2-D tensors ({', '.join(matrices[:12]) or 'none'}); name the decoder's tensor",
            option="tensor",
        )
    t = tensors[name]
    if len(t.shape) != 2:
        raise WeightsError(f"tensor {name!r} in {path} has shape {list(t.shape)}; a decoder is 2-D (d_sae x d_in)")
    if t.dtype not in _FLOAT_NAMES:
        raise WeightsError(f"tensor {name!r} in {path} is {t.dtype}; a decoder is float32, float16, bfloat16 or float64")
    np_dtype = _ST_DTYPES[t.dtype][0]
    if t.stop == t.start:
        matrix = np.zeros(t.shape, dtype=np_dtype)
    else:
        matrix = np.memmap(path, dtype=np_dtype, mode="r", offset=t.start, shape=t.shape)
    if request.transpose:
        matrix = matrix.T
    d_sae, d_in = matrix.shape
    return LoadedDecoder(
        matrix=matrix,
        matrix_dtype=_FLOAT_NAMES[t.dtype],
        d_sae=int(d_sae),
        d_in=int(d_in),
        source_file=path,
        architecture=None,
        neuronpedia_id=meta.get("neuronpedia_id") or None,
        hook_name=meta.get("hook_name") or None,
        tensor_name=name,
        transposed=request.transpose,
    )


# ---- sae_lens ---------------------------------------------------------------------------------


def _from_sae(sae: Any, **extra: Any) -> LoadedDecoder:
    cfg = sae.cfg
    metadata = getattr(cfg, "metadata", None)
    get = metadata.get if metadata is not None else (lambda key, default=None: default)
    w = sae.W_dec.detach()
    if w.ndim != 2:
        raise WeightsError(f"this SAE's W_dec has shape {list(w.shape)}; only 2-D decoders can be attached")
    output_space = hasattr(cfg, "d_out")
    notes = []
    if output_space:
        notes.append(f"{cfg.architecture()}: the decoder lives in the output space (d_out={w.shape[1]}), not the input space (d_in={cfg.d_in})")
    return LoadedDecoder(
        matrix=w,
        matrix_dtype=str(w.dtype).replace("torch.", ""),
        d_sae=int(w.shape[0]),
        d_in=int(w.shape[1]),
        architecture=cfg.architecture(),
        neuronpedia_id=get("neuronpedia_id") or None,
        hook_name=get("hook_name") or None,
        output_space=output_space,
        notes=notes,
        **extra,
    )


def load_folder(request: LoadRequest) -> LoadedDecoder:
    """A local sae_lens folder through `SAE.load_from_disk` (any architecture sae_lens knows)."""
    if request.path is None:
        raise WeightsRequestError("the folder loader needs the path of a folder", option="path")
    folder = Path(request.path)
    if request.tensor is not None or request.transpose:
        raise WeightsRequestError("a tensor name or transpose applies to a bare safetensors file, not to an sae_lens folder",
                                  option="tensor" if request.tensor is not None else "transpose")
    cfg_path = folder / SAE_CFG_FILENAME
    weights_path = folder / SAE_WEIGHTS_FILENAME
    if not cfg_path.is_file():
        raise WeightsError(f"{folder} is not an sae_lens folder (no {SAE_CFG_FILENAME})")
    if not weights_path.is_file():
        raise WeightsError(f"{folder} is not an sae_lens folder (no {SAE_WEIGHTS_FILENAME})")
    try:
        json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise CorruptWeights(f"{cfg_path} is not readable JSON: {_first_line(exc)}") from None
    tensors = _check_safetensors(weights_path)  # a clear line for a truncated file, before torch reads it
    if "W_dec" not in tensors:
        raise CorruptWeights(f"{weights_path} has no W_dec tensor (it has: {', '.join(sorted(tensors)[:12]) or 'none'})")
    from sae_lens import SAE

    try:
        sae = SAE.load_from_disk(folder, device="cpu", dtype=request.dtype)
    except Exception as exc:  # noqa: BLE001 - sae_lens raises many kinds; one line out
        raise WeightsError(f"sae_lens cannot load {folder}: {_first_line(exc)}") from None
    return _from_sae(sae, source_file=weights_path)


def _cached_source_file(repo_id: str, folder: str) -> Optional[Path]:
    """The weights file from_pretrained read, found in the Hugging Face cache (for its sha256)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in (f"{folder}/{SAE_WEIGHTS_FILENAME}", f"{folder}/params.npz", f"{folder}/ae.pt", folder):
        try:
            found = try_to_load_from_cache(repo_id, filename)
        except Exception:  # noqa: BLE001 - a malformed name for this repo; try the next
            continue
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def load_registry(request: LoadRequest) -> LoadedDecoder:
    """`SAE.from_pretrained(release, sae_id)` through the Hugging Face cache."""
    if not request.release or not request.sae_id:
        raise WeightsRequestError("the registry loader needs a release and an sae_id", option="release")
    if request.tensor is not None or request.transpose:
        raise WeightsRequestError("a tensor name or transpose applies to a bare safetensors file only",
                                  option="tensor" if request.tensor is not None else "transpose")
    from huggingface_hub import constants as hf_constants
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_repo_id_and_folder_name

    try:
        sae = SAE.from_pretrained(request.release, request.sae_id, device="cpu", dtype=request.dtype)
    except Exception as exc:  # noqa: BLE001
        text = _first_line(exc)
        kind = type(exc).__name__
        if kind in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") or "offline" in text.lower():
            from ..errors import HubUnreachable

            raise HubUnreachable(
                f"{request.release}/{request.sae_id} is not in the Hugging Face cache ({hf_constants.HF_HUB_CACHE}) "
                "and the hub cannot be reached; download it once online, or attach it from a local path"
            ) from None
        raise WeightsError(f"sae_lens cannot load {request.release}/{request.sae_id}: {text}") from None
    try:
        repo_id, folder = get_repo_id_and_folder_name(request.release, request.sae_id)
        source_file = _cached_source_file(repo_id, folder)
    except Exception:  # noqa: BLE001 - the sha256 is best effort for converted releases
        source_file = None
    return _from_sae(sae, source_file=source_file, release=request.release, sae_id=request.sae_id)


register_loader("folder", load_folder)
register_loader("registry", load_registry)
register_loader("safetensors", load_safetensors)
