"""fp16: every coordinate as an IEEE half-precision float (16 bits per coordinate).

Round-to-nearest, so it is deterministic and (slightly) biased; values beyond the half
range saturate at +-65504 instead of becoming infinite, and values below 6e-8 flush to 0.
Payload: d little-endian float16 values.
"""

from __future__ import annotations

import numpy as np

from ..errors import DecodeError
from ..layout import Layout
from ..wire import Header
from .base import Method, finite_chunk_sumsq

FP16_MAX = float(np.finfo(np.float16).max)  # 65504


class FP16(Method):
    name = "fp16"
    min_bits = 16
    max_bits = 16
    default_bits = 16
    unbiased = False  # round-to-nearest

    def payload_size(self, h: Header, layout: Layout) -> int:
        return 2 * h.d

    def encode_payload(self, x, h, layout, be):
        finite_chunk_sumsq(x, layout)
        return np.clip(x, -FP16_MAX, FP16_MAX).astype("<f2").view(np.uint8)

    def decode_payload(self, payload, h, layout, out, be):
        v = np.frombuffer(payload, dtype="<f2")
        if not np.isfinite(v).all():
            raise DecodeError("fp16 payload holds a non-finite value")
        out[:] = v


METHOD = FP16()
