"""topk: the k coordinates of largest magnitude, as (index, float32 value) pairs; the
rest are decoded as 0. Biased (it drops the tail) and deterministic.

``bits`` is a budget R in bits per coordinate (a multiple of 1/16, 1/16..64) that counts
everything sent: the largest k with 8 * len(blob) <= R * d is chosen (at least 0; below
about 31 * 8 / d bits per coordinate the header alone exceeds the budget).

k is a function of the header (R and d), so the payload has a fixed size: the k indices in
increasing order packed with w = bit_length(d - 1) bits each (LSB-first, ceil(k * w / 8)
bytes), then the k float32 values.
"""

from __future__ import annotations

import numpy as np

from ..errors import DecodeError
from ..kernels import rounding as R
from ..layout import Layout
from ..wire import HEADER_BYTES, Header
from .base import Method, check_encodable, check_magnitude, finite_chunk_sumsq


def index_width(d: int) -> int:
    return max(1, (d - 1).bit_length())


def blob_bytes(k: int, d: int) -> int:
    """Total blob length for k kept coordinates of a length-d vector."""
    return HEADER_BYTES + (k * index_width(d) + 7) // 8 + 4 * k


def choose_k(budget_bits: float, d: int) -> int:
    """The largest k <= d whose blob fits in budget_bits * d bits (0 if none does)."""
    cap = int(np.floor(budget_bits * d / 8 + 1e-9))  # bytes allowed
    w = index_width(d)
    k = max(0, min(d, int((cap - HEADER_BYTES) * 8 // (w + 32))))
    while k > 0 and blob_bytes(k, d) > cap:
        k -= 1
    while k < d and blob_bytes(k + 1, d) <= cap:
        k += 1
    return k


class TopK(Method):
    name = "topk"
    integer_bits = False
    min_bits = 1 / 16
    max_bits = 64
    default_bits = 2.0
    unbiased = False

    def check_bits(self, bits: float) -> float:
        b = super().check_bits(bits)
        return round(b * 16) / 16  # what the header can carry

    def payload_size(self, h: Header, layout: Layout) -> int:
        return blob_bytes(choose_k(h.bits, h.d), h.d) - HEADER_BYTES

    def encode_payload(self, x, h, layout, be):
        finite_chunk_sumsq(x, layout)
        d = h.d
        k = choose_k(h.bits_x16 / 16, d)  # what the decoder will derive from the header
        if k == 0:
            idx = np.empty(0, np.int64)
        elif k == d:
            idx = np.arange(d, dtype=np.int64)
        else:
            idx = np.sort(np.argpartition(np.abs(x), d - k)[d - k:]).astype(np.int64)
        w = index_width(d)
        ib = (k * w + 7) // 8
        out = np.zeros(ib + 4 * k, np.uint8)
        R.pack_uint(idx, w, out[:ib])
        check_encodable(x[idx], self.name)
        out[ib:] = x[idx].astype("<f4").view(np.uint8)
        return out

    def decode_payload(self, payload, h, layout, out, be):
        d = h.d
        buf = np.frombuffer(payload, np.uint8)
        k = choose_k(h.bits, d)
        w = index_width(d)
        ib = (k * w + 7) // 8
        idx = np.empty(k, np.int64)
        R.unpack_uint(buf[:ib], k, w, idx)
        if k and (idx[-1] >= d or (k > 1 and not (np.diff(idx) > 0).all())):
            raise DecodeError("topk indices must be increasing and below d")
        vals = buf[ib:].view("<f4")
        check_magnitude(vals, "topk values")
        out[:] = 0
        out[idx] = vals


METHOD = TopK()
