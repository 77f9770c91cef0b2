"""qsgd: QSGD (Alistarh et al., NeurIPS 2017), fixed rate b = 1..8 bits per coordinate.

Each chunk of the layout (a QSGD "bucket", 2**log2_chunk coordinates) is sent as its norm
||x_c|| (float32, rounded up) and one b-bit code per coordinate: x_i / ||x_c|| in [-1, 1]
is rounded stochastically to the grid of s + 1 magnitudes {0, 1/s, ..., 1} with its sign,
i.e. to the 2s + 1 points {-1, ..., -1/s, 0, 1/s, ..., 1}, s = 2**(b-1) - 1 (one code
unused). b = 1 has room for no zero level: its grid is {-1, +1} (s = 1/2). Unbiased for
every input: E[x_hat] = x. No rotation, so the error grows with the bucket's
||x||_1 / ||x||_2: about sqrt(2 n / pi) / s for Gaussian coordinates while s << sqrt(n).

The uniforms of the rounding come from ``rng.uniforms(dither_seed, STREAM_METHOD,
padded)`` (``rng.rounding_key``, ``fedhd.kernels.rounding``). Payload: C float32 norms,
then the codes of every chunk (padded * b / 8 bytes, padding coordinates included).
"""

from __future__ import annotations

import numpy as np

from .. import rng
from ..errors import DecodeError
from ..kernels import rounding as R
from ..layout import Layout, code_offsets
from ..wire import Header
from .base import (
    Method,
    blob_buffer,
    check_encodable,
    check_magnitude,
    finite_chunk_sumsq,
    norm_of_chunk_fields,
    round_up_f32,
)


def levels_of(bits: int) -> tuple[int, float]:
    """(number of grid points used, s): the grid is {-1, ..., 1} with spacing 1/s."""
    if bits == 1:
        return 2, 0.5
    s = (1 << (bits - 1)) - 1
    return 2 * s + 1, float(s)


class QSGD(Method):
    name = "qsgd"
    default_bits = 4
    unbiased = True

    def payload_size(self, h: Header, layout: Layout) -> int:
        return 4 * layout.chunks + layout.padded * int(h.bits) // 8

    def stated_norm(self, payload, h, layout):
        return norm_of_chunk_fields(payload, layout.chunks)

    def encode_payload(self, x, h, layout, be):
        b = int(h.bits)
        C = layout.chunks
        norm = round_up_f32(np.sqrt(finite_chunk_sumsq(x, layout)))
        if not np.isfinite(norm).all():
            raise ValueError("x is too large: a chunk norm overflows float32")
        check_encodable(norm, self.name)
        used, s = levels_of(b)
        n64 = norm.astype(np.float64)
        raw, out = blob_buffer(self.payload_size(h, layout))
        out[: 4 * C] = norm.astype("<f4").view(np.uint8)
        R.sr_quantize(
            x, h.d, layout.starts, layout.sizes, -n64, n64 / s, np.full(C, used, np.int64), b,
            rng.rounding_key(h.dither_seed), out, code_offsets(layout, b, 4 * C),
        )
        return raw

    def decode_payload(self, payload, h, layout, out, be):
        b = int(h.bits)
        C = layout.chunks
        norm = np.frombuffer(payload, dtype="<f4", count=C)
        if not (norm >= 0).all():
            raise DecodeError("qsgd norms must be non-negative")
        check_magnitude(norm, "qsgd norms")
        used, s = levels_of(b)
        grid = np.zeros(1 << b)
        grid[:used] = -1.0 + np.arange(used) / s
        tables = (norm.astype(np.float64)[:, None] * grid[None, :]).astype(np.float32)
        R.lookup_plain(np.frombuffer(payload, np.uint8), h.d, layout.starts, layout.sizes,
                        tables, b, code_offsets(layout, b, 4 * C), out)


METHOD = QSGD()
