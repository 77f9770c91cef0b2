"""The Backend interface, and its CPU implementation over the numba kernels."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np

from ..kernels import transform_pack as K
from ..layout import MAX_D, Layout


class Backend:
    """Where vectors live and the rotated table kernels run (see ``fedhd.backend``).

    Vectors are 1-D; ``padded`` vectors hold the rotated chunks (``layout.padded``
    coordinates), the others the d real coordinates. ``keys`` are the per-chunk sign keys
    (``rng.sign_keys``), ``tables`` float32 (chunks, 2**bits) decoded values already
    scaled by 1/n for the unnormalized inverse FWHT, ``code_off`` each chunk's byte offset
    of its codes in ``codes`` (host uint8 arrays: blobs are host bytes).
    """

    name = "abstract"

    # -- placement ----------------------------------------------------------------------
    def call(self) -> AbstractContextManager[Any]:
        """Context of one public call (a GPU: its device current, streams in order)."""
        raise NotImplementedError

    def runs(self, device_kernels: bool, layout: Layout) -> bool:
        """Whether this backend runs a method whose device kernels exist
        (``device_kernels``) on ``layout``; if not, the caller works on a host copy."""
        raise NotImplementedError

    def as_vector(self, x: Any) -> Any:
        """x as a contiguous float32 vector of this backend; TypeError for a non-float
        array, ValueError for a wrong shape or size."""
        raise NotImplementedError

    def to_host(self, x: Any) -> np.ndarray:
        raise NotImplementedError

    def zeros(self, n: int, dtype: Any) -> Any:
        raise NotImplementedError

    def copy(self, a: Any) -> Any:
        raise NotImplementedError

    def output(self, d: int, out: Any) -> tuple[Any, Any]:
        """(what the caller gets back, the float32 vector of length d to write): ``out``
        when it fits (a CUDA ``out`` must), else a new vector."""
        raise NotImplementedError

    def upload_into(self, dst: Any, host: np.ndarray) -> None:
        """dst[:] = host (a float32 host vector of the same length)."""
        raise NotImplementedError

    # -- kernels ------------------------------------------------------------------------
    def rotate_quantize(self, x: Any, layout: Layout, keys: np.ndarray, thr_norm: np.ndarray,
                        clip: float, bits: int, code_off: np.ndarray,
                        out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Encode: the packed codes of H D x land in the host payload ``out`` at
        ``code_off``. thr_norm: (chunks, 2**bits - 1) float64 thresholds of the normalized
        grid. Returns the float32 chunk norms s_c = ||x_c|| and, per chunk in float64,
        sum_i y'_i clamp(y'_i, -clip s_c, clip s_c). ValueError if x holds NaN or Inf."""
        raise NotImplementedError

    def dequantize_unrotate(self, codes: np.ndarray, layout: Layout, keys: np.ndarray,
                            tables: np.ndarray, bits: int, code_off: np.ndarray,
                            out: Any) -> None:
        """out[:d] = D H tables_c[code], chunk by chunk."""
        raise NotImplementedError

    def lookup_rotated(self, codes: np.ndarray, layout: Layout, tables: np.ndarray,
                       bits: int, code_off: np.ndarray, weight: float, acc: Any) -> None:
        """acc (padded) += weight * tables_c[code], in the rotated domain."""
        raise NotImplementedError

    def unrotate(self, acc: Any, layout: Layout, keys: np.ndarray, out: Any,
                 weight: float = 1.0) -> None:
        """out[:d] = D H acc chunk by chunk, divided by ``weight`` as ``finish`` divides
        (float32 of the float64 quotient; 1: no division); acc (padded) is left as it
        was, and ``out`` may be acc[:d] itself."""
        raise NotImplementedError

    def accumulate(self, total: Any, part: Any) -> None:
        """total (float64, d) += part (float32 or float64 of this backend, or a host
        vector)."""
        raise NotImplementedError

    def finish(self, total: Any, weight: float, out: Any) -> None:
        """out[i] = float32(float64(total[i]) / weight); total float64 or float32 (d), and
        ``out`` may be total itself."""
        raise NotImplementedError


def as_host_vector(x: Any) -> np.ndarray:
    """A contiguous 1-D float32 numpy view or copy of x (numpy float array or torch tensor).

    TypeError for a non-array or a non-float dtype; ValueError for a wrong shape or size.
    """
    if type(x).__module__.startswith("torch"):
        import torch

        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a numpy array or torch tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        x = x.detach()
        if x.dtype not in (torch.float16, torch.float32, torch.float64):
            x = x.float()  # bfloat16 and friends
        x = x.cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array or torch tensor, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"x must have a floating dtype (float16/32/64), got {x.dtype}")
    if x.ndim != 1:
        raise ValueError(f"x must be 1-D, got shape {x.shape}; flatten it (fedhd.flatten)")
    if not 1 <= x.shape[0] <= MAX_D:
        raise ValueError(f"x must have between 1 and {MAX_D} coordinates, got {x.shape[0]}")
    return np.ascontiguousarray(x, dtype=np.float32)


def finite_chunk_sumsq(x: np.ndarray, layout: Layout) -> np.ndarray:
    """Per-chunk sum of squares in float64; ValueError if x holds NaN or Inf.

    A float64 sum of float32 squares cannot overflow, so a non-finite sum means a
    non-finite input.
    """
    ss = K.chunk_sumsq(x, layout.starts, layout.sizes, x.shape[0])
    if not np.isfinite(ss).all():
        raise ValueError("x contains NaN or Inf")
    return ss


class CpuBackend(Backend):
    """numpy vectors, numba kernels (``fedhd.kernels.transform_pack``), threads over
    chunks for large vectors."""

    name = "cpu"

    def call(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def runs(self, device_kernels: bool, layout: Layout) -> bool:
        return True

    def as_vector(self, x: Any) -> np.ndarray:
        return as_host_vector(x)

    def to_host(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def zeros(self, n: int, dtype: Any) -> np.ndarray:
        return np.zeros(n, dtype)

    def copy(self, a: np.ndarray) -> np.ndarray:
        return a.copy()

    def output(self, d: int, out: Any) -> tuple[np.ndarray, np.ndarray]:
        if not (isinstance(out, np.ndarray) and out.shape == (d,) and out.dtype == np.float32):
            out = np.empty(d, np.float32)
        return out, out

    def upload_into(self, dst: np.ndarray, host: np.ndarray) -> None:
        dst[:] = host

    def rotate_quantize(self, x, layout, keys, thr_norm, clip, bits, code_off, out):
        s, sum_yc = K.rotate_quantize(x, layout.d, layout.starts, layout.sizes, keys,
                                      np.ascontiguousarray(thr_norm, np.float64), np.float32(clip),
                                      bits, out, code_off)
        if not np.isfinite(s).all():
            raise ValueError("x contains NaN or Inf")
        return s, sum_yc

    def dequantize_unrotate(self, codes, layout, keys, tables, bits, code_off, out):
        K.dequantize_unrotate(codes, layout.d, layout.starts, layout.sizes, keys, tables, bits,
                              code_off, out)

    def lookup_rotated(self, codes, layout, tables, bits, code_off, weight, acc):
        K.lookup_rotated(codes, layout.starts, layout.sizes, tables, bits, code_off,
                         np.float32(weight), acc)

    def unrotate(self, acc, layout, keys, out, weight=1.0):
        K.unrotate(acc, layout.d, layout.starts, layout.sizes, keys, out, weight)

    def accumulate(self, total, part):
        total += part

    def finish(self, total, weight, out):
        K.finish(total, weight, out)


CPU = CpuBackend()
