"""Device and dtype choice, and row normalisation, for the geometry engine.

- `pick_device(device=None)`: an explicit device, else CUDA, then MPS, then CPU.
- `resolve_dtype(dtype, device)`: float32 by default; bfloat16 / float16 on request. On CUDA,
  float32 turns TF32 matmuls off (`torch.backends.cuda.matmul.allow_tf32 = False`, a process-wide
  flag) so float32 results stay exact. On CPUs without AMX bf16/fp16 matmuls are 5-6x
  *slower* than float32: low precision is meant for GPUs (with AMX, the float32 all-pairs
  itself takes bf16 candidates and rescores them: `prefilter`).
- `normalize_rows(x)`: unit rows in float32 and a mask of the rows whose cosine is undefined
  (a zero row, or any NaN/Inf), which the neighbour search ranks after every defined value,
  exactly as Neuronpedia's `topkCosSim*` (and the emulator's `_normalise`) do.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import torch

from ..errors import InvalidOptionError

__all__ = ["DTypeLike", "DeviceLike", "pick_device", "resolve_dtype", "normalize_rows", "as_float32", "from_numpy", "device_name"]

DeviceLike = Union[None, str, torch.device]
DTypeLike = Union[None, str, torch.dtype]

_DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "f32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "f16": torch.float16, "half": torch.float16,
}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    try:
        return bool(mps is not None and mps.is_available())
    except Exception:  # pragma: no cover - exotic builds
        return False


def _checked_device(device: Union[str, torch.device]) -> torch.device:
    """`device` as a torch.device; a name is refused (InvalidOptionError) when unknown or not
    present here. A torch.device passes as it is (the engine hands its own around)."""
    if isinstance(device, torch.device):
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidOptionError(f"unknown device {device!r}: use cuda, cuda:N, mps or cpu", option="device") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InvalidOptionError(f"device {device!r} asked for, but no CUDA GPU is available", option="device")
        if dev.index is not None and dev.index >= count:
            raise InvalidOptionError(f"device {device!r} asked for, but there are {count} CUDA GPU(s)", option="device")
    elif dev.type == "mps" and not _mps_available():
        raise InvalidOptionError(f"device {device!r} asked for, but MPS is not available", option="device")
    return dev


def pick_device(device: DeviceLike = None) -> torch.device:
    """`device` if given (a string such as "cuda:1" or a `torch.device`), else the best present:
    CUDA, then MPS, then CPU."""
    if device is not None:
        return _checked_device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: DTypeLike, device: DeviceLike = None) -> torch.dtype:
    """The compute dtype for matmuls: float32 (default), bfloat16 or float16.

    Accepts a `torch.dtype` or a name ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16",
    "half"). With float32 on CUDA this switches TF32 off for matmuls (process-wide), so that
    float32 cosines are exact rather than 10-bit-mantissa approximations.
    """
    if dtype is None:
        dt = torch.float32
    elif isinstance(dtype, torch.dtype):
        dt = dtype
    else:
        name = str(dtype).lower().removeprefix("torch.")
        if name not in _DTYPE_NAMES:
            raise InvalidOptionError(f"unsupported dtype {dtype!r}: use float32, bfloat16 or float16", option="dtype")
        dt = _DTYPE_NAMES[name]
    if dt not in (torch.float32, torch.bfloat16, torch.float16):
        raise InvalidOptionError(f"unsupported dtype {dt}: use float32, bfloat16 or float16", option="dtype")
    dev = pick_device(device)
    if dev.type == "cuda" and dt == torch.float32:
        torch.backends.cuda.matmul.allow_tf32 = False
    return dt


def from_numpy(a: np.ndarray) -> torch.Tensor:
    """A float32 tensor over `a` without a copy where possible (read-only arrays and memmaps
    included: nothing here writes into its inputs)."""
    if a.dtype != np.float32 or not a.flags.c_contiguous:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if not a.flags.writeable:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(a)
    return torch.from_numpy(a)


def as_float32(x: Any, device: DeviceLike = None) -> torch.Tensor:
    """A 2-D float32 tensor on `device` (no copy for a float32 CPU tensor or array on CPU).

    Accepts torch tensors, numpy arrays (read-only ones and memmaps included) and nested lists.
    A 1-D input is one row.
    """
    dev = pick_device(device) if device is not None else None
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        t = from_numpy(np.asarray(x))
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2:
        raise InvalidOptionError(f"expected a matrix (rows x dims) or one vector, got shape {tuple(t.shape)}")
    if dev is not None and t.device != dev:
        t = t.to(dev)
    if t.dtype != torch.float32:
        t = t.float()
    return t


def normalize_rows(x: Any, device: DeviceLike = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(unit rows float32, invalid bool mask) of a matrix (or one vector).

    A row is invalid when its cosine with anything is undefined: an all-zero row, or one with a
    NaN or Inf (the rule of the emulator's `_normalise`: `~isfinite(w / |w|).all()`). Invalid
    rows come back as zeros (not NaN), so a matmul with them is harmless; the caller ranks them
    last using the mask.
    """
    w = as_float32(x, device)
    if w.device.type == "cpu":  # the numpy normalisation the torch-free engine uses too (bit-equal rows)
        from .unit_rows import unit_rows

        unit_np, invalid_np = unit_rows(w.numpy())
        return torch.from_numpy(unit_np), torch.from_numpy(invalid_np)
    norms = torch.linalg.vector_norm(w, dim=1, keepdim=True)
    unit = w / norms
    nf = norms.squeeze(1)
    # w / |w| is non-finite iff |w| is 0 or NaN, or |w| is Inf because of an Inf entry (a norm
    # that overflows on finite entries gives a finite, all-zero row: valid, as in numpy)
    invalid = (nf == 0) | torch.isnan(nf)
    big = torch.isinf(nf)
    if bool(big.any()):
        invalid[big] = ~torch.isfinite(w[big]).all(dim=1)
    if bool(invalid.any()):
        unit = unit.masked_fill(invalid.unsqueeze(1), 0.0)
    return unit, invalid


def device_name(device: Optional[torch.device]) -> str:
    """A readable name of a device (the GPU's model on CUDA)."""
    dev = pick_device(device)
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return dev.type
