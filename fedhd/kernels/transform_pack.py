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

#: Coordinates of the L1-cache block in which ``fwht`` runs its first levels (16 KB).
FWHT_BLOCK = 4096


@njit(inline="always", cache=True)
def _radix8(a):
    """Levels h = 1, 2, 4 of the FWHT on every group of 8 of a."""
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


@njit(inline="always", cache=True)
def _levels(a, h, stop):
    """Levels h, 2h, ... < stop (powers of 2) on every block of ``stop`` of a: radix-4
    passes over contiguous views (which LLVM vectorizes), a radix-2 one for an odd count."""
    n = a.shape[0]
    while h < stop:
        if 4 * h <= stop:
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
def fwht(a):
    """In-place unnormalized FWHT of a float32 array of power-of-2 length >= 8.

    Levels h = 1, 2, 4, ... in that order, each pair (i, i + h) -> (a + b, a - b): the same
    additions, so the same bits, as the textbook loop. Levels below ``FWHT_BLOCK`` run
    block by block while the block is in L1 cache, the rest over the whole array.
    """
    n = a.shape[0]
    block = min(n, FWHT_BLOCK)
    for base in range(0, n, block):
        blk = a[base:base + block]
        _radix8(blk)
        _levels(blk, 8, block)
    _levels(a, block, n)


@njit(inline="always", cache=True)
def _sign(word, k):
    """+1.0 or -1.0 (float32): bit k of the 64-bit sign word (1: negative)."""
    return np.float32(1.0) - np.float32(2.0) * np.float32((word >> np.uint64(k)) & np.uint64(1))


@njit(inline="always", cache=True)
def load_signed(x, start, real, key, buf):
    """buf[i] = sign_i * x[start + i] for i < real, 0 beyond (padding). Whole 64-bit sign
    words run without bounds tests (vectorized); x * -1.0 is exactly -x."""
    n = buf.shape[0]
    whole = real // 64
    for w in range(whole):
        word = splitmix_nb(key, w)
        base = w * 64
        for k in range(64):
            buf[base + k] = x[start + base + k] * _sign(word, k)
    for w in range(whole, (n + 63) // 64):
        word = splitmix_nb(key, w)
        base = w * 64
        for k in range(min(64, n - base)):
            i = base + k
            buf[i] = x[start + i] * _sign(word, k) if i < real else np.float32(0.0)


@njit(inline="always", cache=True)
def store_signed(buf, start, real, key, out):
    """out[start + i] = sign_i * buf[i] for i < real (drops padding)."""
    whole = real // 64
    for w in range(whole):
        word = splitmix_nb(key, w)
        base = w * 64
        for k in range(64):
            out[start + base + k] = buf[base + k] * _sign(word, k)
    if real > whole * 64:
        word = splitmix_nb(key, whole)
        base = whole * 64
        for k in range(real - base):
            out[start + base + k] = buf[base + k] * _sign(word, k)


@njit(inline="always", cache=True)
def rotate_chunk(x, d, start, key, buf):
    """buf = H D (x[start:start + len(buf)], zeros beyond d): one chunk, unnormalized."""
    load_signed(x, start, min(buf.shape[0], d - start), key, buf)
    fwht(buf)


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
def _quantize_pack_bytes(buf, thr, bits, out, off):
    """quantize_pack for 8 % bits == 0: each output byte's 8 / bits codes are counted and
    packed in one pass (the width a constant, so the compiler vectorizes it)."""
    n = buf.shape[0]
    L = 1 << bits
    per = 8 // bits
    for p in range(n // per):
        byte = 0
        for q in range(per):
            v = buf[p * per + q]
            code = 0
            for m in range(L - 1):
                code += v > thr[m]
            byte |= code << (q * bits)
        out[off + p] = np.uint8(byte)


@njit(inline="always", cache=True)
def quantize_pack(buf, thr, bits, out, off):
    """Quantize a chunk against its thresholds and pack the codes at out[off:].

    The common widths get their own copy of the loops with the width a constant, which
    the compiler vectorizes (a run-time width is ~8x slower).
    """
    if bits == 1:
        _quantize_pack_bytes(buf, thr, 1, out, off)
    elif bits == 2:
        _quantize_pack_bytes(buf, thr, 2, out, off)
    elif bits == 4:
        _quantize_pack_bytes(buf, thr, 4, out, off)
    else:
        codes = np.zeros(buf.shape[0], np.uint8)
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
def _rotate_quantize(c0, c1, x, d, starts, sizes, keys, thr_norm, clip, bits, out, code_off,
                     norms, corr):
    L = 1 << bits
    thr = np.empty(L, np.float32)
    chunk = np.empty(sizes[c0:c1].max(), np.float32)
    for c in range(c0, c1):
        n = sizes[c]
        buf = chunk[:n]
        real = min(n, d - starts[c])
        load_signed(x, starts[c], real, keys[c], buf)
        ss = _dot(buf[:real], buf[:real])  # as chunk_sumsq: (-x)^2 = x^2
        if not np.isfinite(ss):
            norms[c] = np.nan
            continue
        s = np.float32(np.sqrt(ss))
        norms[c] = s
        # thresholds in the domain of the unnormalized FWHT output y' = sqrt(n) y = s z
        for m in range(L - 1):
            thr[m] = np.float32(thr_norm[c, m] * np.float64(s))
        thr[L - 1] = np.inf
        fwht(buf)
        corr[c] = _clip_dot(buf, np.float64(clip * s))
        quantize_pack(buf, thr, bits, out, code_off[c])


def rotate_quantize(x, d, starts, sizes, keys, thr_norm, clip, bits, out, code_off):
    """Encode: signs -> chunk norm s_c -> FWHT -> thresholds thr_norm[c] * s_c -> packed
    b-bit codes, per chunk, in one pass over x.

    Returns (s_c float32, NaN for a chunk holding NaN or Inf; and per chunk in float64
    sum_i y'_i * clamp(y'_i, -clip s_c, clip s_c), the expected inner product
    <y', decoded y'> used for the clip-bias scale correction). ``clip``: float32.
    """
    norms = np.empty(starts.shape[0], np.float32)
    corr = np.zeros(starts.shape[0], np.float64)
    over_chunks(_rotate_quantize, sizes, x, d, starts, sizes, keys, thr_norm, clip, bits, out,
                code_off, norms, corr)
    return norms, corr


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


@njit(inline="always", cache=True)
def _divided(v, w):
    """float32(float64(v) / w): the mean's one rounding (``finish`` and ``unrotate``)."""
    return np.float32(np.float64(v) / w)


@njit(nogil=True, cache=True)
def _unrotate(c0, c1, acc, d, starts, sizes, keys, w, out):
    buf = np.empty(sizes[c0:c1].max(), np.float32)
    for c in range(c0, c1):
        n = sizes[c]
        real = min(n, d - starts[c])
        b = buf[:n]
        b[:] = acc[starts[c]:starts[c] + n]
        fwht(b)
        store_signed(b, starts[c], real, keys[c], out)
        if w != 1.0:  # while the chunk is in cache (``finish`` would be a pass over out)
            seg = out[starts[c]:starts[c] + real]
            for i in range(real):
                seg[i] = _divided(seg[i], w)


def unrotate(acc, d, starts, sizes, keys, out, weight=1.0):
    """Decode-after-sum: out[:d] = D H acc per chunk, through a chunk-sized buffer, each
    value then divided by ``weight`` as ``finish`` divides (float32 of the float64
    quotient; 1: no division): acc is left as it was, and ``out`` may be acc[:d] itself
    (each chunk is read before its coordinates are written)."""
    over_chunks(_unrotate, sizes, acc, d, starts, sizes, keys, np.float64(weight), out)


@njit(nogil=True, cache=True)
def _finish(c0, c1, bounds, total, w, out):
    for i in range(bounds[c0], bounds[c1]):
        out[i] = _divided(total[i], w)


def finish(total, w, out):
    """out[i] = float32(float64(total[i]) / w) (total float32 or float64; out may be
    total itself), in parallel ranges of about 2**16 coordinates."""
    n = total.shape[0]
    bounds = np.arange(0, n + (1 << 16), 1 << 16).clip(max=n)
    sizes = np.diff(bounds)
    over_chunks(_finish, sizes, bounds, total, np.float64(w), out)


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
        rotate_chunk(x, d, starts[c], keys[c], out[starts[c]:starts[c] + n])


def rotate(x, d, starts, sizes, keys, out):
    """out[padded] = H D x per chunk (unnormalized), for methods that quantize in numpy."""
    over_chunks(_rotate, sizes, x, d, starts, sizes, keys, out)
