"""scaled-sign: the scaled sign compressor of EF-signSGD (Karimireddy, Rebjock, Stich,
Jaggi, ICML 2019), 1 bit per coordinate plus one float32 scale per chunk.

Per chunk c of the layout (``fedhd.layout``; n_c = its real, unpadded coordinates), the
blob carries the signs of x and the scale s_c = ||x_c||_1 / n_c, and the decoder returns
s_c * sign(x_i). The scale is EF-signSGD's: it minimizes ||x_c - s sign(x_c)||^2 over s, so
the decoded chunk is the projection of x_c on its sign vector. Biased (E[x_hat] != x, the
method is deterministic); meant to be used with error feedback on the client, which the
Flower mod turns on by default for it (``strategies.error_feedback``). No rotation, so it
does not commute with the sum.

A coordinate exactly 0 takes the sign given by a fair coin: the low bit of
``splitmix(rounding_key(dither_seed), g)`` for coordinate g (the tie-breaking coin of eden,
drive and turboquant, ``fedhd.rng``), so zeros do not all drift to one side; a chunk that
is all zeros has s_c = 0 and decodes to zeros whatever its bits.

Payload: C float32 scales (round to nearest), then one bit per padded coordinate, 1 for
positive, LSB first, chunk after chunk (chunk c's at byte ``code_offsets(layout, 1,
4 C)[c]``); the bits of the < 32 padding coordinates are 0. The decoder refuses scales
that are negative, non-finite or above ``MAX_DECODED`` and padding bits that are not 0.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .. import rng
from ..errors import DecodeError
from ..kernels import rounding as R
from ..layout import Layout, code_offsets
from ..rng import splitmix_nb
from ..wire import Header
from .base import MAX_DECODED, Method, blob_buffer


@njit(nogil=True, cache=True)
def _abs_sums(x, d, starts, sizes):
    """float64 sum of |x| over the real coordinates of each chunk, in index order."""
    out = np.zeros(starts.shape[0])
    for c in range(starts.shape[0]):
        acc = 0.0
        for g in range(starts[c], min(starts[c] + sizes[c], d)):
            acc += abs(np.float64(x[g]))
        out[c] = acc
    return out


@njit(nogil=True, cache=True)
def _sign_bits(x, d, padded, base, out, off):
    """Pack the sign bit of every padded coordinate (1: positive; 0: negative or padding;
    an exact 0 takes the coin of ``splitmix(base, g)``) into out[off:], LSB first."""
    for p in range(padded // 8):
        byte = np.uint8(0)
        for q in range(8):
            g = p * 8 + q
            if g < d:
                v = x[g]
                bit = v > 0
                if v == 0:
                    bit = (splitmix_nb(base, g) & np.uint64(1)) == np.uint64(1)
                if bit:
                    byte |= np.uint8(1 << q)
        out[off + p] = byte


def real_sizes(layout: Layout) -> np.ndarray:
    """Real (unpadded) coordinates of each chunk (int64)."""
    return np.minimum(layout.sizes, layout.d - layout.starts)


class ScaledSign(Method):
    name = "scaled-sign"
    min_bits = 1
    max_bits = 1
    default_bits = 1
    unbiased = False  # deterministic; the decode is a projection on the sign vector

    def payload_size(self, h: Header, layout: Layout) -> int:
        return 4 * layout.chunks + layout.padded // 8

    def encode_payload(self, x, h, layout, be):
        C = layout.chunks
        sums = _abs_sums(x, h.d, layout.starts, layout.sizes)
        if not np.isfinite(sums).all():  # a float64 sum of finite float32 cannot overflow
            raise ValueError("x contains NaN or Inf")
        s = (sums / real_sizes(layout)).astype(np.float32)
        if not (s.astype(np.float64) <= MAX_DECODED).all():
            raise ValueError(f"x is too large for {self.name}: a chunk scale exceeds "
                             f"{MAX_DECODED:.3g}")
        raw, out = blob_buffer(self.payload_size(h, layout))
        out[: 4 * C] = s.astype("<f4").view(np.uint8)
        _sign_bits(x, h.d, layout.padded, rng.rounding_key(h.dither_seed), out, 4 * C)
        return raw

    def _scales(self, payload: memoryview, layout: Layout) -> np.ndarray:
        s = np.frombuffer(payload, "<f4", layout.chunks).astype(np.float64)
        if not (np.isfinite(s).all() and (s >= 0).all() and (s <= MAX_DECODED).all()):
            raise DecodeError(f"{self.name} scales must be finite, non-negative and at most "
                              f"{MAX_DECODED:.3g}")
        return s

    def stated_norm(self, payload, h, layout):
        s = self._scales(payload, layout)
        return float(np.sqrt((s * s) @ real_sizes(layout)))

    def decode_payload(self, payload, h, layout, out, be):
        C = layout.chunks
        s = self._scales(payload, layout)
        codes = np.frombuffer(payload, np.uint8)
        pad = layout.padded - h.d  # < 32: the padding sits in the last 4 bytes
        if pad and np.unpackbits(codes[-4:], bitorder="little")[32 - pad:].any():
            raise DecodeError(f"{self.name} padding bits must be 0")
        tables = np.stack([-s, s], axis=1).astype(np.float32)
        R.lookup_plain(codes, h.d, layout.starts, layout.sizes, tables, 1,
                       code_offsets(layout, 1, 4 * C), out)


METHOD = ScaledSign()
