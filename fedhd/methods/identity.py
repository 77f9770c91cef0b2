"""identity: the raw float32 vector (32 bits per coordinate), the uncompressed baseline."""

from __future__ import annotations

import numpy as np

from ..layout import Layout
from ..wire import Header
from .base import Method, check_encodable, check_magnitude, finite_chunk_sumsq


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
        check_encodable(x, self.name)
        return x.astype("<f4", copy=False).view(np.uint8)

    def decode_payload(self, payload, h, layout, out, be):
        values = np.frombuffer(payload, dtype="<f4")
        check_magnitude(values, "identity values")
        out[:] = values


METHOD = Identity()
