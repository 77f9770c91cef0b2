"""hd-dither-ec: HD rotation + subtractive dither on an UNBOUNDED uniform lattice,
entropy-coded to a budget of R bits per coordinate (a float R in [0.5, 8]).

Per chunk c (n coordinates, rotated y' = H D x unnormalized, scale s = ||y'|| / sqrt(n), so
z = y' / s has unit RMS), with the chunk's step delta and coordinate i's dither u_i ~ U[0, 1)
(a counter-based function of the dither seed, ``rng.coordinate_dither_keys`` and
``fedhd.kernels.rans``):

    q_i = floor(z_i / delta - u_i + 1/2),     z^_i = (q_i + u_i) delta.

Nothing is clipped, so E[z^_i] = z_i exactly for every input: the error is uniform on
[-delta/2, delta/2), independent of x, and the chunk's vNMSE is delta^2 / 12.

Why a dither per coordinate (not one per chunk, as in "hd-dither"): the code length of a
chunk depends on its dithers. With one u per chunk it varies by +-8% at R = 1 even for a
Gaussian (at u = 1/2 every step costs >= 1 bit a coordinate), so no step fits a hard budget
for every u, and a step chosen after looking at u is biased (measurably at N = 1500).
With n dithers the code length concentrates (+-0.005 bits at n = 2**16), and the steps are
chosen from x and the rotation alone: the rate controller measures code lengths with
*pilot* dithers derived from the rotation seed, never with the real ones. The estimate is
therefore exactly unbiased; the real code length exceeds the pilot's by more than the
0.03-bit allowance with negligible probability, and only then (never in practice at
d >= 2**16) are the steps coarsened.

Coding: a static rANS coder (``fedhd.kernels.rans``, four interleaved states per chunk, two in
chunks under 4096 coordinates) under
the law a unit-variance model gives to q given the coordinate's dither bin (32 bins): no
table on the wire. Model 0 is the Gaussian: exact for the worst input (at a fixed variance
the Gaussian has the largest entropy), and most other inputs cost about as much under it
(their cross-entropy depends mostly on E z^2 = 1). At coarse steps a rotated sparse input
with a few large values costs up to 4% more bits under it (9% more error at R = 1), so each
chunk may instead use model 1, a heavier-tailed Gaussian mixture, whichever the pilot
measures cheaper (one histogram prices both). Chunks are coded and decoded independently, in
parallel.

Steps: reverse water-filling across chunks (minimize sum_c s_c^2 delta_c^2 / 12 +
lambda n_c H(delta_c), H the ideal Gaussian rate curve); the controller adjusts lambda until
the blob's measured size is within 0.2% below floor(R d) bits. Steps travel on the wire, so
the allocation rule is the encoder's alone.

Payload (after the 31-byte common header; little-endian; 4-byte fields 4-aligned in the
blob):

=========================  ======================================================
u8                         coder format (2: four rANS states, two under 4096
                           coordinates, and the model menu of ``fedhd.kernels.rans``;
                           format 1, two states everywhere, is no longer read)
u32                        reserved, zero (puts the tables on a 4-byte boundary)
f32 x C                    chunk scales s_c (0: an all-zero chunk, nothing coded)
f32 x C                    chunk steps delta_c (0 exactly for zero chunks)
u32 x C                    words of each chunk's rANS stream (0 for zero chunks)
u8 x C, zeros to 4n        each chunk's model (``fedhd.kernels.rans``: 0 Gaussian,
                           1 heavier-tailed mixture; 0 for zero chunks)
u32 x W                    the streams, chunk after chunk
u32 x P                    zero padding up to ceil(padded / 256) words in all
=========================  ======================================================

The padding makes every blob hold at least one byte per 64 coordinates, so a blob's length
bounds the vector it decodes to (and what the decoder allocates) whatever its fields say.
For vectors so short that the header, tables and coder states (29 bytes a chunk) exceed
R d / 2 bits, the codes still get R / 2 bits per coordinate and the blob exceeds the budget.
"""

from __future__ import annotations

import math
import struct
import time
from functools import lru_cache
from typing import Any

import numpy as np

from .. import rng
from ..errors import DecodeError
from ..kernels import rans as E
from ..layout import Layout
from ..wire import HEADER_BYTES, Header
from .base import Contribution, Method, blob_buffer, norm_of_chunk_fields, rotated_norm

CODER_FORMAT = 2  # 1: two rANS states in every chunk (fedhd before December 2026), not read
RESERVED_OFF = HEADER_BYTES + 1  # 4 reserved zero bytes: they align the tables to 4 bytes
TABLE_OFF = RESERVED_OFF + 4  # blob offset of the chunk tables
assert TABLE_OFF % 4 == 0, "the chunk tables must start on a 4-byte boundary of the blob"
_P = TABLE_OFF - HEADER_BYTES  # payload offset of the chunk tables
COORDS_PER_MIN_WORD = 256  # the word area holds at least ceil(padded / 256) words
MAG_LIMIT = 2.0**100  # decoded rotated values stay below this (float32 max is 2**128)
SLACK = 0.03  # bits a coordinate the blob may exceed R by (d >= 2**16; see ``encode_payload``)
MIN_SLACK_BITS = 1024  # ... and at least this many bits for smaller d
SAMPLE_ABOVE = 1 << 20  # the controller samples chunks of vectors at least this long
_ERRORS = {
    E.ERR_STATE: "bad initial coder state",
    E.ERR_OVERRUN: "coder stream ran out of words",
    E.ERR_ESCAPE: "escaped value out of range",
    E.ERR_END: "coder stream does not end where its length says",
}


def table_bytes(chunks: int) -> int:
    """Bytes of the chunk tables: scales, steps, word counts, model ids (padded to 4)."""
    return 12 * chunks + 4 * -(-chunks // 4)


def min_words(padded: int) -> int:
    return -(-padded // COORDS_PER_MIN_WORD)


def _stream_caps(sizes: np.ndarray) -> np.ndarray:
    """Most words a chunk stream can take: 16 bits a symbol, 32 more per escape (|z| > 6.5,
    so at most n / 42 of them), and the final states."""
    return sizes // 2 + sizes // 32 + 2 * E.chunk_lanes(sizes) + 2


def _flush_bits(sizes: np.ndarray) -> np.ndarray:
    """A chunk stream's cost beyond its symbols: its 64-bit final states, and rounding."""
    return 64 * E.chunk_lanes(sizes) + 16


def _qmax(sizes: np.ndarray, steps: np.ndarray) -> np.ndarray:
    return np.floor(1.001 * np.sqrt(sizes) / steps) + 2


@lru_cache(maxsize=1)
def rate_curve() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ln delta, H(delta) bits, ln F(delta)) on a grid; F = delta^2 / g with g = -dH/dln delta
    is increasing, and the water-filling step of a chunk solves F(delta) = 6 lambda n / s^2."""
    log2_steps = np.arange(round(math.log2(E.MIN_STEP)) * 16,
                           round(math.log2(E.MAX_STEP)) * 16 + 1) / 16.0
    H = E.entropy_table(log2_steps)
    ln = log2_steps * math.log(2.0)
    g = np.maximum(-np.gradient(H, ln), 1e-300)
    lnF = np.maximum.accumulate(2 * ln - np.log(g)) + np.arange(ln.size) * 1e-9
    return ln, H, lnF


class _Allocation:
    """Steps of the active chunks as a function of theta = ln(lambda)."""

    def __init__(self, scales: np.ndarray, sizes: np.ndarray):
        self.active = scales > 0
        s = scales[self.active].astype(np.float64)
        self.n = sizes[self.active].astype(np.float64)
        self.w = np.log(6 * self.n) - 2 * np.log(s)
        # keep s * delta * (qmax + 1) <= MAG_LIMIT / 2 (see ``_parse``)
        self.cap = np.minimum(E.MAX_STEP, (MAG_LIMIT / 2 / s - 1.001 * np.sqrt(self.n)) / 4)
        self.ln, self.H, self.lnF = rate_curve()
        any_active = bool(self.active.any())
        self.theta_lo = float(self.lnF[0] - self.w.max()) if any_active else 0.0
        self.theta_hi = float(self.lnF[-1] - self.w.min()) if any_active else 0.0
        self.C = scales.shape[0]

    def steps(self, theta: float) -> np.ndarray:
        lnd = np.interp(theta + self.w, self.lnF, self.ln)
        st = np.clip(np.exp(lnd), E.MIN_STEP, self.cap).astype(np.float32)
        out = np.zeros(self.C, np.float32)
        out[self.active] = np.clip(st, np.float32(E.MIN_STEP), np.float32(E.MAX_STEP))
        return out

    def predict(self, theta: float) -> float:
        lnd = np.interp(theta + self.w, self.lnF, self.ln)
        return float(self.n @ np.interp(lnd, self.ln, self.H))

    def solve(self, target: float) -> float:
        """The smallest theta whose predicted code length is <= target (bisection)."""
        lo, hi = self.theta_lo, self.theta_hi
        if self.predict(lo) <= target:
            return lo
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if self.predict(mid) <= target:
                hi = mid
            else:
                lo = mid
        return hi


class ECContribution(Contribution):
    """A validated hd-dither-ec blob. Its streams can only be checked by decoding them, and
    the sum must stay untouched by a bad one, so ``add_to`` writes sum + this blob into a
    work vector (kept in the caller's ``scratch``) and, once every chunk checked out, hands
    it back as the new sum, the old sum becoming the next blob's work vector: one pass,
    no separate addition. With ``low_memory`` it decodes twice instead: a check pass, then
    chunk by chunk into the sum (no work vector; about 1.8x the time)."""

    def __init__(self, method: HDDitherEC, payload: memoryview, h: Header, layout: Layout,
                 low_memory: bool = False):
        self.method, self.h, self.layout, self.low_memory = method, h, layout, low_memory
        self.parts = method._parse(payload, layout)
        scales, steps = self.parts[0], self.parts[1]
        n = layout.sizes.astype(np.float64)
        st = steps.astype(np.float64)
        # |(q + u) s delta / n| <= s delta (qmax + 1) / n for every decoded value
        bound = scales * st * (_qmax(layout.sizes, np.where(st > 0, st, 1.0)) + 1) / n
        self.max_abs = float(bound.max(initial=0.0))
        self._unit: np.ndarray | None = None  # the rotated decode at weight 1, once needed
        self._checked = False

    def norm(self):
        lay = self.layout
        if self.low_memory:  # the check pass measures it
            ss = self.method._run(self.parts, self.h, lay, 1.0, E.CHECK, _NOTHING)[1]
            self._checked = True
            return float(np.sqrt(ss @ lay.sizes.astype(np.float64)))
        self._unit = self.method._run(self.parts, self.h, lay, 1.0, E.ROTATED,
                                      np.empty(lay.padded, np.float32))[0]
        return rotated_norm(self._unit, lay)

    def add_to(self, acc, weight, be, scratch=None):
        lay = self.layout
        if self._unit is not None:
            acc += np.float32(weight) * self._unit
            return acc
        if self.low_memory:
            if not self._checked:
                self.method._run(self.parts, self.h, lay, 1.0, E.CHECK, _NOTHING)
            self.method._run(self.parts, self.h, lay, weight, E.ADD, acc)
            return acc
        # the weight folded into the decode (one rounding); acc + it lands in the work
        # vector, which becomes the sum only if every chunk decodes
        scratch = {} if scratch is None else scratch
        work = scratch.get(self.method.name)
        if work is None or work.shape != (lay.padded,):
            work = np.empty(lay.padded, np.float32)
        self.method._run(self.parts, self.h, lay, weight, E.ADD, work, base=acc)
        scratch[self.method.name] = acc
        return work


_NOTHING = np.empty(0, np.float32)  # the ``out`` of a CHECK pass, which writes nothing


class HDDitherEC(Method):
    name = "hd-dither-ec"
    commutes_with_sum = True
    unbiased = True
    integer_bits = False
    min_bits = 0.5
    max_bits = 8
    default_bits = 2

    def __init__(self) -> None:
        #: Statistics of the last encode / decode in this process (seconds, iterations, bits).
        self.stats: dict[str, Any] = {}

    # -- encoder ---------------------------------------------------------------------------
    def encode_payload(self, x, h, layout, be):
        t0 = time.perf_counter()
        C, d, padded = layout.chunks, h.d, layout.padded
        sizes, starts = layout.sizes, layout.starts
        keys = rng.sign_keys(h.seed, C)
        # large inputs: the controller estimates each big chunk from its first eighth (the
        # rotation makes every part of a chunk alike; the error on the total is ~1e-4
        # relative at d = 2**24), so only that eighth of the rotation is kept
        big = padded >= SAMPLE_ABOVE
        shift = np.where(big & (sizes >= 1 << 13), 3, 0).astype(np.int64)
        ss, sample, sample_off = E.rotate_sample(x, d, starts, sizes, keys, shift)
        if not np.isfinite(ss).all():
            raise ValueError("x contains NaN or Inf (or values so large that the float32 "
                             "rotation overflows)")
        scales = np.sqrt(ss / sizes).astype(np.float32)
        if (scales.astype(np.float64) * np.sqrt(sizes) * 1.001 > MAG_LIMIT / 8).any():
            raise ValueError(f"x is too large for {self.name}: a chunk norm exceeds 2**96")
        t1 = time.perf_counter()

        R = float(h.bits)
        fixed_bits = 8 * (TABLE_OFF + table_bytes(C))
        flush = int(_flush_bits(sizes)[scales > 0].sum())
        budget = max(math.floor(R * d) - fixed_bits, 0.5 * R * padded + flush)
        cap = fixed_bits + budget + max(SLACK * d, MIN_SLACK_BITS)
        alloc = _Allocation(scales, sizes)
        # the steps depend on x and the rotation only, never on the dither: exactly unbiased
        pilot = rng.pilot_keys(h.seed, C)
        theta, steps, models, iters = self._control(sample, sample_off, shift, layout, scales,
                                                    alloc, pilot, budget)
        del sample
        t2 = time.perf_counter()

        # the streams go straight into the blob's word area (4-byte aligned in the blob),
        # sized for the cap; the buffer is cut to the streams' length at the end
        dkeys = rng.coordinate_dither_keys(h.dither_seed, C)
        caps = np.where(scales > 0, _stream_caps(sizes), 0)
        T = table_bytes(C)
        room = max(int((cap - fixed_bits) // 32), min_words(padded))
        fallbacks = 0
        while True:
            raw, payload = blob_buffer(_P + T + 4 * room)
            words = payload[_P + T:].view(np.uint32)
            counts, nw = E.encode_streams(x, d, starts, sizes, keys, scales, steps, models,
                                          dkeys, caps, words)
            if nw >= 0 and fixed_bits + 32 * max(nw, min_words(padded)) <= cap:
                break
            if theta >= alloc.theta_hi or fallbacks >= 20:
                if nw >= 0:
                    break  # the coarsest steps tried: sent whatever they cost
                room = max(int(caps.sum()), min_words(padded))  # room for any stream
                continue
            # astronomically rare for d >= 2**16 (the dither's code length exceeds the
            # pilot's by > 0.03 bits a coordinate): coarser steps, whatever the cost
            fallbacks += 1
            theta = min(alloc.theta_hi, theta + 0.05 * fallbacks)
            steps = alloc.steps(theta)  # (the models stay those the pilot chose)
        t3 = time.perf_counter()

        nw = max(nw, min_words(padded))
        out = payload[:_P + T + 4 * nw]
        out[0] = CODER_FORMAT
        out[_P:_P + 4 * C] = scales.astype("<f4").view(np.uint8)
        out[_P + 4 * C:_P + 8 * C] = steps.astype("<f4").view(np.uint8)
        out[_P + 8 * C:_P + 12 * C] = counts.astype("<u4").view(np.uint8)
        out[_P + 12 * C:_P + 13 * C] = models
        if not np.little_endian:  # pragma: no cover - the wire is little-endian
            words[:nw].byteswap(inplace=True)
        size = HEADER_BYTES + out.size
        del out, payload, words  # (views of raw: it cannot shrink while they exist)
        del raw[size:]
        t4 = time.perf_counter()
        self.stats = {
            "rotate_s": t1 - t0, "control_s": t2 - t1, "code_s": t3 - t2, "pack_s": t4 - t3,
            "iterations": iters, "fallbacks": fallbacks,
            "blob_bits": 8 * size, "target_bits": fixed_bits + budget,
        }
        return raw

    def _control(self, sample: np.ndarray, sample_off: np.ndarray, shift: np.ndarray,
                 layout: Layout, scales: np.ndarray, alloc: _Allocation, pilot: np.ndarray,
                 budget: float) -> tuple[float, np.ndarray, np.ndarray, int]:
        """(theta, steps, models, iterations): steps whose code length, measured with the
        pilot dithers under the cheaper model of each chunk, lies within ~0.2% below
        ``budget`` bits (or the finest steps, if even they fit). ``sample``: the first
        sizes[c] >> shift[c] rotated coordinates of each chunk c, at sample_off[c]."""
        C = layout.chunks
        if not alloc.active.any():
            return alloc.theta_hi, np.zeros(C, np.float32), np.zeros(C, np.uint8), 0
        flush = int(_flush_bits(layout.sizes)[alloc.active].sum())

        def measured(theta: float) -> tuple[np.ndarray, np.ndarray, float]:
            steps = alloc.steps(theta)
            bits = E.measure(sample, sample_off, layout.sizes, scales, steps, pilot, shift)
            models = np.argmin(bits, axis=1).astype(np.uint8)
            return steps, models, float(bits.min(axis=1).sum()) + flush

        tol = 0.002 * max(budget - flush, 0.0) + 16.0
        target = budget - 0.5 * tol
        lo, hi = alloc.theta_lo, alloc.theta_hi
        theta = alloc.solve(target - flush)
        best: tuple[float, np.ndarray, np.ndarray] | None = None
        iters = 0
        while iters < 12:
            iters += 1
            steps, models, A = measured(theta)
            if A <= budget:
                if best is None or theta < best[0]:
                    best = (theta, steps, models)
                hi = min(hi, theta)
                if A >= budget - tol:
                    break
            else:
                lo = max(lo, theta)
            nxt = alloc.solve(target - flush - (A - flush - alloc.predict(theta)))
            if not lo < nxt < hi:
                nxt = 0.5 * (lo + hi)
            if nxt == theta:
                break
            theta = nxt
        if best is None:  # even the coarsest steps tried do not fit: take the coarsest
            steps, models, _ = measured(alloc.theta_hi)
            return alloc.theta_hi, steps, models, iters
        return best[0], best[1], best[2], iters

    # -- wire checks -----------------------------------------------------------------------
    def expected_size(self, blob: memoryview, h: Header, layout: Layout) -> int:
        """Read the stream lengths from the chunk tables, after checking that the blob is
        at least as long as any blob of this d must be (so nothing is allocated for a
        hostile d), that the model id is known and the reserved bytes are zero."""
        C = layout.chunks
        need = TABLE_OFF + table_bytes(C)
        least = need + 4 * min_words(layout.padded)
        if len(blob) < least:
            raise DecodeError(
                f"blob is truncated: {len(blob)} bytes, a {self.name} blob of length {h.d} "
                f"takes at least {least}")
        if blob[HEADER_BYTES] != CODER_FORMAT:
            raise DecodeError(f"unsupported {self.name} coder format {blob[HEADER_BYTES]} "
                              f"(this fedhd writes and reads format {CODER_FORMAT})")
        if struct.unpack_from("<I", blob, RESERVED_OFF)[0] != 0:
            raise DecodeError(f"reserved bytes of a {self.name} blob must be zero")
        counts = np.frombuffer(blob, "<u4", C, TABLE_OFF + 8 * C)
        W = int(counts.sum(dtype=np.uint64))
        return need + 4 * max(W, min_words(layout.padded))

    def _parse(self, payload: memoryview, layout: Layout) -> tuple[np.ndarray, ...]:
        """Validated (scales, steps, models, word offsets, words) of a blob whose length and
        CRC ``open`` checked."""
        C, sizes = layout.chunks, layout.sizes
        scales = np.frombuffer(payload, "<f4", C, _P).astype(np.float32)
        steps = np.frombuffer(payload, "<f4", C, _P + 4 * C).astype(np.float32)
        counts = np.frombuffer(payload, "<u4", C, _P + 8 * C).astype(np.int64)
        models = np.frombuffer(payload, np.uint8, C, _P + 12 * C).astype(np.int64)
        if not (np.isfinite(scales).all() and (scales >= 0).all()):
            raise DecodeError("chunk scales must be finite and non-negative")
        act = scales > 0
        if (steps[~act] != 0).any() or (counts[~act] != 0).any() or (models[~act] != 0).any():
            raise DecodeError("a zero chunk carries a step, a model or codes")
        if (models >= E.MODELS).any():
            raise DecodeError(f"chunk model ids must be below {E.MODELS}")
        T = table_bytes(C)
        if (np.frombuffer(payload, np.uint8, T - 13 * C, _P + 13 * C) != 0).any():
            raise DecodeError("nonzero padding after the chunk tables")
        st = steps[act].astype(np.float64)
        if not ((st >= E.MIN_STEP) & (st <= E.MAX_STEP)).all():
            raise DecodeError(f"chunk steps must lie in [{E.MIN_STEP}, {E.MAX_STEP}]")
        n = sizes[act]
        if (scales[act] * st * (_qmax(n, st) + 1) > MAG_LIMIT).any():
            raise DecodeError("chunk scale and step overflow the decoded range")
        if ((counts[act] < 2 * E.chunk_lanes(n)) | (counts[act] > _stream_caps(n))).any():
            raise DecodeError("a chunk stream length is impossible for its chunk size")
        W = int(counts.sum())
        area = np.frombuffer(payload, "<u4", (len(payload) - _P - T) // 4, _P + T)
        if (area[W:] != 0).any():
            raise DecodeError("nonzero padding after the coder streams")
        words = area[:W]
        if not words.flags.aligned or words.dtype != np.dtype(np.uint32):
            words = words.astype(np.uint32)
        off = np.zeros(C + 1, np.int64)
        np.cumsum(counts, out=off[1:])
        return scales, steps, models, off, words

    def _run(self, parts: tuple[np.ndarray, ...], h: Header, layout: Layout, weight: float,
             mode: int, out: np.ndarray, base: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """Decode the blob whose ``_parse`` is ``parts`` in ``mode`` (``rans.VECTOR``,
        ``ROTATED``, ``CHECK``, ``ADD`` onto ``base``, default out: see
        ``rans.decode_chunks``) into out; returns (out, the chunks' sums of squares with
        CHECK). DecodeError for a bad stream."""
        scales, steps, models, off, words = parts
        C = layout.chunks
        err, ss = E.decode_chunks(
            words, off, h.d, layout.starts, layout.sizes, rng.sign_keys(h.seed, C), scales,
            steps, models, rng.coordinate_dither_keys(h.dither_seed, C), float(weight), mode, out,
            base,
        )
        bad = np.flatnonzero(err)
        if bad.size:
            c = int(bad[0])
            raise DecodeError(f"chunk {c}: {_ERRORS.get(int(err[c]), 'corrupt stream')}")
        return out, ss

    # -- decoder ---------------------------------------------------------------------------
    def decode_payload(self, payload, h, layout, out, be):
        t0 = time.perf_counter()
        self._run(self._parse(payload, layout), h, layout, 1.0, E.VECTOR, out)
        self.stats["decode_s"] = time.perf_counter() - t0

    def decode_rotated(self, payload: memoryview, h: Header, layout: Layout,
                       weight: float = 1.0) -> np.ndarray:
        """weight * the decoded rotated chunks (length ``layout.padded``), scaled so that
        ``Backend.unrotate`` of it is weight * the decoded vector."""
        return self._run(self._parse(payload, layout), h, layout, weight, E.ROTATED,
                         np.empty(layout.padded, np.float32))[0]

    def rotated_contribution(self, payload, h, layout, low_memory=False):
        return ECContribution(self, payload, h, layout, low_memory)

    def stated_norm(self, payload, h, layout):
        return norm_of_chunk_fields(payload, layout.chunks, _P)  # s_c = ||x_c||


METHOD = HDDitherEC()
