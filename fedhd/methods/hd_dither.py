"""hd-dither: randomized Hadamard rotation + one scalar dither per chunk + b-bit companded
grid (the paper's dithered TurboQuant), fixed rate b = 1..8 bits per coordinate.

Payload: per-chunk float32 scales (C x 4 bytes), then the packed codes (padded * b / 8
bytes). The scale sent is s_c * kappa_c: s_c = ||x_c|| normalizes the chunk, and
kappa_c = ||z||^2 / <z, clip(z)> >= 1 undoes, on average over rotations, the shrinkage of
the coordinates beyond the clip point (kappa_c = 1 when nothing is clipped).
"""

from __future__ import annotations

import numpy as np

from .. import kernels as K
from .. import rng
from ..errors import DecodeError
from ..grid import KAPPA_WEIGHT, grid
from ..layout import Layout
from ..wire import Header
from .base import RotatedTableMethod, code_offsets, finite_chunk_sumsq, gpu


class HDDither(RotatedTableMethod):
    name = "hd-dither"
    method_id = 1
    unbiased = True  # exactly inside the clip range; see README for the measured residual
    gpu_encode = True

    def head_bytes(self, layout: Layout) -> int:
        return 4 * layout.chunks  # the scale of each chunk

    def encode_payload(self, x, h: Header, layout: Layout) -> np.ndarray:
        b = int(h.bits)
        C = layout.chunks
        g = grid(b)
        thr_norm = g.thresholds(rng.dithers(h.dither_seed, C))  # (C, 2**b - 1) float64
        keys = rng.sign_keys(h.seed, C)
        off = code_offsets(layout, b, 4 * C)
        out = np.empty(self.payload_size(h, layout), np.uint8)
        if isinstance(x, np.ndarray):
            s = np.sqrt(finite_chunk_sumsq(x, layout)).astype(np.float32)
            thr = np.full((C, 1 << b), np.inf, np.float32)
            # thresholds in the domain of the unnormalized FWHT output y' = sqrt(n) y = s z
            thr[:, :-1] = thr_norm * s[:, None]
            sum_yc = K.rotate_quantize(x, h.d, layout.starts, layout.sizes, keys, thr, b, out,
                                       off, (g.clip * s).astype(np.float32))
        else:  # a CUDA vector: the same steps in fedhd.cuda_kernels
            s, sum_yc = gpu().rotate_quantize(x, layout, keys, thr_norm, g.clip, b, off, out)
        nss = layout.sizes * s.astype(np.float64) ** 2  # ||y'||^2 = n ||x_c||^2
        kappa = np.where(sum_yc > 0, nss / np.where(sum_yc > 0, sum_yc, 1.0), 1.0)
        kappa = 1.0 + KAPPA_WEIGHT[b] * (kappa - 1.0)
        out[: 4 * C] = (s * kappa).astype("<f4").view(np.uint8)
        return out

    def tables(self, payload: memoryview, h: Header, layout: Layout) -> np.ndarray:
        C = layout.chunks
        scales = np.frombuffer(payload, dtype="<f4", count=C)
        if not (np.isfinite(scales).all() and (scales >= 0).all()):
            raise DecodeError("chunk scales must be finite and non-negative")
        u = rng.dithers(h.dither_seed, C)
        # r_j * s / sqrt(n) gives y; the unnormalized inverse FWHT needs one more 1/sqrt(n)
        return (grid(int(h.bits)).table(u) * (scales / layout.sizes)[:, None]).astype(np.float32)



METHOD = HDDither()
