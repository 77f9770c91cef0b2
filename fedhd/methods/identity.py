"""identity: the raw float32 vector (32 bits per coordinate), the uncompressed baseline."""

from __future__ import annotations

import numpy as np

from ..errors import DecodeError
from ..layout import Layout
from ..wire import Header
from .base import Method, finite_chunk_sumsq


class Identity(Method):
    name = "identity"
    min_bits = 32
    max_bits = 32
    default_bits = 32
    unbiased = True

    def payload_size(self, h: Header, layout: Layout) -> int:
        return 4 * h.d

    def encode_payload(self, x, h, layout, be):
        finite_chunk_sumsq(x, layout)
        return x.astype("<f4", copy=False).view(np.uint8)

    def decode_payload(self, payload, h, layout, out, be):
        values = np.frombuffer(payload, dtype="<f4")
        if not np.isfinite(values).all():
            raise DecodeError("identity payload holds NaN or Inf")
        out[:] = values


METHOD = Identity()
