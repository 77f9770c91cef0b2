"""Public entry points: encode, decode, methods, Codec."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import methods as registry
from .errors import DecodeError
from .layout import DEFAULT_LOG2_CHUNK, MAX_D, MAX_LOG2_CHUNK, MIN_LOG2_CHUNK
from .rng import check_seed
from .wire import as_bytes, read_header

DEFAULT_METHOD = "hd-dither"


def as_vector(x: Any) -> np.ndarray:
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
        raise ValueError(f"x must be 1-D, got shape {x.shape}; flatten it or use fedhd.pack")
    if not 1 <= x.shape[0] <= MAX_D:
        raise ValueError(f"x must have between 1 and {MAX_D} coordinates, got {x.shape[0]}")
    return np.ascontiguousarray(x, dtype=np.float32)


def is_cuda_array(x: Any) -> bool:
    """Whether x lives on a CUDA device: a torch CUDA tensor, a CuPy array, a numba device
    array or any object with ``__cuda_array_interface__``."""
    if type(x).__module__.startswith("torch"):
        return bool(getattr(x, "is_cuda", False))
    return hasattr(x, "__cuda_array_interface__") or type(x).__module__.startswith("numba.cuda")


def methods() -> list[str]:
    """Names of the registered compression methods."""
    return registry.names()


class Codec:
    """A reusable encoder/decoder for one (method, bits, chunk size).

    Parameters
    ----------
    method : str
        A name from ``fedhd.methods()``.
    bits : float, optional
        Bits per coordinate: an integer 1..8 for fixed-rate methods, a budget for
        entropy-coded ones. Defaults to the method's own default.
    log2_chunk : int
        Full chunk length 2**log2_chunk coordinates for rotated methods (5..24).

    ``decode(blob, out=...)`` writes into a caller's float32 buffer, so a loop over many
    blobs of the same length allocates nothing per call.
    """

    def __init__(self, method: str = DEFAULT_METHOD, bits: float | None = None,
                 log2_chunk: int = DEFAULT_LOG2_CHUNK):
        self.method = registry.get(method)
        self.bits = self.method.check_bits(self.method.default_bits if bits is None else bits)
        if not MIN_LOG2_CHUNK <= int(log2_chunk) <= MAX_LOG2_CHUNK:
            raise ValueError(f"log2_chunk must be in [{MIN_LOG2_CHUNK}, {MAX_LOG2_CHUNK}]")
        self.log2_chunk = int(log2_chunk)

    def encode(self, x: Any, seed: int = 0, dither_seed: int | None = None) -> bytes:
        """Compress x (numpy or torch; a CUDA array is encoded on its GPU). ``seed`` fixes
        the rotation (share it among the clients of a round); ``dither_seed`` (default:
        ``seed``) fixes the dither (give each client its own)."""
        seed = check_seed(seed)
        dither_seed = seed if dither_seed is None else check_seed(dither_seed, "dither_seed")
        if is_cuda_array(x):
            from . import gpu

            with gpu.call(gpu.device_index(x)):
                return self.method.encode(gpu.as_device_vector(x), self.bits, seed,
                                          dither_seed, self.log2_chunk)
        return self.method.encode(as_vector(x), self.bits, seed, dither_seed, self.log2_chunk)

    def decode(self, blob: Any, out: Any = None, device: Any = None) -> Any:
        """Decode a blob of this codec's method; see ``fedhd.decode``."""
        return self.method.decode(as_bytes(blob), out, device)


def encode(x: Any, bits: float | None = None, seed: int = 0, method: str = DEFAULT_METHOD,
           dither_seed: int | None = None, log2_chunk: int = DEFAULT_LOG2_CHUNK) -> bytes:
    """Compress a 1-D float vector into one self-describing blob (bytes).

    ``8 * len(blob)`` is every bit sent: header, scales, padding and codes.
    """
    return Codec(method, bits, log2_chunk).encode(x, seed, dither_seed)


def decode(blob: Any, out: Any = None, device: Any = None) -> Any:
    """Decode any fedhd blob into a float32 vector of its original length.

    ``out``: a float32 buffer of length d to decode into (numpy, reused when it fits; or a
    CUDA array, torch or CuPy, decoded into on its GPU). ``device="cuda"`` (or "cuda:N")
    decodes on that GPU into a new torch tensor. Otherwise a new numpy vector.
    Raises ``DecodeError`` (a ValueError) for anything malformed, before allocating.
    """
    view = as_bytes(blob)
    h = read_header(view)
    method = registry.by_id(h.method_id)
    if method is None:
        raise DecodeError(f"unknown method id {h.method_id}")
    return method.decode(view, out, device)
