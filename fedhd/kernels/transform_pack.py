"""Fused CPU kernels (numba), one pass over memory per direction.

All kernels work chunk by chunk (a chunk of <= 2**16 float32 fits in L2 cache) and run
chunks in parallel. ``fwht`` is the unnormalized Walsh-Hadamard transform H (H H = n I);
callers fold the 1/sqrt(n) normalization into scales and tables.

Code packing: chunk c's codes occupy bytes [code_off[c], code_off[c] + n_c * b / 8);
groups of 8 consecutive b-bit codes fill b bytes, code q of a group at bits
[q*b, (q+1)*b) of the group's little-endian integer (LSB first).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..rng import splitmix_nb
from .threads import over_chunks


@njit(inline="always", cache=True)
def fwht(a):
    """In-place unnormalized FWHT of a float32 array of power-of-2 length >= 8.

    A radix-8 pass, then radix-4 passes over contiguous views (which LLVM vectorizes).
    """
    n = a.shape[0]
    for i in range(0, n, 8):
        a0 = a[i] + a[i + 1]
        a1 = a[i] - a[i + 1]
        a2 = a[i + 2] + a[i + 3]
        a3 = a[i + 2] - a[i + 3]
        a4 = a[i + 4] + a[i + 5]
        a5 = a[i + 4] - a[i + 5]
        a6 = a[i + 6] + a[i + 7]
        a7 = a[i + 6] - a[i + 7]
        b0 = a0 + a2
        b1 = a1 + a3
        b2 = a0 - a2
        b3 = a1 - a3
        b4 = a4 + a6
        b5 = a5 + a7
        b6 = a4 - a6
        b7 = a5 - a7
        a[i] = b0 + b4
        a[i + 1] = b1 + b5
        a[i + 2] = b2 + b6
        a[i + 3] = b3 + b7
        a[i + 4] = b0 - b4
        a[i + 5] = b1 - b5
        a[i + 6] = b2 - b6
        a[i + 7] = b3 - b7
    h = 8
    while h < n:
        if 4 * h <= n:
            for i in range(0, n, 4 * h):
                p0 = a[i:i + h]
                p1 = a[i + h:i + 2 * h]
                p2 = a[i + 2 * h:i + 3 * h]
                p3 = a[i + 3 * h:i + 4 * h]
                for k in range(h):
                    s0 = p0[k] + p1[k]
                    s1 = p0[k] - p1[k]
                    s2 = p2[k] + p3[k]
                    s3 = p2[k] - p3[k]
                    p0[k] = s0 + s2
                    p1[k] = s1 + s3
                    p2[k] = s0 - s2
                    p3[k] = s1 - s3
            h *= 4
        else:
            for i in range(0, n, 2 * h):
                p0 = a[i:i + h]
                p1 = a[i + h:i + 2 * h]
                for k in range(h):
                    s0 = p0[k] + p1[k]
                    p1[k] = p0[k] - p1[k]
                    p0[k] = s0
            h *= 2


@njit(inline="always", cache=True)
def load_signed(x, start, real, key, buf):
    """buf[i] = sign_i * x[start + i] for i < real, 0 beyond (padding)."""
    n = buf.shape[0]
    for w in range((n + 63) // 64):
        word = splitmix_nb(key, w)
        base = w * 64
        for k in range(64):
            i = base + k
            if i >= n:
                break
            v = np.float32(0.0)
            if i < real:
                v = x[start + i]
            if (word >> np.uint64(k)) & np.uint64(1):
                v = -v
            buf[i] = v


@njit(inline="always", cache=True)
def store_signed(buf, start, real, key, out):
    """out[start + i] = sign_i * buf[i] for i < real (drops padding)."""
    n = buf.shape[0]
    for w in range((n + 63) // 64):
        word = splitmix_nb(key, w)
        base = w * 64
        for k in range(64):
            i = base + k
            if i >= real:
                break
            v = buf[i]
            if (word >> np.uint64(k)) & np.uint64(1):
                v = -v
            out[start + i] = v


@njit(fastmath={"reassoc", "nsz", "arcp", "contract"}, nogil=True, cache=True)
def _dot(a, b):
    """sum_i a_i b_i in float64; reassociated (vectorized): the order of the additions may
    differ between CPUs, which moves the float64 result by ~1e-16 relative."""
    s = 0.0
    for i in range(a.shape[0]):
        s += np.float64(a[i]) * np.float64(b[i])
    return s


@njit(fastmath={"reassoc", "nsz", "arcp", "contract"}, nogil=True, cache=True)
def _clip_dot(a, cs):
    """sum_i a_i clamp(a_i, -cs, cs) in float64, reassociated like ``_dot``."""
    s = 0.0
    for i in range(a.shape[0]):
        v = np.float64(a[i])
        s += v * min(max(v, -cs), cs)
    return s


@njit(nogil=True, cache=True)
def _chunk_sumsq(c0, c1, x, starts, sizes, d, out):
    for c in range(c0, c1):
        seg = x[starts[c]:min(starts[c] + sizes[c], d)]
        out[c] = _dot(seg, seg)


def chunk_sumsq(x, starts, sizes, d):
    """Sum of squares (float64) of the real coordinates of each chunk."""
    out = np.empty(starts.shape[0], np.float64)
    over_chunks(_chunk_sumsq, sizes, x, starts, sizes, d, out)
    return out


@njit(inline="always", cache=True)
def count_below(buf, thr, bits, codes):
    """codes[i] = #{m : thr[m] < buf[i]} (thr sorted, 2**bits - 1 of them used)."""
    n = buf.shape[0]
    L = 1 << bits
    if L <= 16:  # a few vectorized compare-and-count passes over the cached chunk
        for m in range(L - 1):
            t = thr[m]
            for i in range(n):
                codes[i] += buf[i] > t
    else:  # branchless binary search over the sorted thresholds
        for i in range(n):
            v = buf[i]
            j = 0
            step = L >> 1
            while step > 0:
                if thr[j + step - 1] < v:
                    j += step
                step >>= 1
            codes[i] = j


@njit(inline="always", cache=True)
def quantize_pack(buf, thr, bits, out, off):
    """Quantize a chunk against its thresholds and pack the codes at out[off:].

    The common widths get their own copy of the loops with the width a constant, which
    the compiler vectorizes (a run-time width is ~8x slower).
    """
    codes = np.zeros(buf.shape[0], np.uint8)
    if bits == 1:
        count_below(buf, thr, 1, codes)
        pack_codes(codes, 1, out, off)
    elif bits == 2:
        count_below(buf, thr, 2, codes)
        pack_codes(codes, 2, out, off)
    elif bits == 4:
        count_below(buf, thr, 4, codes)
        pack_codes(codes, 4, out, off)
    else:
        count_below(buf, thr, bits, codes)
        pack_codes(codes, bits, out, off)


@njit(inline="always", cache=True)
def pack_codes(codes, bits, out, off):
    """Pack b-bit codes (n a multiple of 8) LSB-first into out[off : off + n*b/8]."""
    n = codes.shape[0]
    if 8 % bits == 0:
        per = 8 // bits
        for p in range(n // per):
            byte = np.uint8(0)
            for q in range(per):
                byte |= codes[p * per + q] << np.uint8(q * bits)
            out[off + p] = byte
    else:
        for g in range(n // 8):
            acc = np.uint64(0)
            for q in range(8):
                acc |= np.uint64(codes[g * 8 + q]) << np.uint64(q * bits)
            p = off + g * bits
            for k in range(bits):
                out[p + k] = np.uint8((acc >> np.uint64(8 * k)) & np.uint64(0xFF))


@njit(inline="always", cache=True)
def _unpack_lookup(codes, off, table, bits, buf, weight, accumulate):
    n = buf.shape[0]
    mask = np.uint64((1 << bits) - 1)
    for g in range(n // 8):
        p = off + g * bits
        acc = np.uint64(0)
        for k in range(bits):
            acc |= np.uint64(codes[p + k]) << np.uint64(8 * k)
        for q in range(8):
            j = (acc >> np.uint64(q * bits)) & mask
            v = weight * table[j]
            if accumulate:
                buf[g * 8 + q] += v
            else:
                buf[g * 8 + q] = v


@njit(inline="always", cache=True)
def unpack_lookup(codes, off, table, bits, buf, weight, accumulate):
    """buf[i] (+)= weight * table[code_i] for the chunk's packed codes (constant-width
    copies for the common widths, as in ``quantize_pack``)."""
    if bits == 1:
        _unpack_lookup(codes, off, table, 1, buf, weight, accumulate)
    elif bits == 2:
        _unpack_lookup(codes, off, table, 2, buf, weight, accumulate)
    elif bits == 4:
        _unpack_lookup(codes, off, table, 4, buf, weight, accumulate)
    else:
        _unpack_lookup(codes, off, table, bits, buf, weight, accumulate)


@njit(nogil=True, cache=True)
def _rotate_quantize(c0, c1, x, d, starts, sizes, keys, thr, bits, out, code_off, clip_s,
                     corr):
    for c in range(c0, c1):
        n = sizes[c]
        buf = np.empty(n, np.float32)
        real = min(n, d - starts[c])
        load_signed(x, starts[c], real, keys[c], buf)
        fwht(buf)
        corr[c] = _clip_dot(buf, np.float64(clip_s[c]))
        quantize_pack(buf, thr[c], bits, out, code_off[c])


def rotate_quantize(x, d, starts, sizes, keys, thr, bits, out, code_off, clip_s):
    """Encode: signs -> FWHT -> per-chunk thresholds -> packed b-bit codes, per chunk.

    Returns sum_i y'_i * clamp(y'_i, -clip_s[c], clip_s[c]) per chunk (float64), the
    expected inner product <y', decoded y'> used for the clip-bias scale correction.
    """
    corr = np.empty(starts.shape[0], np.float64)
    over_chunks(_rotate_quantize, sizes, x, d, starts, sizes, keys, thr, bits, out,
                code_off, clip_s, corr)
    return corr


@njit(nogil=True, cache=True)
def _lookup_rotated(c0, c1, codes, starts, sizes, tables, bits, code_off, weight, acc):
    for c in range(c0, c1):
        n = sizes[c]
        unpack_lookup(codes, code_off[c], tables[c], bits,
                      acc[starts[c]:starts[c] + n], weight, True)


def lookup_rotated(codes, starts, sizes, tables, bits, code_off, weight, acc):
    """Decode-before-sum: acc[chunk] += weight * table_c[code] in the rotated domain."""
    over_chunks(_lookup_rotated, sizes, codes, starts, sizes, tables, bits, code_off,
                weight, acc)


@njit(nogil=True, cache=True)
def _unrotate(c0, c1, acc, d, starts, sizes, keys, out):
    for c in range(c0, c1):
        n = sizes[c]
        buf = acc[starts[c]:starts[c] + n]
        fwht(buf)
        store_signed(buf, starts[c], min(n, d - starts[c]), keys[c], out)


def unrotate(acc, d, starts, sizes, keys, out):
    """Decode-after-sum: out = D H acc per chunk (acc is overwritten)."""
    over_chunks(_unrotate, sizes, acc, d, starts, sizes, keys, out)


@njit(nogil=True, cache=True)
def _dequantize_unrotate(c0, c1, codes, d, starts, sizes, keys, tables, bits, code_off, out):
    for c in range(c0, c1):
        n = sizes[c]
        buf = np.empty(n, np.float32)
        unpack_lookup(codes, code_off[c], tables[c], bits, buf, np.float32(1.0), False)
        fwht(buf)
        store_signed(buf, starts[c], min(n, d - starts[c]), keys[c], out)


def dequantize_unrotate(codes, d, starts, sizes, keys, tables, bits, code_off, out):
    """Decode one blob: table lookup -> FWHT -> signs, per chunk, into out[:d]."""
    over_chunks(_dequantize_unrotate, sizes, codes, d, starts, sizes, keys, tables, bits,
                code_off, out)


@njit(nogil=True, cache=True)
def _rotate(c0, c1, x, d, starts, sizes, keys, out):
    for c in range(c0, c1):
        n = sizes[c]
        seg = out[starts[c]:starts[c] + n]
        load_signed(x, starts[c], min(n, d - starts[c]), keys[c], seg)
        fwht(seg)


def rotate(x, d, starts, sizes, keys, out):
    """out[padded] = H D x per chunk (unnormalized), for methods that quantize in numpy."""
    over_chunks(_rotate, sizes, x, d, starts, sizes, keys, out)
