"""eden: EDEN (Vargaftik, Ben Basat, Portnoy, Mendelson, Ben-Itzhak, Mitzenmacher, ICML
2022), fixed rate b = 1..8 bits per coordinate.

Per chunk, y' = H D x (shared rotation seed, ``rng.sign_keys``; unnormalized H, so
||y'||^2 = n ||x_c||^2 and y' / ||x_c|| has roughly N(0, 1) coordinates). Each coordinate
goes to the nearest Lloyd-Max centroid of N(0, 1) (``fedhd.lloyd_max``), deterministically;
the decoder multiplies the centroids by EDEN's unbiased scale

    A = ||y'||^2 / <y', c[code]>,

which makes E[x_hat] = x over a uniformly random rotation and gives vNMSE
D_b / (1 - D_b) on Gaussian-like coordinates (D_b the Lloyd-Max distortion): 0.571, 0.133,
0.0358, 0.0096 at b = 1..4. With one HD instead of a uniform rotation the unbiasedness is
approximate (measured in ``python -m fedhd bench vnmse``), and since every client of a
round shares the rotation, their errors are correlated: give clients distinct rotation
seeds when averaging many (fedhd.Aggregator keeps one rotated sum per seed).

Coordinates exactly 0, on the middle threshold, take either neighbouring centroid with
probability 1/2 (from the dither seed's stream): sparse inputs rotate to many exact zeros,
and sending them all to one side is a measurable bias.

Payload: C float32 scales A, then the codes (padded * b / 8 bytes).

``RotatedCodebook`` is the shared machinery of eden, drive and turboquant, which differ
only in the codebook and the scale rule.
"""

from __future__ import annotations

import numpy as np

from .. import kernels as K
from .. import peer_kernels as PK
from .. import rng
from ..errors import DecodeError
from ..layout import Layout
from ..lloyd_max import codebook
from ..wire import Header
from .base import RotatedTableMethod, code_offsets, finite_chunk_sumsq
from .qsgd import method_base_key


class RotatedCodebook(RotatedTableMethod):
    """HD rotation + nearest centroid of a fixed N(0, 1) codebook + one scale per chunk."""

    def codebook(self, bits: int) -> tuple[np.ndarray, np.ndarray]:
        """(centroids (L,), thresholds (L - 1,)) in units of z = y' / ||x_c||."""
        cb = codebook(bits)
        return cb.centroids, cb.thresholds

    def scale(self, nss: np.ndarray, dot: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """The decoder's multiplier A of the centroids, from ||y'||^2 = n ||x_c||^2,
        <y', c[code]> and sigma = ||x_c||. EDEN: the unbiased scale."""
        ok = dot > 0
        return np.where(ok, nss / np.where(ok, dot, 1.0), 0.0)

    def head_bytes(self, layout: Layout) -> int:
        return 4 * layout.chunks  # the scale A of each chunk

    def encode_payload(self, x: np.ndarray, h: Header, layout: Layout) -> np.ndarray:
        b = int(h.bits)
        C = layout.chunks
        ss = finite_chunk_sumsq(x, layout)
        sigma = np.sqrt(ss)
        y = np.empty(layout.padded, np.float32)
        K.rotate(x, h.d, layout.starts, layout.sizes, rng.sign_keys(h.seed, C), y)
        cent, thr = self.codebook(b)
        thr_c = (sigma[:, None] * thr[None, :]).astype(np.float32)
        out = np.empty(self.payload_size(h, layout), np.uint8)
        dot = PK.nearest_quantize(y, layout.starts, layout.sizes, thr_c, cent, b, out,
                                  code_offsets(layout, b, 4 * C),
                                  method_base_key(h.dither_seed))
        A = self.scale(layout.sizes * ss, dot, sigma).astype(np.float32)
        if not (np.isfinite(dot).all() and np.isfinite(A).all()):
            raise ValueError("x is too large: its rotation overflows float32")
        out[: 4 * C] = A.astype("<f4").view(np.uint8)
        return out

    def tables(self, payload: memoryview, h: Header, layout: Layout) -> np.ndarray:
        A = np.frombuffer(payload, dtype="<f4", count=layout.chunks).astype(np.float64)
        if not (np.isfinite(A).all() and (A >= 0).all()):
            raise DecodeError(f"{self.name} scales must be finite and non-negative")
        cent, _ = self.codebook(int(h.bits))
        # the unnormalized inverse FWHT needs 1/n
        return ((A / layout.sizes)[:, None] * cent[None, :]).astype(np.float32)


class EDEN(RotatedCodebook):
    name = "eden"
    method_id = 7
    default_bits = 2
    unbiased = True  # over a uniform rotation; approximately with one HD


METHOD = EDEN()
