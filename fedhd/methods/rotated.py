"""Shared machinery of the methods that quantize in the rotated domain of the HD transform.

For a chunk of n coordinates, y' = H D x (unnormalized H, H H = n I; D the ±1 signs of
``rng.sign_keys(seed)``). A *table method* sends b-bit codes of y' and, per chunk, what
turns a code into a value: the decoder builds ``tables`` (chunks, 2**b) float32, the
decoded rotated value of each code times 1/n, and returns D H table_c[code]. Because the
rotation is linear and shared by every client of a round, sum_k w_k D H r_k =
D H (sum_k w_k r_k): blobs add in the rotated domain before one inverse transform
(``commutes_with_sum``).

Payload of a table method: ``head_bytes`` of per-chunk fields, then the codes of every
chunk, chunk c's at byte ``fedhd.layout.code_offsets(layout, b, head)[c]`` (``padded * b / 8``
bytes in all, packed as ``fedhd.kernels.transform_pack`` describes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import rng
from ..backend import CPU, Backend
from ..backend.cpu import finite_chunk_sumsq
from ..errors import DecodeError
from ..kernels import rounding as R
from ..layout import Layout, code_offsets
from ..lloyd_max import codebook
from ..wire import Header
from .base import MAX_DECODED, Contribution, Method, blob_buffer, rotated_norm


class TableContribution(Contribution):
    """A table method's blob: codes, look-up tables and code offsets."""

    def __init__(self, codes: np.ndarray, layout: Layout, tables: np.ndarray, bits: int,
                 off: np.ndarray):
        self.codes, self.layout, self.tables, self.bits, self.off = (codes, layout, tables,
                                                                    bits, off)
        self.max_abs = float(np.abs(tables).max(initial=0.0))

    def add_to(self, acc: Any, weight: float, be: Backend,
               scratch: dict[str, Any] | None = None) -> Any:
        be.lookup_rotated(self.codes, self.layout, self.tables, self.bits, self.off, weight,
                          acc)
        return acc

    def norm(self) -> float:
        acc = np.zeros(self.layout.padded, np.float32)
        self.add_to(acc, 1.0, CPU)
        return rotated_norm(acc, self.layout)


class RotatedTableMethod(Method):
    """A rotated fixed-rate method decoded by a per-chunk table look-up followed by the
    inverse rotation. Subclasses provide ``head_bytes`` and ``make_tables``."""

    abstract = True
    commutes_with_sum = True
    device_decode = True

    def head_bytes(self, layout: Layout) -> int:
        """Bytes of per-chunk fields before the codes."""
        raise NotImplementedError

    def make_tables(self, payload: memoryview, h: Header, layout: Layout) -> np.ndarray:
        """float64 (chunks, 2**b): the decoded rotated value of each code, times 1/n for
        the unnormalized inverse FWHT; DecodeError for per-chunk fields out of range."""
        raise NotImplementedError

    def tables(self, payload: memoryview, h: Header, layout: Layout) -> np.ndarray:
        """The float32 look-up tables, checked: finite, and small enough that every decoded
        coordinate (at most n * max|table| in magnitude) stays within ``MAX_DECODED``."""
        t = self.make_tables(payload, h, layout)
        bound = np.abs(t).max(axis=1, initial=0.0) * layout.sizes[: t.shape[0]]
        if not (np.isfinite(t).all() and (bound <= MAX_DECODED).all()):
            raise DecodeError(f"{self.name}: per-chunk fields imply decoded values beyond "
                              f"{MAX_DECODED:.3g} (or NaN/Inf)")
        return t.astype(np.float32)

    def check_encodable(self, payload: np.ndarray, h: Header, layout: Layout) -> None:
        """Encoders call this on their payload: what they send must decode (ValueError)."""
        try:
            self.tables(memoryview(payload.data), h, layout)
        except DecodeError:
            raise ValueError(f"x is too large for {self.name}: its decoded values would "
                             f"exceed {MAX_DECODED:.3g}") from None

    def payload_size(self, h: Header, layout: Layout) -> int:
        return self.head_bytes(layout) + layout.padded * int(h.bits) // 8

    def _parts(self, payload: memoryview, h: Header,
               layout: Layout) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
        b = int(h.bits)
        return (np.frombuffer(payload, np.uint8), self.tables(payload, h, layout), b,
                code_offsets(layout, b, self.head_bytes(layout)))

    def decode_payload(self, payload, h, layout, out, be):
        codes, tables, b, off = self._parts(payload, h, layout)
        be.dequantize_unrotate(codes, layout, rng.sign_keys(h.seed, layout.chunks), tables, b,
                               off, out)

    def rotated_contribution(self, payload, h, layout, low_memory=False):  # no scratch
        codes, tables, b, off = self._parts(payload, h, layout)
        return TableContribution(codes, layout, tables, b, off)


class RotatedCodebook(RotatedTableMethod):
    """HD rotation + nearest centroid of a fixed N(0, 1) codebook + one scale per chunk
    (eden, drive, turboquant: they differ in the codebook and the scale rule).

    Coordinates exactly 0, on the middle threshold, take either neighbouring centroid with
    probability 1/2 (``rng.rounding_key(dither_seed)``): sparse inputs rotate to many exact
    zeros, and sending them all to one side is a measurable bias.

    Payload: C float32 scales A (the decoder's multiplier of the centroids), then the codes.
    """

    abstract = True

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

    def encode_payload(self, x, h, layout, be):
        b = int(h.bits)
        C = layout.chunks
        ss = finite_chunk_sumsq(x, layout)
        sigma = np.sqrt(ss)
        cent, thr = self.codebook(b)
        thr_c = (sigma[:, None] * thr[None, :]).astype(np.float32)
        raw, out = blob_buffer(self.payload_size(h, layout))
        dot = R.rotate_nearest_quantize(x, h.d, layout.starts, layout.sizes,
                                        rng.sign_keys(h.seed, C), thr_c, cent, b, out,
                                        code_offsets(layout, b, 4 * C),
                                        rng.rounding_key(h.dither_seed))
        A = self.scale(layout.sizes * ss, dot, sigma).astype(np.float32)
        if not (np.isfinite(dot).all() and np.isfinite(A).all()):
            raise ValueError("x is too large: its rotation overflows float32")
        out[: 4 * C] = A.astype("<f4").view(np.uint8)
        self.check_encodable(out, h, layout)
        return raw

    def make_tables(self, payload, h, layout):
        A = np.frombuffer(payload, dtype="<f4", count=layout.chunks).astype(np.float64)
        if not (np.isfinite(A).all() and (A >= 0).all()):
            raise DecodeError(f"{self.name} scales must be finite and non-negative")
        cent, _ = self.codebook(int(h.bits))
        # the unnormalized inverse FWHT needs 1/n
        return (A / layout.sizes)[:, None] * cent[None, :]

