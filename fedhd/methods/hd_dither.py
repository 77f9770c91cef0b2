"""hd-dither: randomized Hadamard rotation + one scalar dither per chunk + b-bit companded
grid (the paper's dithered TurboQuant), fixed rate b = 1..8 bits per coordinate.

Payload: per-chunk float32 scales (C x 4 bytes), then the packed codes (padded * b / 8
bytes). The scale sent is s_c * kappa_c: s_c = ||x_c|| normalizes the chunk, and
kappa_c = ||z||^2 / <z, clip(z)> >= 1 undoes, on average over rotations, the shrinkage of
the coordinates beyond the clip point (kappa_c = 1 when nothing is clipped).
"""

from __future__ import annotations

import numpy as np

from .. import rng
from ..errors import DecodeError
from ..grid import KAPPA_WEIGHT, grid
from ..layout import Layout, code_offsets
from .base import blob_buffer, norm_of_chunk_fields
from .rotated import RotatedTableMethod


class HDDither(RotatedTableMethod):
    name = "hd-dither"
    unbiased = True  # exactly inside the clip range; see README for the measured residual
    device_encode = True

    def head_bytes(self, layout: Layout) -> int:
        return 4 * layout.chunks  # the scale of each chunk

    def stated_norm(self, payload, h, layout):
        return norm_of_chunk_fields(payload, layout.chunks)

    def encode_payload(self, x, h, layout, be):
        b = int(h.bits)
        C = layout.chunks
        g = grid(b)
        thr_norm = g.thresholds(rng.dithers(h.dither_seed, C))  # (C, 2**b - 1) float64
        raw, out = blob_buffer(self.payload_size(h, layout))
        s, sum_yc = be.rotate_quantize(x, layout, rng.sign_keys(h.seed, C), thr_norm, g.clip,
                                       b, code_offsets(layout, b, 4 * C), out)
        nss = layout.sizes * s.astype(np.float64) ** 2  # ||y'||^2 = n ||x_c||^2
        kappa = np.where(sum_yc > 0, nss / np.where(sum_yc > 0, sum_yc, 1.0), 1.0)
        kappa = 1.0 + KAPPA_WEIGHT[b] * (kappa - 1.0)
        out[: 4 * C] = (s * kappa).astype("<f4").view(np.uint8)
        self.check_encodable(out, h, layout)
        return raw

    def make_tables(self, payload, h, layout):
        C = layout.chunks
        scales = np.frombuffer(payload, dtype="<f4", count=C)
        if not (np.isfinite(scales).all() and (scales >= 0).all()):
            raise DecodeError("chunk scales must be finite and non-negative")
        u = rng.dithers(h.dither_seed, C)
        # r_j * s / sqrt(n) gives y; the unnormalized inverse FWHT needs one more 1/sqrt(n)
        return grid(int(h.bits)).table(u) * (scales / layout.sizes)[:, None]


METHOD = HDDither()
