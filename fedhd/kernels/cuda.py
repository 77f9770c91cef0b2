"""CUDA kernels (numba.cuda) of the rotated fixed-rate methods: the GPU twin of kernels.py.

Same chunk layout, randomness and code packing as the CPU kernels, so blobs cross between
CPU and GPU. A chunk of n coordinates is viewed as ``rows x width`` (width = min(n, SUB),
SUB = 4096 coordinates = 16 KB of shared memory), and H_n = H_rows (x) H_width:

- sub-block kernels transform each width-long sub-block in shared memory (radix-2
  butterflies h = 1 .. width/2) and apply the signs;
- column kernels transform the ``rows`` values of each column in registers
  (h = width .. n/2) and quantize, or look up codes.

The butterflies run in the same order as the CPU's (h ascending), so in float32 the
rotated coordinates equal the CPU's bit for bit. Encode is two passes over the vector
(``forward_subblocks`` then ``quantize_columns``), decode two (``lookup_subblocks`` then
``inverse_columns``). Chunks longer than MAX_ROWS * SUB = 2**16 are not handled here
(the host kernels take them).

The kernels also run in numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), which is how the
CPU-only test suite checks them.
"""

from __future__ import annotations

import math
import os

import numpy as np
from numba import cuda
from numba.core import config

from ..rng import GAMMA, MUL1, MUL2

#: Threads per block and log2 of the sub-block length. The defaults are the ones to run;
#: the CPU test suite shrinks both (FEDHD_CUDA_TPB, FEDHD_CUDA_LOG2_SUB) so that numba's
#: simulator, which runs every GPU thread as a Python thread, reaches multi-row chunks fast.
TPB = int(os.environ.get("FEDHD_CUDA_TPB", 256))  # a power of 2, 8..256
LOG2_SUB = int(os.environ.get("FEDHD_CUDA_LOG2_SUB", 12))  # 6..12
SUB = 1 << LOG2_SUB  # coordinates per sub-block (shared memory: 16 KB of float32)
MAX_ROWS = 16
MAX_LOG2_CHUNK = LOG2_SUB + 4  # chunks up to MAX_ROWS * SUB = 2**16 coordinates
WORDS = SUB // 64  # sign words per sub-block
ROW_WORDS = (TPB + 127) // 64  # sign words a column block needs per row
# shared-array sizes must be plain constants
CODES_SH = MAX_ROWS * TPB
WORDS_SH = MAX_ROWS * ROW_WORDS

#: ``lookup_subblocks`` modes
DECODE, ACCUMULATE, TRANSFORM = 0, 1, 2


@cuda.jit(device=True)
def splitmix(state, i):
    """The i-th SplitMix64 output from ``state`` (``fedhd.rng.splitmix``)."""
    z = state + (np.uint64(i) + np.uint64(1)) * np.uint64(GAMMA)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MUL1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MUL2)
    return z ^ (z >> np.uint64(31))


if getattr(config, "ENABLE_CUDASIM", False):

    @cuda.jit(device=True)
    def add_product(y, w, v):
        """y + w v, each operation rounded (the simulator's numpy float32 never fuses)."""
        return y + w * v

else:
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def add_product(y, w, v):
        """y + w v with the product rounded before the sum, as on the CPU: NVVM would fuse
        them into one fma, rounded once."""
        return libdevice.fadd_rn(y, libdevice.fmul_rn(w, v))


@cuda.jit(device=True)
def block_fwht(sh, n, t):
    """In-place unnormalized FWHT of sh[:n] by the whole block (call after a sync)."""
    h = 1
    while h < n:
        for p in range(t, n >> 1, TPB):
            lo = p & (h - 1)
            i = ((p - lo) << 1) + lo
            a = sh[i]
            b = sh[i + h]
            sh[i] = a + b
            sh[i + h] = a - b
        cuda.syncthreads()
        h <<= 1


@cuda.jit(device=True)
def block_sum(red, t):
    """Tree sum of red[:TPB] into red[0] (every thread calls it after writing red[t])."""
    cuda.syncthreads()
    step = TPB >> 1
    while step > 0:
        if t < step:
            red[t] += red[t + step]
        cuda.syncthreads()
        step >>= 1


@cuda.jit(device=True)
def column_fwht(vals, m):
    """In-place unnormalized FWHT of the m values of one column (m a power of 2)."""
    h = 1
    while h < m:
        for p in range(m >> 1):
            lo = p & (h - 1)
            i = ((p - lo) << 1) + lo
            a = vals[i]
            b = vals[i + h]
            vals[i] = a + b
            vals[i + h] = a - b
        h <<= 1


@cuda.jit(device=True)
def load_sign_words(words, key, off, n, t):
    """words[w] = splitmix(key, off/64 + w): the sign bits of a sub-block (off % 64 == 0)."""
    for w in range(t, (n + 63) >> 6, TPB):
        words[w] = splitmix(key, (off >> 6) + w)
    cuda.syncthreads()


@cuda.jit(device=True)
def negated(words, w0, i):
    """Whether coordinate i (counted from word w0) has sign -1."""
    return (words[w0 + (i >> 6)] >> np.uint64(i & 63)) & np.uint64(1)


@cuda.jit
def forward_subblocks(x, d, y, sb_start, sb_len, sb_chunk, ch_start, keys, sb_ss):
    """y[sub-block] = H_width D x[sub-block] (zero beyond d); sb_ss = sum of x^2 (float64)."""
    sh = cuda.shared.array(SUB, np.float32)
    words = cuda.shared.array(WORDS, np.uint64)
    red = cuda.shared.array(TPB, np.float64)
    sb = cuda.blockIdx.x
    t = cuda.threadIdx.x
    start = sb_start[sb]
    n = sb_len[sb]
    load_sign_words(words, keys[sb_chunk[sb]], start - ch_start[sb_chunk[sb]], n, t)
    ss = 0.0
    for i in range(t, n, TPB):
        v = np.float32(0.0)
        if start + i < d:
            v = x[start + i]
        ss += np.float64(v) * np.float64(v)
        if negated(words, 0, i):
            v = -v
        sh[i] = v
    red[t] = ss
    cuda.syncthreads()
    block_fwht(sh, n, t)
    for i in range(t, n, TPB):
        y[start + i] = sh[i]
    block_sum(red, t)
    if t == 0:
        sb_ss[sb] = red[0]


@cuda.jit
def quantize_columns(y, cb_chunk, cb_col0, cb_ncols, ch_start, ch_width, ch_rows, ch_sb0,
                     ch_nsb, sb_ss, thr_norm, clip, bits, code_off, codes, scale, cb_clip):
    """Finish the FWHT down the columns, quantize and pack (``kernels.rotate_quantize``).

    Per chunk c: s_c = sqrt(sum of its sb_ss) (float32, written to scale[c]); thresholds
    s_c * thr_norm[c]; codes packed LSB-first at code_off[c]; cb_clip = the block's part of
    sum_i y_i clamp(y_i, -clip s_c, clip s_c) (float64).
    """
    thr = cuda.shared.array(256, np.float32)
    code_sh = cuda.shared.array(CODES_SH, np.uint8)
    red = cuda.shared.array(TPB, np.float64)
    s_sh = cuda.shared.array(1, np.float32)
    blk = cuda.blockIdx.x
    t = cuda.threadIdx.x
    c = cb_chunk[blk]
    j0 = cb_col0[blk]
    ncols = cb_ncols[blk]
    w = ch_width[c]
    m = ch_rows[c]
    start = ch_start[c]
    if t == 0:
        ss = 0.0
        for k in range(ch_nsb[c]):
            ss += sb_ss[ch_sb0[c] + k]
        s_sh[0] = np.float32(math.sqrt(ss))
        if j0 == 0:
            scale[c] = s_sh[0]
    cuda.syncthreads()
    s = s_sh[0]
    levels = 1 << bits
    for k in range(t, levels - 1, TPB):
        thr[k] = np.float32(thr_norm[c, k] * np.float64(s))
    cs = np.float64(clip * s)
    cuda.syncthreads()
    acc = 0.0
    if t < ncols:
        vals = cuda.local.array(MAX_ROWS, np.float32)
        for r in range(m):
            vals[r] = y[start + r * w + j0 + t]
        column_fwht(vals, m)
        for r in range(m):
            v = vals[r]
            vd = np.float64(v)
            acc += vd * min(max(vd, -cs), cs)
            j = 0  # = #{k : thr[k] < v}, by binary search over the sorted thresholds
            step = levels >> 1
            while step > 0:
                if thr[j + step - 1] < v:
                    j += step
                step >>= 1
            code_sh[r * TPB + t] = j
    red[t] = acc
    cuda.syncthreads()
    groups = ncols >> 3  # groups of 8 codes = `bits` bytes, per row
    for g in range(t, m * groups, TPB):
        r = g // groups
        q = g - r * groups
        word = np.uint64(0)
        for k in range(8):
            word |= np.uint64(code_sh[r * TPB + q * 8 + k]) << np.uint64(k * bits)
        p = code_off[c] + (((r * w + j0 + q * 8) * bits) >> 3)
        for k in range(bits):
            codes[p + k] = np.uint8((word >> np.uint64(8 * k)) & np.uint64(0xFF))
    block_sum(red, t)
    if t == 0:
        cb_clip[blk] = red[0]


@cuda.jit
def lookup_subblocks(codes, code_off, tables, bits, weight, mode, sb_start, sb_len,
                     sb_chunk, ch_start, y):
    """Per sub-block of the padded vector y:

    - DECODE: y = H_width (table_c[code]) (``kernels.dequantize_unrotate``, first half);
    - ACCUMULATE: y += weight * table_c[code] (``kernels.lookup_rotated``);
    - TRANSFORM: y = H_width y (``kernels.unrotate``, first half).
    """
    sh = cuda.shared.array(SUB, np.float32)
    sb = cuda.blockIdx.x
    t = cuda.threadIdx.x
    start = sb_start[sb]
    n = sb_len[sb]
    c = sb_chunk[sb]
    off = start - ch_start[c]
    mask = (1 << bits) - 1
    for i in range(t, n, TPB):
        if mode == TRANSFORM:
            sh[i] = y[start + i]
            continue
        bit = (off + i) * bits  # LSB-first bit position in the chunk's codes
        p = code_off[c] + (bit >> 3)
        word = np.int64(codes[p])
        if (bit & 7) + bits > 8:
            word |= np.int64(codes[p + 1]) << 8
        v = tables[c, (word >> (bit & 7)) & mask]
        if mode == ACCUMULATE:
            y[start + i] = add_product(y[start + i], weight, v)
        else:
            sh[i] = v
    if mode == ACCUMULATE:
        return
    cuda.syncthreads()
    block_fwht(sh, n, t)
    for i in range(t, n, TPB):
        y[start + i] = sh[i]


@cuda.jit
def inverse_columns(y, d, out, cb_chunk, cb_col0, cb_ncols, ch_start, ch_width, ch_rows,
                    keys):
    """out = D H_rows y down the columns, real coordinates (< d) only: the second half of
    ``kernels.dequantize_unrotate`` / ``kernels.unrotate``."""
    words = cuda.shared.array(WORDS_SH, np.uint64)
    blk = cuda.blockIdx.x
    t = cuda.threadIdx.x
    c = cb_chunk[blk]
    j0 = cb_col0[blk]
    ncols = cb_ncols[blk]
    w = ch_width[c]
    m = ch_rows[c]
    start = ch_start[c]
    lead = j0 & 63  # w is a multiple of 64 when m > 1, so every row starts at this bit
    per_row = (lead + ncols + 63) >> 6
    for k in range(t, m * per_row, TPB):
        r = k // per_row
        words[k] = splitmix(keys[c], ((r * w + j0) >> 6) + k - r * per_row)
    cuda.syncthreads()
    if t >= ncols:
        return
    vals = cuda.local.array(MAX_ROWS, np.float32)
    for r in range(m):
        vals[r] = y[start + r * w + j0 + t]
    column_fwht(vals, m)
    for r in range(m):
        g = start + r * w + j0 + t
        if g < d:
            v = vals[r]
            if negated(words, r * per_row, lead + t):
                v = -v
            out[g] = v


@cuda.jit
def accumulate64(total, part):
    """total[i] += float64(part[i]) (the host's float64 running total, on the device)."""
    i = cuda.grid(1)
    if i < total.shape[0]:
        total[i] += np.float64(part[i])


@cuda.jit
def mean32(total, w, out):
    """out[i] = float32(total[i] / w)."""
    i = cuda.grid(1)
    if i < total.shape[0]:
        out[i] = np.float32(total[i] / w)
