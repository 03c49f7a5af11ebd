"""bfloat16 GEMM with float32 output from the Intel MKL inside torch's CPU library, without `import torch`.

torch's x86 wheels link MKL statically into `torch/lib/libtorch_cpu.so` and export its CBLAS,
`cblas_gemm_bf16bf16f32` among it (MKL's documented bf16 x bf16 -> f32 GEMM, AVX512-BF16/AMX
kernels). Loading that one library with ctypes takes ~0.25 s on this project's Xeon, where
`import torch` takes 1.5-2.3 s of Python-level imports (`torch._meta_registrations`,
`torch._decomp`, `torch.nn`, `torch.export`) that a one-shot all-pairs never uses: that is most
of the gap between the `np-mirror geometry allpairs` command and the kernel inside it. The
float32 output also spares the bf16 rounding of torch's bf16 `mm` (and its widening copy), which
tightens the prefilter's bound. MKL's kernel is the slower of the two here (~0.7x torch's oneDNN
`mm`, measured in one process): worth it only where torch is not loaded yet.

`gemm()` is None where the library or the symbol is missing (a torch build without MKL: ARM,
macOS), and callers take the torch path. ctypes releases the GIL for the call, so worker threads
each run their own single-threaded GEMM (`single_threaded_here()`: MKL's thread-local count).
Inputs are bfloat16 bit patterns in uint16 arrays (`to_bf16_bits`), row-major.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from functools import lru_cache
from typing import Optional

import numpy as np

from ..errors import InvalidOptionError

__all__ = ["Bf16Gemm", "gemm", "to_bf16_bits", "widen_bf16"]

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _library_path() -> Optional[str]:
    """torch's CPU library, found without importing torch (find_spec does not run the package)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "lib", "libtorch_cpu.so")
    return path if os.path.exists(path) else None


class Bf16Gemm:
    """C = A·Bᵀ for bf16 rows A (m x d) and B (n x d) into float32 C (m x n, row stride ldc)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        f = lib.cblas_gemm_bf16bf16f32
        i64, p = ctypes.c_int64, ctypes.c_void_p
        f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64, ctypes.c_float, p, i64, p, i64,
                      ctypes.c_float, p, i64]
        f.restype = None
        self._f = f
        self._local = lib.MKL_Set_Num_Threads_Local  # C ABI (mkl_set_num_threads_local is the Fortran one, by pointer)
        self._local.argtypes = [ctypes.c_int]
        self._local.restype = ctypes.c_int

    def nt(self, A: np.ndarray, B: np.ndarray, C: np.ndarray) -> None:
        """C[:] = A·Bᵀ. A, B: C-contiguous uint16 (bf16 bits); C: float32 rows (any row stride)."""
        m, d = A.shape
        n = B.shape[0]
        if (A.dtype != np.uint16 or B.dtype != np.uint16 or C.dtype != np.float32 or B.shape[1] != d
                or C.shape != (m, n) or not (A.flags.c_contiguous and B.flags.c_contiguous)
                or C.strides[1] != 4 or C.strides[0] % 4 or (m > 1 and C.strides[0] < 4 * n)):
            raise InvalidOptionError(f"bf16 gemm: A {A.dtype}{A.shape}, B {B.dtype}{B.shape}, C {C.dtype}{C.shape} "
                                     "do not fit C = A·Bᵀ (uint16 rows, float32 C with unit column stride)")
        if m == 0 or n == 0:
            return
        ldc = C.strides[0] // 4 if m > 1 else n
        self._f(_ROW_MAJOR, _NO_TRANS, _TRANS, m, n, d, 1.0, A.ctypes.data, d, B.ctypes.data, d, 0.0,
                C.ctypes.data, ldc)

    def single_threaded_here(self) -> None:
        """MKL runs this thread's calls on one core (a worker thread of a pool that fills the cores)."""
        self._local(1)


@lru_cache(maxsize=1)
def gemm() -> Optional[Bf16Gemm]:
    """The MKL bf16 GEMM, or None where torch's CPU library does not carry one."""
    path = _library_path()
    if path is None:
        return None
    try:
        return Bf16Gemm(ctypes.CDLL(path))
    except (OSError, AttributeError):
        return None


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounded to nearest even (as torch's `.bfloat16()`);
    NaN stays NaN."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, dtype=np.uint16)
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    step = 1 << 20
    for s in range(0, flat_x.size, step):  # slices that stay in cache, in place: ~3x faster than whole-array temporaries
        u = flat_x[s:s + step].view(np.uint32)
        r = (u >> np.uint32(16)) & np.uint32(1)
        r += np.uint32(0x7FFF)
        r += u
        r >>= np.uint32(16)
        flat_out[s:s + step] = r
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def widen_bf16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns -> the float32 values they hold (exact)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
