"""powersgd: PowerSGD (Vogels, Karimireddy, Jaggi, NeurIPS 2019), rank-r factors of every
weight matrix by one warm-started power iteration; vectors and small tensors as they are.

fedhd stays a flat-vector codec. The encoder views parts of the vector as matrices and the
blob says which, so the decoder needs nothing but the blob:

- Which parts are matrices: an encoder-side ``PowerSGDContext`` (``fedhd.encode(...,
  context=ctx)``, ``Codec.encode(..., context=ctx)``) lists the shapes of the tensors the
  vector concatenates, in order; a tensor of shape (n, k1, k2, ...) is viewed as the
  n x (k1 k2 ...) matrix of its row-major elements (PowerSGD's reshape of conv kernels).
  Tensors of fewer than 2 dimensions, and matrices whose factors would not be smaller than
  their raw coordinates, travel as float32 coordinates. Without shapes the whole vector is
  viewed as ONE matrix of rows = isqrt(d) and cols = d // rows, its last d - rows cols
  coordinates raw.
- The rank rule: ``bits`` is a budget R in bits per coordinate (a multiple of 1/16 in
  [1/16, 32]) that the factors of each rows x cols matrix spend: its rank is
  r = max(1, floor(R rows cols / (32 (rows + cols)))), the largest rank whose float32 P
  (rows x r) and Q (cols x r) fit R bits per coordinate of the matrix (at least 1). A
  matrix with r (rows + cols) >= rows cols goes raw instead (exact and no larger). So
  "PowerSGD at 2 bits per coordinate" is ``fedhd.Codec("powersgd", bits=2)``; the blob
  costs R bits per matrix coordinate at most (below it where the floor bites, above it
  only where rank 1 already exceeds R), 32 bits per raw coordinate, and 31 + 4 + 12 V
  bytes of header and view list for V matrices.
- The warm start (Vogels et al.): per matrix M, P = M Q_prev, P orthonormalized
  (modified Gram-Schmidt, run twice; a column left without a direction of its own is set
  to 0), Q = M^T P; the blob carries P and Q, the decoder returns M_hat = P Q^T (= P P^T M,
  the projection of M's columns on span(P)), and Q is the next round's Q_prev: the context
  returns it in ``ctx.warm_start``. One power iteration a round, so over rounds of similar
  matrices span(P) converges to the top-r singular subspace. Q_prev comes from
  ``ctx.warm_start`` when its entry has shape (cols, r) and is finite (its zero columns
  redrawn), else from ``fedhd.rng.powersgd_start(dither_seed, v, cols r)`` for view v.

The products and the Gram-Schmidt are numba loops in a fixed order (float64, no fused
multiply-adds), not BLAS or LAPACK, so the blob is the same bytes on every machine (the
golden test pins them). Biased (a rank-r projection); use it with error feedback, which the
Flower mod turns on for it by default (``strategies.error_feedback``).

Payload (little-endian):

- u32 V, the number of matrix views; then V x (u32 offset, u32 rows, u32 cols), offsets
  increasing, views disjoint and inside [0, d), each with rank r >= 1 by the rule above
  and r (rows + cols) < rows cols;
- the raw coordinates: float32, every coordinate outside the views, in index order;
- per view: P (rows x r, row-major) then Q (cols x r, row-major), float32.

The decoder checks all of it before allocating, and refuses non-finite values, raw values
beyond ``MAX_DECODED`` and factors with r max|P| max|Q| > ``MAX_DECODED`` (which bounds
every decoded coordinate).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from .. import rng
from ..errors import DecodeError
from ..layout import Layout
from ..wire import HEADER_BYTES, Header, seal, write_header
from .base import MAX_DECODED, Method

VIEW_BYTES = 12  # u32 offset, rows, cols
#: A Gram-Schmidt column whose norm falls below this fraction of its norm before the
#: projections has no direction of its own: it is set to 0.
DEPENDENT = 1e-10


@dataclass
class PowerSGDContext:
    """Encoder-side state of powersgd for one client.

    Parameters
    ----------
    shapes : sequence of tuples, optional
        The shapes of the tensors the flat vector concatenates, in order (their sizes must
        add up to d). None: the vector is one near-square matrix (see the module).
    warm_start : list, optional
        One entry per tensor (per matrix when ``shapes`` is None): the Q (cols x r) of the
        last round for tensors sent as factors, None for the others. ``encode`` replaces it
        with this round's Qs; an entry of another shape, or missing, starts afresh.
    """

    shapes: Sequence[tuple[int, ...]] | None = None
    warm_start: list[np.ndarray | None] = field(default_factory=list)


@dataclass(frozen=True)
class View:
    """One matrix view of the flat vector: rows x cols elements from ``offset`` on, sent as
    rank-``rank`` factors; ``tensor`` indexes the context's shapes."""

    offset: int
    rows: int
    cols: int
    rank: int
    tensor: int

    @property
    def size(self) -> int:
        return self.rows * self.cols


def ranks(bits_x16: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The rank of each rows x cols matrix at a budget of bits_x16 / 16 bits per
    coordinate (exact integer arithmetic), 0 where the matrix goes raw."""
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    size = rows * cols
    r = np.maximum(1, (int(bits_x16) * size) // (512 * (rows + cols)))
    return np.where((rows >= 2) & (cols >= 2) & (r * (rows + cols) < size), r, 0)


def rank_for(bits: float, rows: int, cols: int) -> int:
    """The rank powersgd gives a rows x cols matrix at a budget of ``bits`` bits per
    coordinate (rounded to 1/16), 0 when it goes raw."""
    return int(ranks(round(bits * 16), np.array([rows]), np.array([cols]))[0])


def plan(d: int, bits_x16: int, shapes: Sequence[tuple[int, ...]] | None) -> list[View]:
    """The matrix views of a length-d vector made of tensors of these ``shapes``."""
    if shapes is None:
        rows = math.isqrt(d)
        mats = [(0, rows, d // rows, 0)]
    else:
        mats, pos = [], 0
        for i, shape in enumerate(shapes):
            dims = [int(n) for n in shape]
            if any(n < 0 for n in dims):
                raise ValueError(f"powersgd: tensor {i} has a negative dimension {shape}")
            size = math.prod(dims)
            if len(dims) >= 2:
                mats.append((pos, dims[0], size // dims[0] if dims[0] else 0, i))
            pos += size
        if pos != d:
            raise ValueError(f"powersgd: the shapes hold {pos} coordinates, the vector {d}")
    if not mats:
        return []
    r = ranks(bits_x16, np.array([m[1] for m in mats]), np.array([m[2] for m in mats]))
    return [View(off, rows, cols, int(k), t) for (off, rows, cols, t), k in zip(mats, r)
            if k > 0]


# --- kernels: fixed summation order, float64 ----------------------------------------------


@njit(nogil=True, cache=True)
def _m_q(x, off, rows, cols, q):
    """M Q for M the rows x cols view of x at off (float64 (rows, r))."""
    r = q.shape[1]
    p = np.zeros((rows, r))
    for i in range(rows):
        base = off + i * cols
        for j in range(cols):
            v = np.float64(x[base + j])
            for k in range(r):
                p[i, k] += v * q[j, k]
    return p


@njit(nogil=True, cache=True)
def _mt_p(x, off, rows, cols, p):
    """M^T P (float64 (cols, r)), summed over the rows in order."""
    r = p.shape[1]
    q = np.zeros((cols, r))
    for i in range(rows):
        base = off + i * cols
        for j in range(cols):
            v = np.float64(x[base + j])
            for k in range(r):
                q[j, k] += v * p[i, k]
    return q


@njit(nogil=True, cache=True)
def _orthonormalize(p, dependent):
    """Orthonormal columns in place: modified Gram-Schmidt, each column projected twice;
    a column whose norm drops below ``dependent`` times its first norm becomes 0."""
    rows, r = p.shape
    for k in range(r):
        n0 = 0.0
        for i in range(rows):
            n0 += p[i, k] * p[i, k]
        n0 = np.sqrt(n0)
        for _ in range(2):
            for j in range(k):
                dot = 0.0
                for i in range(rows):
                    dot += p[i, j] * p[i, k]
                for i in range(rows):
                    p[i, k] -= dot * p[i, j]
        n = 0.0
        for i in range(rows):
            n += p[i, k] * p[i, k]
        n = np.sqrt(n)
        if n0 > 0 and n > dependent * n0:
            for i in range(rows):
                p[i, k] /= n
        else:
            for i in range(rows):
                p[i, k] = 0.0


@njit(nogil=True, cache=True)
def _p_qt(p, q, out, off):
    """out[off:] = P Q^T (row-major rows x cols), each element summed in float64 over
    k = 0..r-1 in order (a row at a time, so the inner loop runs along Q^T's rows)."""
    rows, r = p.shape
    cols = q.shape[0]
    qt = np.empty((r, cols))
    for j in range(cols):
        for k in range(r):
            qt[k, j] = np.float64(q[j, k])
    acc = np.empty(cols)
    for i in range(rows):
        acc[:] = 0.0
        for k in range(r):
            pik = np.float64(p[i, k])
            for j in range(cols):
                acc[j] += pik * qt[k, j]
        base = off + i * cols
        for j in range(cols):
            out[base + j] = np.float32(acc[j])


def _factor_bound(p: np.ndarray, q: np.ndarray) -> float:
    """r max|P| max|Q|: a bound on every |(P Q^T)_ij|."""
    return float(p.shape[1] * np.abs(p).max(initial=0.0) * np.abs(q).max(initial=0.0))


def _raw_mask_segments(views: Sequence[tuple[int, int]], d: int) -> list[tuple[int, int]]:
    """[start, stop) of the raw stretches between views (given as (offset, size))."""
    out, pos = [], 0
    for off, size in views:
        if off > pos:
            out.append((pos, off))
        pos = off + size
    if pos < d:
        out.append((pos, d))
    return out


class PowerSGD(Method):
    name = "powersgd"
    integer_bits = False
    min_bits = 1 / 16
    max_bits = 32
    default_bits = 2.0
    unbiased = False
    takes_context = True

    def check_bits(self, bits: float) -> float:
        b = super().check_bits(bits)
        return round(b * 16) / 16  # what the header can carry

    # -- framing ---------------------------------------------------------------------------
    def _views(self, buf: memoryview, start: int, total: int, h: Header
               ) -> tuple[np.ndarray, np.ndarray, int, int]:
        """(views (V, 3) int64 offset/rows/cols, ranks, raw coordinates, factor floats) of
        the view list at ``buf[start:]`` (``total`` bytes of blob from ``start``), every
        field checked against the header; DecodeError otherwise."""
        if total < 4:
            raise DecodeError(f"{self.name} blob is truncated: no view count")
        (V,) = struct.unpack_from("<I", buf, start)
        if V > (total - 4) // VIEW_BYTES:
            raise DecodeError(f"{self.name} blob is truncated: {V} views do not fit")
        views = np.frombuffer(buf, "<u4", 3 * V, start + 4).reshape(V, 3).astype(np.int64)
        off, rows, cols = views[:, 0], views[:, 1], views[:, 2]
        d = h.d
        if V and not ((rows <= d) & (cols <= d)).all():
            raise DecodeError(f"{self.name} view larger than the vector")
        size = rows * cols
        end = off + size
        if V and not ((end <= d).all() and (off[1:] >= end[:-1]).all()):
            raise DecodeError(f"{self.name} views must be increasing, disjoint and inside d")
        r = ranks(h.bits_x16, rows, cols)
        if V and not (r > 0).all():
            raise DecodeError(f"{self.name} view whose rank at {h.bits} bits is not "
                              "smaller than its raw size")
        return views, r, d - int(size.sum()), int((r * (rows + cols)).sum())

    def expected_size(self, blob: memoryview, h: Header, layout: Layout) -> int:
        views, _, raw, factors = self._views(blob, HEADER_BYTES, len(blob) - HEADER_BYTES, h)
        return HEADER_BYTES + 4 + VIEW_BYTES * len(views) + 4 * raw + 4 * factors

    # -- encode ----------------------------------------------------------------------------
    def _start(self, warm: Any, view: View, index: int, dither_seed: int) -> np.ndarray:
        """Q_prev of one view: the warm start when it fits, else (or for its zero
        columns) the documented random start."""
        shape = (view.cols, view.rank)
        q = None
        if isinstance(warm, np.ndarray) and warm.shape == shape and warm.dtype.kind == "f":
            q = warm.astype(np.float64)
            if not np.isfinite(q).all():
                q = None
        fresh = rng.powersgd_start(dither_seed, index, view.cols * view.rank).reshape(shape)
        if q is None:
            return fresh
        dead = ~q.any(axis=0)
        q[:, dead] = fresh[:, dead]
        return q

    def encode(self, x: Any, h: Header, be: Any, context: Any = None) -> bytes:
        if context is None:
            context = PowerSGDContext()
        if not isinstance(context, PowerSGDContext):
            raise TypeError(f"powersgd takes a PowerSGDContext, got {type(context).__name__}")
        if not np.isfinite(x).all():
            raise ValueError("x contains NaN or Inf")
        views = plan(h.d, h.bits_x16, context.shapes)
        n_tensors = 1 if context.shapes is None else len(context.shapes)
        warm = list(context.warm_start or [])
        warm += [None] * (n_tensors - len(warm))
        segments = _raw_mask_segments([(v.offset, v.size) for v in views], h.d)
        raw = (np.concatenate([x[a:b] for a, b in segments]) if segments
               else np.empty(0, np.float32)).astype("<f4")
        if not (np.abs(raw.astype(np.float64)) <= MAX_DECODED).all():
            raise ValueError(f"x is too large for {self.name}: a raw coordinate exceeds "
                             f"{MAX_DECODED:.3g}")
        parts: list[bytes] = [struct.pack("<I", len(views))]
        parts += [struct.pack("<III", v.offset, v.rows, v.cols) for v in views]
        parts.append(raw.tobytes())
        new_warm: list[np.ndarray | None] = [None] * n_tensors
        xh = np.ascontiguousarray(x, np.float32)
        for i, v in enumerate(views):
            p = _m_q(xh, v.offset, v.rows, v.cols, self._start(warm[v.tensor], v, i,
                                                                h.dither_seed))
            _orthonormalize(p, DEPENDENT)
            p32 = p.astype(np.float32)
            q32 = _mt_p(xh, v.offset, v.rows, v.cols, p32.astype(np.float64)).astype(
                np.float32)
            if not (np.isfinite(q32).all() and _factor_bound(p32, q32) <= MAX_DECODED):
                raise ValueError(f"x is too large for {self.name}: a decoded coordinate "
                                 f"could exceed {MAX_DECODED:.3g}")
            parts += [p32.astype("<f4").tobytes(), q32.astype("<f4").tobytes()]
            new_warm[v.tensor] = q32
        payload = b"".join(parts)
        buf = bytearray(HEADER_BYTES + len(payload))
        write_header(buf, h)
        buf[HEADER_BYTES:] = payload
        context.warm_start = new_warm
        return seal(buf)

    # -- decode ----------------------------------------------------------------------------
    def decode_payload(self, payload, h, layout, out, be):
        views, r, n_raw, _ = self._views(payload, 0, len(payload), h)
        pos = 4 + VIEW_BYTES * len(views)
        raw = np.frombuffer(payload, "<f4", n_raw, pos)
        if not (np.isfinite(raw).all() and (np.abs(raw) <= MAX_DECODED).all()):
            raise DecodeError(f"{self.name} raw coordinates must be finite and at most "
                              f"{MAX_DECODED:.3g}")
        pos += 4 * n_raw
        factors = []
        for (off, rows, cols), k in zip(views.tolist(), r.tolist()):
            p = np.frombuffer(payload, "<f4", rows * k, pos).reshape(rows, k)
            q = np.frombuffer(payload, "<f4", cols * k, pos + 4 * rows * k).reshape(cols, k)
            pos += 4 * k * (rows + cols)
            if not (np.isfinite(p).all() and np.isfinite(q).all()
                    and _factor_bound(p, q) <= MAX_DECODED):
                raise DecodeError(f"{self.name} factors must be finite and bound the "
                                  f"decoded values by {MAX_DECODED:.3g}")
            factors.append((off, p, q))
        # everything checked: write
        at = 0
        for a, b in _raw_mask_segments([(o, rw * c) for o, rw, c in views.tolist()], h.d):
            out[a:b] = raw[at:at + b - a]
            at += b - a
        for off, p, q in factors:
            _p_qt(np.ascontiguousarray(p), np.ascontiguousarray(q), out, off)


METHOD = PowerSGD()
