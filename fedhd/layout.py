"""Chunk layout: how a length-d vector is split into power-of-2 chunks for the FWHT.

Full chunks of ``2**log2_chunk`` coordinates come first; the remainder r = d mod chunk is
split by its binary digits into smaller power-of-2 chunks down to MIN_CHUNK = 32
coordinates, and the last r mod 32 coordinates are zero-padded into one 32-chunk.
Padding is therefore at most 31 coordinates, and there are at most
d / chunk + log2(chunk) chunks, each carrying one float32 scale. Every chunk is a
multiple of 8 coordinates, so each chunk's b-bit codes start on a byte boundary: methods
with b-bit codes put chunk c's at byte ``code_offsets(layout, b, head)[c]`` of the payload,
after ``head`` bytes of per-chunk fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

MIN_LOG2_CHUNK = 5
MIN_CHUNK = 1 << MIN_LOG2_CHUNK
MAX_LOG2_CHUNK = 24
DEFAULT_LOG2_CHUNK = 16
MAX_D = (1 << 31) - 1


@dataclass(frozen=True)
class Layout:
    """The chunks of a length-d vector. ``chunks`` and ``padded`` (sum of the chunk sizes)
    are arithmetic; the ``starts``/``sizes`` arrays are built on first use, so a decoder
    can check a blob's length against a hostile header before allocating anything."""

    d: int
    log2_chunk: int

    @property
    def chunks(self) -> int:
        full = 1 << self.log2_chunk
        rem = self.d % full
        return self.d // full + bin(rem >> MIN_LOG2_CHUNK).count("1") + int(rem % MIN_CHUNK > 0)

    @property
    def padded(self) -> int:
        return -(-self.d // MIN_CHUNK) * MIN_CHUNK

    @cached_property
    def sizes(self) -> np.ndarray:
        """Chunk lengths in coordinates (int64, powers of two >= MIN_CHUNK)."""
        full = 1 << self.log2_chunk
        rem = self.d % full
        tail = [1 << k for k in range(self.log2_chunk - 1, MIN_LOG2_CHUNK - 1, -1)
                if rem >> k & 1]
        if rem % MIN_CHUNK:
            tail.append(MIN_CHUNK)
        sz = np.concatenate([np.full(self.d // full, full, np.int64),
                             np.asarray(tail, np.int64)])
        sz.setflags(write=False)
        return sz

    @cached_property
    def starts(self) -> np.ndarray:
        """First coordinate of each chunk (int64)."""
        st = np.concatenate(([0], np.cumsum(self.sizes)[:-1])).astype(np.int64)
        st.setflags(write=False)
        return st


@lru_cache(maxsize=64)
def make_layout(d: int, log2_chunk: int = DEFAULT_LOG2_CHUNK) -> Layout:
    """The chunk layout of a length-d vector (1 <= d <= MAX_D)."""
    if not 1 <= d <= MAX_D:
        raise ValueError(f"vector length must be in [1, {MAX_D}], got {d}")
    if not MIN_LOG2_CHUNK <= log2_chunk <= MAX_LOG2_CHUNK:
        raise ValueError(f"log2_chunk must be in [{MIN_LOG2_CHUNK}, {MAX_LOG2_CHUNK}]")
    return Layout(d, log2_chunk)


def code_offsets(layout: Layout, bits: int, head: int) -> np.ndarray:
    """Byte offset of each chunk's packed codes, after ``head`` bytes of per-chunk fields."""
    return _code_offsets(layout.d, layout.log2_chunk, bits, head)


@lru_cache(maxsize=256)
def _code_offsets(d: int, log2_chunk: int, bits: int, head: int) -> np.ndarray:
    sizes = make_layout(d, log2_chunk).sizes
    off = np.concatenate(([0], np.cumsum(sizes * bits // 8)[:-1])).astype(np.int64) + head
    off.setflags(write=False)
    return off
