"""Numba kernels of "hd-dither-ec": dithered lattice quantization + a static-model rANS coder.

Dithers. Coordinate i of chunk c has its own dither, a counter-based function of
(dither seed, c, i): with ``key = stream_key(seed, stream, c)`` (``fedhd.rng``) and
``w = splitmix(key, i // 2)``, the 32-bit word ``k = (w >> (32 * (i % 2))) & (2**32 - 1)``
gives ``u_i = (k + 1/2) 2**-32`` (uniform on 2**32 midpoints of [0, 1)) and the model bin
``b_i = k >> 27`` (the top 5 bits: ``u_i`` lies in [b_i / 32, (b_i + 1) / 32)).

Quantizer. With the chunk's step ``delta`` and normalized rotated coordinates z (unit RMS):
``q_i = floor(z_i / delta - u_i + 1/2)``, decoded as ``(q_i + u_i) delta``.

Model. Symbols are coded under the law of q given the dither bin for a unit-variance z of law
F (the chunk's model: 0 = N(0, 1), 1 = 0.9 N(0, 2/3) + 0.1 N(0, 4); ``_cdf``), truncated to
``|q| <= K``, ``K = int(T / delta) + 2``. For bin b (centre u_b = (b + 1/2) / 32):

- alphabet ``j = 0 .. 2K`` for ``q = j - K``, plus ``ESC = 2K + 1`` for any other q;
- ``p_j = F((q + u_b + 1/2) delta) - F((q + u_b - 1/2) delta)``, ``p_ESC`` = the rest;
- integer frequencies summing to ``M = 2**PREC``: ``f_j = 1 + round(p_j (M - A))``
  (A symbols), the rounding's surplus or shortfall spread one count a symbol in index order
  (``build_models``).

The frequencies come from float64 ``erfc`` (libm): encoder and decoder must agree on them
exactly, which they do on one platform; across platforms an ulp difference changes a
frequency only if p (M - A) lies within ~1e-12 of an integer (~1e-9 a blob), and then the
stream's end check turns it into a DecodeError, never into a wrong vector.

An escaped q follows its ESC symbol as two uniform 16-bit halves (low, then high) of its
32-bit zigzag code, on the same coder state.

rANS (Duda; the "rans64" layout of F. Giesen) with m interleaved states per chunk,
coordinate i on state i % m: m = LANES = 4 for chunks of at least LANES_MIN_CHUNK = 4096
coordinates, m = 2 for shorter ones (``lanes``). Each state x lies in [L, L * 2**32) with
L = 2**31, 32-bit words. Encoding runs over the coordinates backwards and emits words
towards lower addresses; the final states are stored at the front of the stream as 2m words
(x0 low, x0 high, x1 low, ...), so the decoder reads words forwards. A well-formed stream
ends exactly at its last word with every state back at L: the decoder checks them all.
(Coder format 1 had two states in every chunk. Four let the coder overlap twice as many
independent dependency chains, ~20% faster each way, for 16 more bytes of final states a
chunk: nothing at 2**16 coordinates, but 6% of a 1024-coordinate chunk's budget at R = 2,
hence two below 4096.)
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ..rng import splitmix_nb
from .threads import over_chunks
from .transform_pack import fwht, load_signed, rotate_chunk, store_signed

PREC = 16
M = 1 << PREC
LUT_BITS = 9
LUT_SHIFT = PREC - LUT_BITS
BIN_BITS = 5
BINS = 1 << BIN_BITS
T_MODEL = 6.5
MODELS = 2  # the law of z the coder assumes, chosen per chunk (``_cdf``)
MIX_INV_S1 = 1.224744871391589  # sqrt(3 / 2): 1 / the narrow component's standard deviation
ANS_L = 1 << 31
LANES = 4  # interleaved coder states of a long chunk (``lanes``)
LANES_MIN_CHUNK = 1 << 12  # chunks shorter than this have 2 states
MIN_STEP = 2.0**-8
MAX_STEP = 2.0**20

# error codes of the decoder
OK = 0
ERR_STATE = 1  # initial state outside [L, L << 32)
ERR_OVERRUN = 2  # the stream ran out of words
ERR_ESCAPE = 3  # an escaped value that is out of range or not an escape
ERR_END = 4  # words left over, or the final state is not L

_U32 = np.uint64(0xFFFFFFFF)


@njit(inline="always", cache=True)
def half_width(delta):
    """K: the model covers q in [-K, K]; any other q is escaped."""
    return int(T_MODEL / delta) + 2


@njit(inline="always", cache=True)
def q_max(n, delta):
    """The largest |q| a chunk of n coordinates can produce (|z| <= sqrt(n))."""
    return int(1.001 * math.sqrt(n) / delta) + 2


@njit(inline="always", cache=True)
def lanes(n):
    """Interleaved coder states of a chunk of n coordinates (coordinate i on state i % m)."""
    return LANES if n >= LANES_MIN_CHUNK else 2


def chunk_lanes(sizes):
    """``lanes`` of every chunk (numpy)."""
    return np.where(sizes >= LANES_MIN_CHUNK, LANES, 2)


@njit(inline="always", cache=True)
def _phi(x):
    return 0.5 * math.erfc(-x * 0.7071067811865476)


@njit(inline="always", cache=True)
def _cdf(x, model):
    """CDF of the model's law of z: 0 = N(0, 1); 1 = the unit-variance scale mixture
    0.9 N(0, 2/3) + 0.1 N(0, 4) (heavier tails: rotated sparse inputs with a few large
    values cost less under it)."""
    if model == 0:
        return _phi(x)
    return 0.9 * _phi(x * MIX_INV_S1) + 0.1 * _phi(x * 0.5)


@njit(cache=True)
def build_models(delta, K, model, freq, cum):
    """Flat tables of every dither bin b: freq[b * A + j] (each bin's row sums to M) and
    cum[b * (A + 1) + j] (starts, with cum[b * (A + 1) + A] = M), A = 2K + 2.

    f_j = 1 + round(p_j (M - A)); the few counts the rounding leaves over (or short) are
    spread one by one over the symbols in index order (only symbols with f > 1 give)."""
    A = 2 * K + 2
    free = M - A
    for b in range(BINS):
        u = (b + 0.5) / BINS
        row = b * A
        prev = _cdf((u - 0.5 - K) * delta, model)
        low_tail = prev
        tot = 0
        for j in range(2 * K + 1):
            cur = _cdf((j - K + u + 0.5) * delta, model)
            p = max(cur - prev, 0.0)
            f = 1 + int(p * free + 0.5)
            freq[row + j] = f
            tot += f
            prev = cur
        p = max(low_tail + (1.0 - prev), 0.0)
        f = 1 + int(p * free + 0.5)
        freq[row + A - 1] = f
        tot += f
        rest = M - tot
        while rest != 0:
            for j in range(A):
                if rest > 0:
                    freq[row + j] += 1
                    rest -= 1
                elif rest < 0 and freq[row + j] > 1:
                    freq[row + j] -= 1
                    rest += 1
                if rest == 0:
                    break
        crow = b * (A + 1)
        cum[crow] = 0
        for j in range(A):
            cum[crow + j + 1] = cum[crow + j] + freq[row + j]


@njit(cache=True)
def build_luts(cum, A, lut):
    """lut[b << LUT_BITS | k] = the symbol of bin b whose range holds slot k << LUT_SHIFT
    (the last symbol starting at or before it): each symbol fills the cells that start in
    its range."""
    for b in range(BINS):
        crow = b * (A + 1)
        base = b << LUT_BITS
        k0 = 0
        for j in range(A):
            k1 = (cum[crow + j + 1] + (1 << LUT_SHIFT) - 1) >> LUT_SHIFT
            lut[base + k0:base + k1] = j
            k0 = k1


@njit(cache=True)
def decoder_table(freq, cum, A):
    """fs[b * (A + 1) + j] = f_j << 32 | start_j of bin b (the cum layout; j = A holds the
    row's end, M): one load gives both numbers a decode step needs, and the next entry's
    low half is the symbol's end."""
    fs = np.empty(BINS * (A + 1), np.uint64)
    for b in range(BINS):
        crow = b * (A + 1)
        for j in range(A):
            fs[crow + j] = (np.uint64(freq[b * A + j]) << _S32) | np.uint64(cum[crow + j])
        fs[crow + A] = np.uint64(M)
    return fs


@njit(cache=True)
def dither_words(key, n, out):
    """out[i] = the 32-bit dither word of coordinate i < n (n even)."""
    for p in range(n >> 1):
        w = splitmix_nb(key, p)
        out[2 * p] = np.uint32(w & _U32)
        out[2 * p + 1] = np.uint32(w >> np.uint64(32))


@njit(inline="always", cache=True)
def _uniform(k):
    """u = (k + 1/2) 2**-32: the dither of 32-bit word k, uniform on 2**32 midpoints."""
    return (np.float64(k) + 0.5) * 2.3283064365386963e-10


@njit(cache=True)
def chunk_symbols(b, words, inv, K, out):
    """out[i] = bin_i * A + j_i, the flat model index of coordinate i, negated minus one for
    an escape (j = ESC)."""
    A = 2 * K + 2
    top = 2 * K
    for i in range(b.shape[0]):
        k = words[i]
        j = np.int64(math.floor(np.float64(b[i]) * inv + (0.5 - _uniform(k)))) + K
        t = np.int64(k >> np.uint32(32 - BIN_BITS)) * A
        if j < 0 or j > top:
            out[i] = -(t + top + 1) - 1
        else:
            out[i] = t + j


@njit(inline="always", cache=True)
def quantize(v, inv, k):
    """q of a coordinate (as in ``chunk_symbols``), for escapes."""
    return np.int64(math.floor(np.float64(v) * inv + (0.5 - _uniform(k))))


# -- per-chunk work ----------------------------------------------------------------------------


@njit(cache=True)
def _rotate_chunk(c, x, d, starts, sizes, keys, b):
    """b[:n] = H D x of chunk c (n = sizes[c]); returns ||b||^2 (float64)."""
    rotate_chunk(x, d, starts[c], keys[c], b)
    return _sum_squares(b[:sizes[c]])


@njit(cache=True)
def _sum_squares(b):
    """sum_i b_i^2 in float64 over 4 running sums (len(b) a multiple of 4): the same
    additions in the same order on every machine."""
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    for i in range(0, b.shape[0], 4):
        v0 = np.float64(b[i])
        v1 = np.float64(b[i + 1])
        v2 = np.float64(b[i + 2])
        v3 = np.float64(b[i + 3])
        a0 += v0 * v0
        a1 += v1 * v1
        a2 += v2 * v2
        a3 += v3 * v3
    return (a0 + a1) + (a2 + a3)


@njit(cache=True)
def _models(delta, model):
    K = half_width(delta)
    A = 2 * K + 2
    freq = np.empty(BINS * A, np.int32)
    cum = np.empty(BINS * (A + 1), np.int32)
    build_models(delta, K, model, freq, cum)
    return K, A, freq, cum


@njit(cache=True)
def _chunk_symbols(c, b, scales, steps, dkeys, K, n):
    """Dither words, flat symbols and 1 / (s delta) of the first n coordinates b[:n] of
    rotated chunk c."""
    words = np.empty(n, np.uint32)
    dither_words(dkeys[c], n, words)
    inv = 1.0 / (np.float64(scales[c]) * np.float64(steps[c]))
    sym = np.empty(n, np.int32)
    chunk_symbols(b[:n], words, inv, K, sym)
    return words, sym, inv


@njit(cache=True)
def _measure_chunk(c, y, starts, sizes, scales, steps, dkeys, shift, out):
    """out[m] = code length of chunk c under model m, estimated from its first n >> shift
    coordinates, held at y[starts[c]:] (one histogram serves every model)."""
    out[:] = 0.0
    if scales[c] == 0:
        return
    delta = np.float64(steps[c])
    K = half_width(delta)
    m = sizes[c] >> shift
    _, sym, _ = _chunk_symbols(c, y[starts[c]:starts[c] + m], scales, steps, dkeys, K, m)
    A = 2 * K + 2
    hist = np.zeros(BINS * A, np.int64)
    esc = 0
    for i in range(sym.shape[0]):
        t = sym[i]
        if t < 0:
            t = -t - 1
            esc += 1
        hist[t] += 1
    for m in range(MODELS):
        _, _, freq, _ = _models(delta, m)
        acc = 32.0 * esc
        for t in range(BINS * A):
            if hist[t]:
                acc += hist[t] * (PREC - math.log2(freq[t]))
        out[m] = acc * (1 << shift)


_HI = np.uint64((ANS_L >> PREC) << 32)  # push freq f: renormalize first if x >= _HI * f
_L = np.uint64(ANS_L)
_S16 = np.uint64(PREC)
_S32 = np.uint64(32)
_S8 = np.uint64(8)
_M16 = np.uint64(M - 1)


# The coder's per-symbol steps (``_push``, ``_pop``) are inlined into the loops
# (inline="always": a called helper returning a tuple costs several times as much in
# numba's hot loops); the rare escapes take real calls, kept off the common path.


@njit(cache=True)
def _put_escape(x, q, buf, ptr):
    """Push the zigzag code of q as two uniform 16-bit symbols (high half first)."""
    zz = np.uint64((q << 1) ^ (q >> 63)) & _U32
    for v in (zz >> np.uint64(16), zz & np.uint64(0xFFFF)):
        if x >= _HI:
            ptr -= 1
            buf[ptr] = np.uint32(x & _U32)
            x >>= _S32
        x = (x << _S16) + v
    return x, ptr


@intrinsic
def _mulhi(typingctx, a, b):
    """High 64 bits of the 128-bit product of two uint64 (one MUL on x86-64)."""
    sig = types.uint64(types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        i128 = ir.IntType(128)
        p = builder.mul(builder.zext(args[0], i128), builder.zext(args[1], i128))
        return builder.trunc(builder.lshr(p, ir.Constant(i128, 64)), ir.IntType(64))

    return sig, codegen


#: Columns of the encoder's table (one row a flat symbol, read with one cache line).
_XMAX, _RCP, _BIAS, _CMPL_SHIFT = 0, 1, 2, 3


@njit(cache=True)
def _encoder_table(freq, cum, A):
    """Per flat symbol t, a row: the renormalization bound, the reciprocal, the bias and
    (M - f) << 8 | shift, so that a push is x + bias + (mulhi(x, rcp) >> shift) (M - f) ==
    (x // f) M + x % f + start (F. Giesen's rans64, after Alverson: exact for x < 2**63)."""
    T = freq.shape[0]
    rows = np.empty((T, 4), np.uint64)
    for t in range(T):
        f = np.int64(freq[t])
        start = np.int64(cum[(t // A) * (A + 1) + t % A])
        fu = np.uint64(f)
        rows[t, _XMAX] = _HI * fu
        if f < 2:
            rows[t, _RCP] = np.uint64(0xFFFFFFFFFFFFFFFF)
            shift = 0
            rows[t, _BIAS] = np.uint64(start + M - 1)
        else:
            shift = 0
            while f > (1 << shift):
                shift += 1
            x1 = np.uint64(1) << np.uint64(shift + 31)
            x0 = np.uint64(f - 1) + ((x1 % fu) << _S32)
            rows[t, _RCP] = (x0 // fu) + ((x1 // fu) << _S32)
            shift -= 1
            rows[t, _BIAS] = np.uint64(start)
        rows[t, _CMPL_SHIFT] = (np.uint64(M - f) << np.uint64(8)) | np.uint64(shift)
    return rows


@njit(inline="always", cache=True)
def _push(x, t, rows, scratch, ptr):
    """Push flat symbol t on state x; returns (x, ptr). The renormalization has no branch:
    the state's low word is stored below the stream whether or not it is emitted (a word
    the next emission or the final states overwrite)."""
    u = np.uint64(t)
    cs = rows[u, _CMPL_SHIFT]
    scratch[ptr - np.uint64(1)] = np.uint32(x & _U32)
    if x >= rows[u, _XMAX]:
        ptr -= np.uint64(1)
        x >>= _S32
    x = x + rows[u, _BIAS] + (_mulhi(x, rows[u, _RCP]) >> (cs & np.uint64(0xFF))) * (cs >> _S8)
    return x, ptr


@njit(cache=True)
def _push_any(x, sym, i, b, inv, words, rows, scratch, ptr):
    """Push coordinate i, escaped or not (sym[i] < 0: an escape, its q pushed first, then
    the ESC symbol -sym[i] - 1): (x, ptr)."""
    t = sym[i]
    if t >= 0:
        return _push(x, t, rows, scratch, ptr)
    x, pe = _put_escape(x, quantize(b[i], inv, words[i]), scratch, np.int64(ptr))
    return _push(x, -t - 1, rows, scratch, np.uint64(pe))


@njit(cache=True)
def _push_pairs(sym, b, inv, words, rows, scratch, ptr):
    """Push every coordinate of a short chunk, coordinate i on state i % 2, from the last
    (escapes allowed): (x0, x1, ptr)."""
    x0 = x1 = _L
    for i in range(sym.shape[0] - 2, -1, -2):
        x1, ptr = _push_any(x1, sym, i + 1, b, inv, words, rows, scratch, ptr)
        x0, ptr = _push_any(x0, sym, i, b, inv, words, rows, scratch, ptr)
    return x0, x1, ptr


@njit(cache=True)
def _push_plain(sym, rows, scratch, ptr):
    """Push every coordinate of a long chunk without escapes, coordinate i on state i % 4,
    from the last: (x0, x1, x2, x3, ptr). The states are pushed one after another in the
    loop body (``_push`` is inlined), so the compiler overlaps their dependency chains."""
    x0 = x1 = x2 = x3 = _L
    for i in range(sym.shape[0] - LANES, -1, -LANES):
        x3, ptr = _push(x3, sym[i + 3], rows, scratch, ptr)
        x2, ptr = _push(x2, sym[i + 2], rows, scratch, ptr)
        x1, ptr = _push(x1, sym[i + 1], rows, scratch, ptr)
        x0, ptr = _push(x0, sym[i], rows, scratch, ptr)
    return x0, x1, x2, x3, ptr


@njit(cache=True)
def _push_escaped(sym, b, inv, words, rows, scratch, ptr):
    """``_push_plain`` for a chunk with escapes (|z| > 6.5: rare)."""
    x0 = x1 = x2 = x3 = _L
    for i in range(sym.shape[0] - LANES, -1, -LANES):
        x3, ptr = _push_any(x3, sym, i + 3, b, inv, words, rows, scratch, ptr)
        x2, ptr = _push_any(x2, sym, i + 2, b, inv, words, rows, scratch, ptr)
        x1, ptr = _push_any(x1, sym, i + 1, b, inv, words, rows, scratch, ptr)
        x0, ptr = _push_any(x0, sym, i, b, inv, words, rows, scratch, ptr)
    return x0, x1, x2, x3, ptr


@njit(inline="always", cache=True)
def _flush(x, scratch, p):
    """Store final state x as the two words below p (low word first); returns the new p."""
    scratch[p - 1] = np.uint32(x >> _S32)
    scratch[p - 2] = np.uint32(x & _U32)
    return p - 2


@njit(cache=True)
def _encode_chunk(c, b, scales, steps, models, dkeys, scratch, end):
    """rANS-code rotated chunk c (values b) into scratch, its stream ending at ``end``;
    returns the stream's length in words."""
    n = b.shape[0]
    K, A, freq, cum = _models(np.float64(steps[c]), models[c])
    rows = _encoder_table(freq, cum, A)
    words, sym, inv = _chunk_symbols(c, b, scales, steps, dkeys, K, n)
    ptr = np.uint64(end)
    if lanes(n) == 2:
        x0, x1, ptr = _push_pairs(sym, b, inv, words, rows, scratch, ptr)
        return end - _flush(x0, scratch, _flush(x1, scratch, np.int64(ptr)))
    if sym.min() < 0:  # an escape
        x0, x1, x2, x3, ptr = _push_escaped(sym, b, inv, words, rows, scratch, ptr)
    else:
        x0, x1, x2, x3, ptr = _push_plain(sym, rows, scratch, ptr)
    p = _flush(x3, scratch, np.int64(ptr))
    return end - _flush(x0, scratch, _flush(x1, scratch, _flush(x2, scratch, p)))


@njit(cache=True)
def _get_escape(x, words, p, end, K, qmax):
    """Pop an escaped q (low half, then high half): returns (x, p, q, error code)."""
    zz = np.uint64(0)
    for h in range(2):
        zz |= (x & _M16) << np.uint64(16 * h)
        x >>= _S16
        if x < _L:
            if p >= end:
                return x, p, np.int64(0), ERR_OVERRUN
            x = (x << _S32) | np.uint64(words[p])
            p += 1
    q = np.int64(zz >> np.uint64(1)) ^ -np.int64(zz & np.uint64(1))
    if -K <= q <= K or q > qmax or q < -qmax:
        return x, p, q, ERR_ESCAPE
    return x, p, q, OK


@njit(inline="always", cache=True)
def _pop(x, k, lut, fs, row, esc, words, up, last, end, K, qmax):
    """Pop the q of a coordinate with dither word k from state x: (x, up, q, error code).

    Written for the dependency chain state -> table loads -> state: unsigned indices (no
    negative-index fix-ups), one load for a symbol's frequency and start, and a
    renormalization without a branch (the next word is loaded whether or not it is needed,
    from at most the stream's last word; running past the end is caught by the final
    position check)."""
    r = np.uint64(k >> np.uint32(32 - BIN_BITS))
    slot = x & _M16
    crow = r * row
    t = crow + np.uint64(lut[(r << np.uint64(LUT_BITS)) + (slot >> np.uint64(LUT_SHIFT))])
    while (fs[t + np.uint64(1)] & _U32) <= slot:
        t += np.uint64(1)
    e = fs[t]
    x = (e >> _S32) * (x >> _S16) + slot - (e & _U32)
    w = np.uint64(words[min(up, last)])
    if x < _L:
        x = (x << _S32) | w
        up += np.uint64(1)
    j = t - crow
    if j == esc:
        if up > np.uint64(end):
            return x, up, np.int64(0), ERR_OVERRUN
        x, pe, q, err = _get_escape(x, words, np.int64(up), end, K, qmax)
        return x, np.uint64(pe), q, err
    return x, up, np.int64(j) - K, OK


@njit(inline="always", cache=True)
def _state(words, p, j):
    """Initial state j of the stream at p (its words 2j, 2j + 1: low, high)."""
    return np.uint64(words[p + 2 * j]) | (np.uint64(words[p + 2 * j + 1]) << _S32)


@njit(inline="always", cache=True)
def _finish(up, end, at_l):
    """The error code of a stream whose decode stopped at word ``up``: it must end exactly
    at ``end`` with every state back at L (``at_l``)."""
    if up > np.uint64(end):
        return ERR_OVERRUN
    if up != np.uint64(end) or not at_l:
        return ERR_END
    return OK


@njit(cache=True)
def _decode_stream(words, p, end, n, K, A, fs, lut, qmax, dwords, qs):
    """Decode one stream into qs[i] = q_i (``dequantize`` turns them into values); returns
    an error code."""
    m = lanes(n)
    if end - p < 2 * m:
        return ERR_OVERRUN
    for j in range(m):
        x = _state(words, p, j)
        if x < _L or x >= (_L << _S32):
            return ERR_STATE
    esc = np.uint64(A - 1)
    row = np.uint64(A + 1)
    if m == 2:
        return _decode_pairs(words, p, end, n, K, fs, lut, qmax, dwords, qs, esc, row)
    return _decode_fours(words, p, end, n, K, fs, lut, qmax, dwords, qs, esc, row)


@njit(cache=True)
def _decode_pairs(words, p, end, n, K, fs, lut, qmax, dwords, qs, esc, row):
    """The two states of a short chunk's stream."""
    x0, x1 = _state(words, p, 0), _state(words, p, 1)
    up = np.uint64(p + 4)
    last = np.uint64(end - 1)
    for i in range(0, n, 2):
        x0, up, qs[i], e = _pop(x0, dwords[i], lut, fs, row, esc, words, up, last, end, K,
                                qmax)
        if e != OK:
            return e
        x1, up, qs[i + 1], e = _pop(x1, dwords[i + 1], lut, fs, row, esc, words, up, last,
                                    end, K, qmax)
        if e != OK:
            return e
    return _finish(up, end, x0 == _L and x1 == _L)


@njit(cache=True)
def _decode_fours(words, p, end, n, K, fs, lut, qmax, dwords, qs, esc, row):
    """The four states of a long chunk's stream, popped one after another in the loop body
    (``_pop`` is inlined), so the compiler overlaps their dependency chains."""
    x0, x1 = _state(words, p, 0), _state(words, p, 1)
    x2, x3 = _state(words, p, 2), _state(words, p, 3)
    up = np.uint64(p + 8)
    last = np.uint64(end - 1)
    for i in range(0, n, 4):
        x0, up, qs[i], e = _pop(x0, dwords[i], lut, fs, row, esc, words, up, last, end, K,
                                qmax)
        if e != OK:
            return e
        x1, up, qs[i + 1], e = _pop(x1, dwords[i + 1], lut, fs, row, esc, words, up, last,
                                    end, K, qmax)
        if e != OK:
            return e
        x2, up, qs[i + 2], e = _pop(x2, dwords[i + 2], lut, fs, row, esc, words, up, last,
                                    end, K, qmax)
        if e != OK:
            return e
        x3, up, qs[i + 3], e = _pop(x3, dwords[i + 3], lut, fs, row, esc, words, up, last,
                                    end, K, qmax)
        if e != OK:
            return e
    return _finish(up, end, x0 == _L and x1 == _L and x2 == _L and x3 == _L)


@njit(inline="always", cache=True)
def _value(q, k, scale):
    """float32((q + u) * scale), u the dither of 32-bit word k (``_uniform``)."""
    return np.float32((np.float64(q) + _uniform(k)) * scale)


@njit(cache=True)
def dequantize(qs, dwords, scale, base, out):
    """v_i = the value of q_i with dither word k_i at ``scale`` (``_value``): out[i] = v_i;
    with a base (not empty), out[i] = base[i] + v_i; given out itself as base,
    out[i] += v_i (its own loop: the compiler vectorizes a loop only when it can see that
    the arrays it writes and reads are the same or disjoint)."""
    if base.shape[0] == 0:
        for i in range(qs.shape[0]):
            out[i] = _value(qs[i], dwords[i], scale)
    elif base.ctypes.data == out.ctypes.data:
        for i in range(qs.shape[0]):
            out[i] += _value(qs[i], dwords[i], scale)
    else:
        for i in range(qs.shape[0]):
            out[i] = base[i] + _value(qs[i], dwords[i], scale)


#: Decoder modes (``decode_chunks``): the vector; weight x its rotated chunks into out;
#: check the streams only (and the chunks' sums of squares); out = base + weight x the
#: rotated chunks.
VECTOR, ROTATED, CHECK, ADD = 0, 1, 2, 3


@njit(cache=True)
def _decode_chunk(c, words, word_off, d, starts, sizes, keys, scales, steps, models, dkeys,
                  weight, mode, base, out, chunk, qs, ss):
    n = sizes[c]
    st = starts[c]
    s = np.float64(scales[c])
    ss[c] = 0.0
    if s == 0.0:
        if mode == VECTOR or mode == ROTATED:
            hi = min(st + n, d) if mode == VECTOR else st + n
            for i in range(st, hi):
                out[i] = 0.0
        elif mode == ADD:
            out[st:st + n] = base[st:st + n]
        return OK
    delta = np.float64(steps[c])
    K, A, freq, cum = _models(delta, models[c])
    fs = decoder_table(freq, cum, A)
    dwords = np.empty(n, np.uint32)
    dither_words(dkeys[c], n, dwords)
    q = qs[:n]
    # symbol indices fit a byte up to A = 256, which keeps the look-up table in L1 cache
    lut = np.empty(BINS << LUT_BITS, np.uint16)
    lut8 = lut.view(np.uint8)[:BINS << LUT_BITS]
    w0, w1, qm = word_off[c], word_off[c + 1], q_max(n, delta)
    if A <= 256:
        build_luts(cum, A, lut8)
        e = _decode_stream(words, w0, w1, n, K, A, fs, lut8, qm, dwords, q)
    else:
        build_luts(cum, A, lut)
        e = _decode_stream(words, w0, w1, n, K, A, fs, lut, qm, dwords, q)
    if e != OK:
        return e
    scale = weight * s * delta / n
    if mode == ADD:
        dequantize(q, dwords, scale, base[st:st + n], out[st:st + n])
        return e
    buf = out[st:st + n] if mode == ROTATED else chunk[:n]
    dequantize(q, dwords, scale, buf[:0], buf)
    if mode == VECTOR:
        fwht(buf)
        store_signed(buf, st, min(n, d - st), keys[c], out)
    elif mode == CHECK:
        acc = 0.0
        for i in range(n):
            acc += np.float64(buf[i]) * np.float64(buf[i])
        ss[c] = acc
    return e


# -- drivers: chunk ranges, run on threads by ``kernels.over_chunks`` for large vectors -----


@njit(nogil=True, cache=True)
def _rotate_range(c0, c1, x, d, starts, sizes, keys, y, out):
    for c in range(c0, c1):
        out[c] = _rotate_chunk(c, x, d, starts, sizes, keys, y[starts[c]:starts[c] + sizes[c]])


@njit(nogil=True, cache=True)
def _sample_range(c0, c1, x, d, starts, sizes, keys, shift, sample, sample_off, out):
    buf = np.empty(sizes[c0:c1].max(), np.float32)
    for c in range(c0, c1):
        n = sizes[c]
        m = n >> shift[c]
        b = buf[:n]
        s = sample[sample_off[c]:sample_off[c] + m]
        if m == n:
            out[c] = _rotate_chunk(c, x, d, starts, sizes, keys, b)
            s[:] = b
            continue
        # H_n = H_(n/m) (x) H_m (Sylvester order): the first m outputs of H_n y are H_m of
        # the sum of y's n/m blocks of m, so the sample needs an FWHT of m, not of n; and
        # ||H_n D x||^2 = n ||x||^2 (float64 squares of float32 values are exact)
        load_signed(x, starts[c], min(n, d - starts[c]), keys[c], b)
        out[c] = _sum_squares(b) * n
        s[:] = b[:m]
        for k in range(1, n // m):
            s += b[k * m:(k + 1) * m]
        fwht(s)


@njit(nogil=True, cache=True)
def _measure_range(c0, c1, y, starts, sizes, scales, steps, dkeys, shift, out):
    for c in range(c0, c1):
        _measure_chunk(c, y, starts, sizes, scales, steps, dkeys, shift[c], out[c])


@njit(nogil=True, cache=True)
def _encode_range(c0, c1, base, x, d, starts, sizes, keys, scales, steps, models, dkeys,
                  scratch, cap_off, counts):
    """Chunks base + c0 .. base + c1: rotated again (one chunk buffer) and coded, chunk
    base + i's stream ending at scratch[cap_off[i + 1]]."""
    buf = np.empty(sizes[base + c0:base + c1].max(), np.float32)
    for i in range(c0, c1):
        c = base + i
        counts[c] = 0
        if scales[c] == 0:
            continue
        b = buf[:sizes[c]]
        _rotate_chunk(c, x, d, starts, sizes, keys, b)
        counts[c] = _encode_chunk(c, b, scales, steps, models, dkeys, scratch, cap_off[i + 1])


@njit(cache=True)
def _append(scratch, cap_off, counts, base, words, p):
    """Append the streams of chunks base .. base + len(cap_off) - 2 (each at the end of its
    scratch region) to words at p; returns the new p, or -1 if they do not fit."""
    for i in range(cap_off.shape[0] - 1):
        k = counts[base + i]
        if p + k > words.shape[0]:
            return -1
        e = cap_off[i + 1]
        words[p:p + k] = scratch[e - k:e]
        p += k
    return p


@njit(nogil=True, cache=True)
def _decode_range(c0, c1, words, word_off, d, starts, sizes, keys, scales, steps, models,
                  dkeys, weight, mode, base, out, err, ss):
    chunk = np.empty(sizes[c0:c1].max(), np.float32)
    qs = np.empty(sizes[c0:c1].max(), np.int32)
    for c in range(c0, c1):
        err[c] = _decode_chunk(c, words, word_off, d, starts, sizes, keys, scales, steps,
                               models, dkeys, weight, mode, base, out, chunk, qs, ss)


def rotate_norms(x, d, starts, sizes, keys, y):
    """y = H D x per chunk (unnormalized, into the padded buffer y); ||y_c||^2 per chunk."""
    out = np.empty(starts.shape[0], np.float64)
    over_chunks(_rotate_range, sizes, x, d, starts, sizes, keys, y, out)
    return out


def measure(y, starts, sizes, scales, steps, dkeys, shift=None):
    """Code length in bits of each chunk under each model (shape (C, MODELS)) with the
    dithers of keys ``dkeys`` (escape payloads included, the coder's final states not);
    zero-scale chunks cost nothing. ``shift[c]`` > 0 estimates chunk c from its first
    sizes[c] >> shift[c] coordinates."""
    if shift is None:
        shift = np.zeros(starts.shape[0], np.int64)
    out = np.empty((starts.shape[0], MODELS), np.float64)
    over_chunks(_measure_range, sizes, y, starts, sizes, scales, steps, dkeys, shift, out)
    return out


def rotate_sample(x, d, starts, sizes, keys, shift):
    """||H D x_c||^2 per chunk, and the first sizes[c] >> shift[c] rotated coordinates of
    each chunk, one after another: (norms, sample, sample_starts). Only the sample is kept,
    and a sampled chunk costs one pass over x and an FWHT of the sample's length."""
    counts = sizes >> shift
    sample_off = np.zeros(starts.shape[0], np.int64)
    np.cumsum(counts[:-1], out=sample_off[1:])
    sample = np.empty(int(counts.sum()), np.float32)
    out = np.empty(starts.shape[0], np.float64)
    over_chunks(_sample_range, sizes, x, d, starts, sizes, keys, shift, sample, sample_off, out)
    return out, sample, sample_off


#: Coordinates coded per batch by ``encode_streams`` (its scratch: ~2.2 bytes each).
ENCODE_BATCH = 1 << 21


def encode_streams(x, d, starts, sizes, keys, scales, steps, models, dkeys, caps, words):
    """rANS-code every chunk of x (rotated again chunk by chunk; model ``models[c]``) and
    write the streams one after another into ``words``. caps[c]: the most words chunk c's
    stream can take. Returns (words of each chunk's stream, words written), the latter -1
    when ``words`` is too short. Chunks are coded in batches of ~ENCODE_BATCH coordinates
    (in parallel within a batch), so the scratch is a few MB whatever d."""
    C = starts.shape[0]
    counts = np.zeros(C, np.int64)
    cut = [0]
    acc = 0
    for c in range(C):
        acc += int(sizes[c])
        if acc >= ENCODE_BATCH:
            cut.append(c + 1)
            acc = 0
    if cut[-1] != C:
        cut.append(C)
    widest = max(int(caps[a:b].sum()) for a, b in pairwise(cut))
    scratch = np.empty(widest, np.uint32)
    p = 0
    for a, b in pairwise(cut):
        cap_off = np.zeros(b - a + 1, np.int64)
        np.cumsum(caps[a:b], out=cap_off[1:])
        over_chunks(_encode_range, sizes[a:b], a, x, d, starts, sizes, keys, scales, steps,
                    models, dkeys, scratch, cap_off, counts)
        p = _append(scratch, cap_off, counts, a, words, p)
        if p < 0:
            return counts, -1
    return counts, p


def decode_chunks(words, word_off, d, starts, sizes, keys, scales, steps, models, dkeys, weight,
                  mode, out, base=None):
    """Decode every chunk (each through one chunk buffer per thread). mode VECTOR:
    out[:d] = the decoded vector (inverse rotation included); ROTATED: out[padded] =
    weight * the decoded rotated chunks, scaled for ``unrotate``; CHECK: nothing written,
    the streams checked; ADD: out[padded] = base + weight * the rotated chunks (base
    defaults to out; chunk by chunk as each decodes, so when base is out, CHECK first if
    out must stay untouched by a bad stream).
    Returns (the error code of each chunk, with CHECK the float64 sum of squares of each
    decoded rotated chunk, else zeros)."""
    err = np.empty(starts.shape[0], np.int64)
    ss = np.empty(starts.shape[0], np.float64)
    over_chunks(_decode_range, sizes, words, word_off, d, starts, sizes, keys, scales, steps,
                models, dkeys, float(weight), int(mode), out if base is None else base, out,
                err, ss)
    return err, ss


@njit(cache=True)
def entropy_table(log2_steps):
    """H(delta) = h(Z + N) - log2(delta) in bits: the ideal rate of dithered quantization of a
    unit Gaussian Z (N uniform of width delta), by the trapezoid rule; c / delta beyond 64."""
    out = np.empty(log2_steps.shape[0], np.float64)
    big = -1.0
    for k in range(log2_steps.shape[0]):
        delta = 2.0 ** log2_steps[k]
        if delta > 64.0 and big > 0:
            out[k] = big / delta
            continue
        lo = -delta / 2 - 9.0
        h = 0.01
        m = int((delta + 18.0) / h) + 1
        acc = 0.0
        for i in range(m + 1):
            w = lo + i * h
            f = (_phi(w + delta / 2) - _phi(w - delta / 2)) / delta
            if f > 0.0:
                t = -f * math.log2(f)
                acc += 0.5 * t if i == 0 or i == m else t
        out[k] = acc * h - log2_steps[k]
        if delta <= 64.0:
            big = out[k] * delta
    return out
