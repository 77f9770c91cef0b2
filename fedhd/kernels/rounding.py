"""Rounding and packing kernels (numba, CPU) of the peer compressors (qsgd, hd-sr, drive, eden,
turboquant, topk): stochastic rounding, nearest-centroid codes, plain look-up, integer packing.

They follow the conventions of ``fedhd.kernels.transform_pack``: chunk c covers coordinates
[starts[c], starts[c] + sizes[c]) of the padded vector, its b-bit codes start at byte
code_off[c] and are packed LSB-first by ``transform_pack.pack_codes``.

Stochastic rounding uses the counter-based stream of ``fedhd.rng``: the uniform of padded
coordinate g is ``(splitmix(base, g) >> 11) * 2**-53`` with
``base = splitmix(dither_seed, STREAM_METHOD)``, i.e. ``rng.uniforms(dither_seed,
STREAM_METHOD, padded)[g]``, the same on every backend.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..rng import splitmix_nb
from . import transform_pack as K
from .threads import over_chunks

_INV53 = 2.0**-53


@njit(inline="always", cache=True)
def _sr_codes(vals, real, g0, lc, st, top, base, codes):
    """codes[i] = floor((v_i - lc) / st + u_{g0 + i}) clamped to [0, top], v_i = vals[i]
    for i < real, else 0 (padding)."""
    inv = 1.0 / st if st > 0 else 0.0
    for i in range(codes.shape[0]):
        v = np.float64(vals[i]) if i < real else 0.0
        u = np.float64(splitmix_nb(base, g0 + i) >> np.uint64(11)) * _INV53
        q = np.floor((v - lc) * inv + u)
        if q < 0:
            q = 0.0
        elif q > top:
            q = top
        codes[i] = np.uint8(q)


def sr_quantize(v, d, starts, sizes, lo, step, levels, bits, base, out, code_off):
    """Stochastic rounding onto the grid lo[c] + j * step[c], j = 0..levels[c]-1, packed.

    Coordinate g (v[g] for g < d, 0 beyond) gets code floor((v - lo) / step + u_g) clamped
    to [0, levels - 1]: E[lo + code * step] = v inside the grid. step[c] = 0 gives code 0.
    """
    over_chunks(_sr_quantize, sizes, v, d, starts, sizes, lo, step, levels, bits, base, out,
                code_off)


@njit(nogil=True, cache=True)
def _sr_quantize(c0, c1, v, d, starts, sizes, lo, step, levels, bits, base, out, code_off):
    for c in range(c0, c1):
        n = sizes[c]
        s0 = starts[c]
        codes = np.empty(n, np.uint8)
        real = max(0, min(n, d - s0))
        _sr_codes(v[s0:s0 + real], real, s0, lo[c], step[c], levels[c] - 1, base, codes)
        K.pack_codes(codes, bits, out, code_off[c])


def rotated_extremes(x, d, starts, sizes, keys):
    """(min, max) float32 of each rotated chunk H D x_c (padding zeros included), chunk by
    chunk through one buffer (nothing of the size of x is kept)."""
    lo = np.empty(starts.shape[0], np.float32)
    hi = np.empty(starts.shape[0], np.float32)
    over_chunks(_rotated_extremes, sizes, x, d, starts, sizes, keys, lo, hi)
    return lo, hi


@njit(nogil=True, cache=True)
def _rotated_extremes(c0, c1, x, d, starts, sizes, keys, lo, hi):
    buf = np.empty(sizes[c0:c1].max(), np.float32)
    for c in range(c0, c1):
        n = sizes[c]
        b = buf[:n]
        K.rotate_chunk(x, d, starts[c], keys[c], b)
        lo[c] = b.min()
        hi[c] = b.max()


def rotate_sr_quantize(x, d, starts, sizes, keys, lo, step, levels, bits, base, out,
                       code_off):
    """``sr_quantize`` of the rotated chunks H D x_c (each rotated in a chunk buffer:
    nothing of the size of x is kept); padded coordinate g draws u_g."""
    over_chunks(_rotate_sr_quantize, sizes, x, d, starts, sizes, keys, lo, step, levels, bits,
                base, out, code_off)


@njit(nogil=True, cache=True)
def _rotate_sr_quantize(c0, c1, x, d, starts, sizes, keys, lo, step, levels, bits, base, out,
                        code_off):
    buf = np.empty(sizes[c0:c1].max(), np.float32)
    for c in range(c0, c1):
        n = sizes[c]
        b = buf[:n]
        K.rotate_chunk(x, d, starts[c], keys[c], b)
        codes = np.empty(n, np.uint8)
        _sr_codes(b, n, starts[c], lo[c], step[c], levels[c] - 1, base, codes)
        K.pack_codes(codes, bits, out, code_off[c])


@njit(inline="always", cache=True)
def _nearest_codes(buf, t, cent, bits, base, g0, codes):
    """codes[i] = #{m : t[m] < buf[i]} (a zero on the middle threshold: the code above it
    with probability 1/2, bit 0 of splitmix(base, g0 + i)); returns <buf, cent[codes]>."""
    n = buf.shape[0]
    L = 1 << bits
    if L <= 16:
        for m in range(L - 1):
            tm = t[m]
            for i in range(n):
                codes[i] += buf[i] > tm
    else:  # a bucket table over [t[0], t[L-2]], then an exact walk of a step or two
        M = 8 * L
        t0 = np.float64(t[0])
        width = np.float64(t[L - 2]) - t0
        inv = M / width if width > 0 else 0.0
        lut = np.empty(M, np.int64)
        j = 0
        for k in range(M):
            edge = t0 + k / inv if inv > 0 else t0
            while j < L - 1 and t[j] < edge:
                j += 1
            lut[k] = j
        for i in range(n):
            v = buf[i]
            f = (np.float64(v) - t0) * inv
            k = 0 if f <= 0 else (M - 1 if f >= M - 1 else int(f))
            j = lut[k]
            while j < L - 1 and t[j] < v:
                j += 1
            while j > 0 and not t[j - 1] < v:
                j -= 1
            codes[i] = j
    acc = 0.0
    mid = L // 2 - 1
    for i in range(n):
        if buf[i] == 0 and codes[i] == mid:
            codes[i] += np.uint8(splitmix_nb(base, g0 + i) & np.uint64(1))
        acc += np.float64(buf[i]) * cent[codes[i]]
    return acc


def nearest_quantize(y, starts, sizes, thr, cent, bits, out, code_off, base):
    """Nearest-centroid codes of rotated chunks held in y (padded), packed; returns
    <y_c, cent[code]>.

    thr[c] holds the chunk's L - 1 increasing decision thresholds (in y's units); the code
    of y_i is #{m : thr[c, m] < y_i}; cent (float64, L) are the unscaled centroids. For a
    symmetric codebook 0 is the middle threshold, and a coordinate exactly 0 (frequent
    after rotating sparse inputs) gets the code above it with probability 1/2 (the low
    bit of ``splitmix(base, g)``, g its padded index), so the quantizer stays odd-symmetric
    in distribution.
    """
    dot = np.empty(starts.shape[0], np.float64)
    over_chunks(_nearest_quantize, sizes, y, starts, sizes, thr, cent, bits, out, code_off,
                base, dot)
    return dot


@njit(nogil=True, cache=True)
def _nearest_quantize(c0, c1, y, starts, sizes, thr, cent, bits, out, code_off, base, dot):
    for c in range(c0, c1):
        n = sizes[c]
        codes = np.zeros(n, np.uint8)
        dot[c] = _nearest_codes(y[starts[c]:starts[c] + n], thr[c], cent, bits, base,
                                starts[c], codes)
        K.pack_codes(codes, bits, out, code_off[c])


def rotate_nearest_quantize(x, d, starts, sizes, keys, thr, cent, bits, out, code_off, base):
    """``nearest_quantize`` of the rotated chunks H D x_c, each rotated in a chunk buffer
    (nothing of the size of x is kept)."""
    dot = np.empty(starts.shape[0], np.float64)
    over_chunks(_rotate_nearest_quantize, sizes, x, d, starts, sizes, keys, thr, cent, bits,
                out, code_off, base, dot)
    return dot


@njit(nogil=True, cache=True)
def _rotate_nearest_quantize(c0, c1, x, d, starts, sizes, keys, thr, cent, bits, out,
                             code_off, base, dot):
    buf = np.empty(sizes[c0:c1].max(), np.float32)
    for c in range(c0, c1):
        n = sizes[c]
        b = buf[:n]
        K.rotate_chunk(x, d, starts[c], keys[c], b)
        codes = np.zeros(n, np.uint8)
        dot[c] = _nearest_codes(b, thr[c], cent, bits, base, starts[c], codes)
        K.pack_codes(codes, bits, out, code_off[c])


def lookup_plain(codes, d, starts, sizes, tables, bits, code_off, out):
    """Decode unrotated chunks: out[g] = tables[c][code_g] for the real coordinates g < d."""
    over_chunks(_lookup_plain, sizes, codes, d, starts, sizes, tables, bits, code_off, out)


@njit(nogil=True, cache=True)
def _lookup_plain(c0, c1, codes, d, starts, sizes, tables, bits, code_off, out):
    for c in range(c0, c1):
        n = sizes[c]
        buf = np.empty(n, np.float32)
        K.unpack_lookup(codes, code_off[c], tables[c], bits, buf, np.float32(1.0), False)
        real = min(n, d - starts[c])
        for i in range(real):
            out[starts[c] + i] = buf[i]


@njit(cache=True)
def pack_uint(vals, w, out):
    """Pack unsigned ints of w <= 32 bits each, LSB-first, into out (len >= ceil(k*w/8))."""
    acc = np.uint64(0)
    nbits = 0
    p = 0
    for i in range(vals.shape[0]):
        acc |= np.uint64(vals[i]) << np.uint64(nbits)
        nbits += w
        while nbits >= 8:
            out[p] = np.uint8(acc & np.uint64(0xFF))
            acc >>= np.uint64(8)
            nbits -= 8
            p += 1
    if nbits > 0:
        out[p] = np.uint8(acc & np.uint64(0xFF))


@njit(cache=True)
def unpack_uint(buf, k, w, out):
    """Inverse of ``pack_uint``: k values of w bits from buf into out (int64)."""
    mask = np.uint64((1 << w) - 1)
    acc = np.uint64(0)
    nbits = 0
    p = 0
    for i in range(k):
        while nbits < w:
            acc |= np.uint64(buf[p]) << np.uint64(nbits)
            p += 1
            nbits += 8
        out[i] = np.int64(acc & mask)
        acc >>= np.uint64(w)
        nbits -= w
