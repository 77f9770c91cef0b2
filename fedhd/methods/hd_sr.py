"""hd-sr: randomized Hadamard rotation + stochastic rounding between the chunk's min and
max (Suresh, Yu, Kumar, McMahan, "Distributed Mean Estimation with Limited
Communication", ICML 2017, pi_srk), fixed rate b = 1..8 bits per coordinate.

Per chunk, y' = H D x (shared rotation seed, ``rng.sign_keys``); the 2**b levels are
spread uniformly from min(y') to max(y') and each y'_i is rounded stochastically to one of
its two neighbouring levels, so E[y_hat'] = y' exactly and the decode is unbiased for
every input and every rotation. The uniforms are ``rng.uniforms(dither_seed,
STREAM_METHOD, padded)`` (``rng.rounding_key``, ``fedhd.kernels.rounding``).

Payload: per chunk lo and step (2 x float32; level j is lo + j * step), then the codes
(padded * b / 8 bytes).
"""

from __future__ import annotations

import numpy as np

from .. import rng
from ..errors import DecodeError
from ..kernels import rounding as R
from ..layout import Layout, code_offsets
from .base import blob_buffer, finite_chunk_sumsq, round_up_f32
from .rotated import RotatedTableMethod


class HDSR(RotatedTableMethod):
    name = "hd-sr"
    default_bits = 4
    unbiased = True

    def head_bytes(self, layout: Layout) -> int:
        return 8 * layout.chunks  # the minimum and step of each chunk

    def encode_payload(self, x, h, layout, be):
        b = int(h.bits)
        C = layout.chunks
        L = 1 << b
        finite_chunk_sumsq(x, layout)
        keys = rng.sign_keys(h.seed, C)
        # two passes, each rotating chunk by chunk: the extremes, then the codes
        ymin, ymax = (v.astype(np.float64) for v in
                      R.rotated_extremes(x, h.d, layout.starts, layout.sizes, keys))
        if not (np.isfinite(ymin).all() and np.isfinite(ymax).all()):
            raise ValueError("x is too large: its rotation overflows float32")
        lo = -round_up_f32(-ymin)  # float32 <= min
        lo64 = lo.astype(np.float64)
        step = round_up_f32((ymax - lo64) / (L - 1))
        short = lo64 + (L - 1) * step.astype(np.float64) < ymax  # rounding: cover the max
        step[short] = np.nextafter(step[short], np.float32(np.inf))
        raw, out = blob_buffer(self.payload_size(h, layout))
        out[: 8 * C] = np.stack([lo, step], axis=1).astype("<f4").reshape(-1).view(np.uint8)
        R.rotate_sr_quantize(
            x, h.d, layout.starts, layout.sizes, keys, lo64, step.astype(np.float64),
            np.full(C, L, np.int64), b, rng.rounding_key(h.dither_seed), out,
            code_offsets(layout, b, 8 * C),
        )
        self.check_encodable(out, h, layout)
        return raw

    def make_tables(self, payload, h, layout):
        C = layout.chunks
        f = np.frombuffer(payload, dtype="<f4", count=2 * C).reshape(C, 2).astype(np.float64)
        lo, step = f[:, 0], f[:, 1]
        if not (np.isfinite(f).all() and (step >= 0).all()):
            raise DecodeError("hd-sr lo/step must be finite and step non-negative")
        levels = lo[:, None] + np.arange(1 << int(h.bits))[None, :] * step[:, None]
        # the unnormalized inverse FWHT needs 1/n
        return levels / layout.sizes[:, None]


METHOD = HDSR()
