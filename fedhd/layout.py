"""Chunk layout: how a length-d vector is split into power-of-2 chunks for the FWHT.

Full chunks of ``2**log2_chunk`` coordinates come first; the remainder r = d mod chunk is
split by its binary digits into smaller power-of-2 chunks down to MIN_CHUNK = 32
coordinates, and the last r mod 32 coordinates are zero-padded into one 32-chunk.
Padding is therefore at most 31 coordinates, and there are at most
d / chunk + log2(chunk) chunks, each carrying one float32 scale. Every chunk is a
multiple of 8 coordinates, so each chunk's b-bit codes start on a byte boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

MIN_LOG2_CHUNK = 5
MIN_CHUNK = 1 << MIN_LOG2_CHUNK
MAX_LOG2_CHUNK = 24
DEFAULT_LOG2_CHUNK = 16
MAX_D = (1 << 31) - 1


@dataclass(frozen=True)
class Layout:
    """Chunk starts and sizes (in coordinates) of a length-d vector; ``padded`` = sum of sizes."""

    d: int
    log2_chunk: int
    starts: np.ndarray  # int64, (C,)
    sizes: np.ndarray  # int64, (C,), powers of two >= MIN_CHUNK

    @property
    def chunks(self) -> int:
        return int(self.sizes.shape[0])

    @property
    def padded(self) -> int:
        return int(self.sizes.sum())


@lru_cache(maxsize=64)
def make_layout(d: int, log2_chunk: int = DEFAULT_LOG2_CHUNK) -> Layout:
    """The chunk layout of a length-d vector (1 <= d <= MAX_D)."""
    if not 1 <= d <= MAX_D:
        raise ValueError(f"vector length must be in [1, {MAX_D}], got {d}")
    if not MIN_LOG2_CHUNK <= log2_chunk <= MAX_LOG2_CHUNK:
        raise ValueError(f"log2_chunk must be in [{MIN_LOG2_CHUNK}, {MAX_LOG2_CHUNK}]")
    full = 1 << log2_chunk
    sizes = [full] * (d // full)
    rem = d % full
    for k in range(log2_chunk - 1, MIN_LOG2_CHUNK - 1, -1):
        if rem >> k & 1:
            sizes.append(1 << k)
    if rem % MIN_CHUNK:
        sizes.append(MIN_CHUNK)
    sz = np.asarray(sizes, dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(sz)[:-1])).astype(np.int64)
    for a in (sz, starts):
        a.setflags(write=False)
    return Layout(d, log2_chunk, starts, sz)
