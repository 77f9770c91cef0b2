"""Summable fixed-width codes: rotated, dithered integers mod 2**m that add under masks.

Secure aggregation needs codes whose SUM means something: every client of a round must use
the same rotation, the same lattice step and the same modulus, so that the server, which
sees only ``sum_k code_k mod 2**m``, can decode the sum. fedhd's ``Method`` blobs do not
fit that contract (each carries its own per-chunk scales, is decoded alone, and the
entropy-coded ones have data-dependent lengths), so this is its own module: encode, pack,
sum and decode functions over a round-shared ``ModularSpec`` that the server chooses.

Encoding of a client's update x (float32, length d) under a spec and the client's dither
seed (``fedhd.rng.modular_dither_seed``):

1. weight and clip: ``x <- w * x * min(1, C / ||x||)`` (w in [0, 1], the client's weight
   factor; C the round's clip norm ``clip_norm``);
2. permute and pad: ``v = [x, 0...]`` of length D (a multiple of the chunk length
   n = 2**log2_chunk), ``u = v[perm]`` with the round's ``fedhd.rng.permutation``; every
   chunk then holds a random sample of the coordinates, so its energy is close to its
   share n / D of the total;
3. chunk clip: each chunk ``u_c <- u_c * min(1, C_c / ||u_c||)`` with the round's
   ``chunk_clip`` C_c (a no-op unless a chunk holds far more than its share: the spec
   sets C_c = slack * C * sqrt(n / D));
4. rotate: ``y_c = H D_c u_c / sqrt(n)`` (normalized Walsh-Hadamard, the round's signs);
5. dither and round: ``q_g = floor(y_g / step + v_g)``, ``v_g ~ U[0, 1)`` the client's
   dithers (``fedhd.rng.modular_dithers``), then ``q mod 2**m`` (``bits`` = m).

The reconstruction ``step * (q_g - v_g + 1/2)`` equals ``y_g + e_g`` with e_g uniform on
(-step/2, step/2], independent of y (subtractive dither): exactly unbiased, and
``E||x_hat - x||^2 = d * step**2 / 12`` for every clipped input (the rotation is
orthonormal; ``noise_energy``). Decoding a sum over a set S of clients
(``decode_sum``): centre ``s = sum_k q_k mod 2**m`` to [-2**(m-1), 2**(m-1)), subtract
``sum_{k in S} v_k - |S| / 2``, multiply by the step, invert the rotation and the
permutation. The sum is exact as long as no coordinate of ``sum_k q_k`` leaves the
centred range (no wrap).

No-wrap guarantee (``wrap_probability_bound``): for clipped inputs, each coordinate of
``sum_k y_k`` is a Rademacher sum (over the signs) of a vector of norm <= K C_c / sqrt(n)
per chunk, so ``P(|sum_k y_kg| > t K C_c / sqrt(n)) <= 2 exp(-t**2 / 2)`` whatever the
inputs (Hoeffding), and ``|sum_k q_k - sum_k y_k / step| < K``. ``spec_for`` takes
``step = 4 C_c / (sqrt(n) 2**b)`` (a single client's +-2 standard deviations span 2**b
steps) and ``m = b + ceil(log2 K) + headroom``. With headroom 2 (L = ceil(log2 K)),
``t = 4 (2**(b+L+1) - 1 - K) / (K 2**b) >= 8 - 4 (K + 1) / (K 2**b)``: at least 6.5 for
b >= 2 (about 8 when K is a power of two; 11.7 at K = 10 and 9.2 at K = 100 for b = 2), so
a coordinate wraps with probability below 2e-9 even when all K updates point the same way
at the clip norm (below 1e-13 per round over 10**5 coordinates at K = 10 or 100). A wrap
that does happen is visible: the server counts the coordinates of the centred sum in the
outer quarter of the range, |s| >= 2**(m-2) (``guard_count``), where a wrapped value lands
unless it overshot by more than a quarter of the range.

Wire layout of a packed code vector (``pack``/``unpack``): n words of m bits, LSB first,
word g at bits [g m, (g + 1) m) of the little-endian byte string, ceil(n m / 8) bytes,
zero padding bits.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from . import rng
from .backend.cpu import as_host_vector
from .errors import DecodeError
from .kernels import transform_pack as K
from .layout import MAX_D, MIN_LOG2_CHUNK, Layout, make_layout

__all__ = [
    "MAX_BITS",
    "MIN_BITS",
    "Encoded",
    "ModularSpec",
    "centered",
    "choose_log2_chunk",
    "decode_sum",
    "dither_sum",
    "encode",
    "guard_count",
    "modulus_bits",
    "noise_energy",
    "pack",
    "packed_bytes",
    "spec_for",
    "unpack",
    "word_dtype",
    "wrap_probability_bound",
]

MIN_BITS = 2
MAX_BITS = 32
MAX_LOG2_CHUNK = 16
#: Per-client clipped codes stay within 2**52 in magnitude (exact in float64 and int64).
MAX_CODE = 2.0**52

_MAGIC = b"FM"
_VERSION = 1
_SPEC = struct.Struct("<2sBBBIQddd")  # magic, version, m, log2_chunk, d, seed, 3 floats
SPEC_BYTES = _SPEC.size


def word_dtype(bits: int) -> np.dtype:
    """The unsigned dtype that holds one m-bit word (uint8, uint16 or uint32); its natural
    wrap-around is arithmetic mod 2**(8 * itemsize), a multiple of 2**m."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"modulus bits must be in [{MIN_BITS}, {MAX_BITS}], got {bits}")
    return np.dtype(np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32)


@dataclass(frozen=True)
class ModularSpec:
    """What every client of a round shares: chosen by the server, sent to the clients.

    d : vector length; log2_chunk : Hadamard chunk length n = 2**log2_chunk;
    bits : m, the modulus exponent (codes are taken mod 2**m); seed : the round's rotation
    and permutation seed; step : the lattice step; clip_norm : C (global L2 clip);
    chunk_clip : C_c (per-chunk L2 clip after the permutation).
    """

    d: int
    log2_chunk: int
    bits: int
    seed: int
    step: float
    clip_norm: float
    chunk_clip: float

    def __post_init__(self) -> None:
        for name in ("d", "log2_chunk", "bits", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {v!r}")
        word_dtype(self.bits)
        if not MIN_LOG2_CHUNK <= self.log2_chunk <= MAX_LOG2_CHUNK:
            raise ValueError(f"log2_chunk must be in [{MIN_LOG2_CHUNK}, {MAX_LOG2_CHUNK}], "
                             f"got {self.log2_chunk}")
        if not 1 <= self.d or self.padded > MAX_D:
            raise ValueError(f"d must be in [1, {MAX_D}] once padded, got {self.d}")
        rng.check_seed(self.seed)
        for name in ("step", "clip_norm", "chunk_clip"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        if self.chunk_clip / self.step > MAX_CODE:
            raise ValueError("chunk_clip / step is beyond 2**52: the codes would not be exact")

    @property
    def n(self) -> int:
        """Chunk length."""
        return 1 << self.log2_chunk

    @property
    def chunks(self) -> int:
        return -(-self.d // self.n)

    @property
    def padded(self) -> int:
        """D: the coordinates that are coded (a multiple of the chunk length)."""
        return self.chunks * self.n

    @property
    def layout(self) -> Layout:
        return make_layout(self.padded, self.log2_chunk)

    @property
    def dtype(self) -> np.dtype:
        return word_dtype(self.bits)

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1

    def to_bytes(self) -> bytes:
        """41 bytes, little-endian: magic ``FM``, version (u8), m (u8), log2_chunk (u8),
        d (u32), seed (u64), step, clip_norm, chunk_clip (f64)."""
        return _SPEC.pack(_MAGIC, _VERSION, self.bits, self.log2_chunk, self.d, self.seed,
                          float(self.step), float(self.clip_norm), float(self.chunk_clip))

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> ModularSpec:
        """Parse and validate ``to_bytes``; DecodeError for anything malformed."""
        if len(data) != SPEC_BYTES:
            raise DecodeError(f"a modular spec is {SPEC_BYTES} bytes, got {len(data)}")
        magic, version, bits, log2_chunk, d, seed, step, clip, chunk_clip = _SPEC.unpack(data)
        if magic != _MAGIC:
            raise DecodeError(f"bad magic {magic!r}: not a modular spec")
        if version != _VERSION:
            raise DecodeError(f"unsupported modular spec version {version}")
        try:
            return cls(d, log2_chunk, bits, seed, step, clip, chunk_clip)
        except (TypeError, ValueError) as e:
            raise DecodeError(f"bad modular spec: {e}") from None


def choose_log2_chunk(d: int, max_log2: int = MAX_LOG2_CHUNK) -> int:
    """The chunk exponent for length d: the largest k <= max_log2 with 2**k <= d whose
    padding to a multiple of 2**k costs at most 2 % (else the one that pads least).
    Larger chunks hold larger random samples of the coordinates, so their energies stay
    closer to their share (fewer chunk clips); padding costs bits on the wire."""
    if d < 1:
        raise ValueError(f"d must be positive, got {d}")
    best, best_pad = MIN_LOG2_CHUNK, None
    for k in range(max(MIN_LOG2_CHUNK, min(max_log2, d.bit_length() - 1)), MIN_LOG2_CHUNK - 1,
                   -1):
        pad = -(-d // (1 << k)) * (1 << k) - d
        if pad <= 0.02 * d:
            return k
        if best_pad is None or pad < best_pad:
            best, best_pad = k, pad
    return best


def modulus_bits(bits: int, clients: int, headroom: int = 2) -> int:
    """m = b + ceil(log2 K) + headroom."""
    if clients < 1:
        raise ValueError(f"clients must be >= 1, got {clients}")
    return int(bits) + max(0, math.ceil(math.log2(clients))) + int(headroom)


def spec_for(d: int, clip_norm: float, bits: int, clients: int, seed: int, *,
             headroom: int = 2, slack: float = 1.5, log2_chunk: int | None = None
             ) -> ModularSpec:
    """The spec of a round of at most ``clients`` clients at b = ``bits``: C_c = min(C,
    slack C sqrt(n / D)), step = 4 C_c / (sqrt(n) 2**b), m = b + ceil(log2 K) + headroom."""
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [1, {MAX_BITS}], got {bits}")
    if not (math.isfinite(slack) and slack > 0):
        raise ValueError(f"slack must be positive, got {slack}")
    k = choose_log2_chunk(d) if log2_chunk is None else int(log2_chunk)
    n = 1 << k
    padded = -(-d // n) * n
    chunk_clip = min(float(clip_norm), slack * float(clip_norm) * math.sqrt(n / padded))
    step = 4.0 * chunk_clip / (math.sqrt(n) * 2.0**bits)
    return ModularSpec(int(d), k, modulus_bits(bits, clients, headroom), int(seed), step,
                       float(clip_norm), chunk_clip)


def noise_energy(spec: ModularSpec) -> float:
    """E||x_hat - x||^2 of one client's decoded contribution: d step**2 / 12 (exact for
    clipped inputs); a sum over K clients adds K times that."""
    return spec.d * spec.step**2 / 12.0


def wrap_probability_bound(spec: ModularSpec, clients: int) -> float:
    """Union bound, over all D coordinates, on the probability that the sum of ``clients``
    clipped codes wraps, for ANY inputs (all at the clip norm and aligned included)."""
    room = (2.0 ** (spec.bits - 1) - 1 - clients) * spec.step  # what sum_k y_k may reach
    if room <= 0:
        return 1.0
    t = room * math.sqrt(spec.n) / (clients * spec.chunk_clip)
    return min(1.0, 2.0 * spec.padded * math.exp(-t * t / 2.0))


@dataclass(frozen=True)
class Encoded:
    """One client's code: ``words`` (D values mod 2**m, ``spec.dtype``) and whether its
    update was clipped (globally or in a chunk)."""

    words: np.ndarray
    clipped: bool


def _rotate(u: np.ndarray, spec: ModularSpec) -> np.ndarray:
    lay = spec.layout
    out = np.empty(spec.padded, np.float32)
    K.rotate(u, spec.padded, lay.starts, lay.sizes, rng.sign_keys(spec.seed, lay.chunks), out)
    return out  # unnormalized: sqrt(n) * y


def encode(x: object, spec: ModularSpec, dither_seed: int, weight: float = 1.0) -> Encoded:
    """The summable code of update x (float vector of length d) for one client.

    ``weight`` in [0, 1] scales the clipped update (weighted means: clients pre-scale).
    ValueError for a wrong length, NaN/Inf, or a weight outside [0, 1].
    """
    v = as_host_vector(x)
    if v.shape[0] != spec.d:
        raise ValueError(f"x has {v.shape[0]} coordinates, the spec {spec.d}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.number)) or not (
            0.0 <= float(weight) <= 1.0):
        raise ValueError(f"weight must be in [0, 1], got {weight!r}")
    weight = float(weight)
    x64 = v.astype(np.float64)
    norm = float(np.sqrt(x64 @ x64))
    if not math.isfinite(norm):
        raise ValueError("x contains NaN or Inf")
    clipped = norm > spec.clip_norm
    factor = weight * (spec.clip_norm / norm if clipped else 1.0)
    padded = np.zeros(spec.padded, np.float64)
    padded[: spec.d] = x64 * factor
    u = padded[rng.permutation(spec.seed, spec.padded)].reshape(spec.chunks, spec.n)
    cn = np.sqrt(np.einsum("ij,ij->i", u, u))
    over = cn > spec.chunk_clip
    if over.any():
        clipped = True
        u[over] *= (spec.chunk_clip / cn[over])[:, None]
    y = _rotate(u.ravel().astype(np.float32), spec).astype(np.float64)
    # float32 rounding may lift a clipped chunk a hair above C_c: harmless for the bound
    z = y * (1.0 / (math.sqrt(spec.n) * spec.step))
    q = np.floor(z + rng.modular_dithers(dither_seed, spec.padded)).astype(np.int64)
    words = (q & spec.mask).astype(spec.dtype)
    return Encoded(words, bool(clipped))


def dither_sum(spec: ModularSpec, dither_seeds: Iterable[int]) -> np.ndarray:
    """sum_k v_k (float64, D) over the given clients' dither seeds."""
    total = np.zeros(spec.padded, np.float64)
    for s in dither_seeds:
        total += rng.modular_dithers(s, spec.padded)
    return total


def centered(words: np.ndarray, bits: int) -> np.ndarray:
    """Words mod 2**m as int64 in [-2**(m-1), 2**(m-1))."""
    w = words.astype(np.int64) & ((1 << bits) - 1)
    half = 1 << (bits - 1)
    return ((w + half) & ((1 << bits) - 1)) - half


def guard_count(words: np.ndarray, bits: int) -> int:
    """Coordinates of a centred sum in the outer quarter, |s| >= 2**(m-2): a wrap lands
    there (unless it overshot by more than a quarter of the range), and so do sums that
    came close to wrapping."""
    s = centered(words, bits)
    return int(np.count_nonzero(np.abs(s) >= (1 << (bits - 2))))


def decode_sum(words: np.ndarray, spec: ModularSpec, dither_seeds: Iterable[int]
               ) -> np.ndarray:
    """sum_k x_hat_k (float32, length d) from ``words`` = sum_k code_k mod 2**m over the
    clients whose dither seeds are given (each exactly once)."""
    w = np.asarray(words)
    if w.shape != (spec.padded,):
        raise DecodeError(f"a summed code has {spec.padded} words, got shape {w.shape}")
    seeds = list(dither_seeds)
    z = centered(w, spec.bits).astype(np.float64) - dither_sum(spec, seeds) + 0.5 * len(seeds)
    acc = (z * (spec.step / math.sqrt(spec.n))).astype(np.float32)
    lay = spec.layout
    u = np.empty(spec.padded, np.float32)
    K.unrotate(acc, spec.padded, lay.starts, lay.sizes, rng.sign_keys(spec.seed, lay.chunks), u)
    v = np.empty(spec.padded, np.float32)
    v[rng.permutation(spec.seed, spec.padded)] = u
    return v[: spec.d].copy()


def packed_bytes(n: int, bits: int) -> int:
    """Bytes of n packed m-bit words."""
    return -(-n * bits // 8)


def pack(words: np.ndarray, bits: int) -> bytes:
    """n words (values below 2**m) as ceil(n m / 8) bytes, LSB first (module docstring)."""
    dt = word_dtype(bits)
    w = np.ascontiguousarray(words, dtype=dt.newbyteorder("<"))
    if bits == 8 * dt.itemsize:
        return w.tobytes()
    bits_all = np.unpackbits(w.view(np.uint8).reshape(-1, dt.itemsize), axis=1,
                             bitorder="little")[:, :bits]
    return np.packbits(bits_all.ravel(), bitorder="little").tobytes()


def unpack(data: bytes | memoryview, bits: int, n: int) -> np.ndarray:
    """The n m-bit words of ``pack``; DecodeError for a wrong length or non-zero padding."""
    dt = word_dtype(bits)
    if len(data) != packed_bytes(n, bits):
        raise DecodeError(f"{n} words of {bits} bits take {packed_bytes(n, bits)} bytes, "
                          f"got {len(data)}")
    raw = np.frombuffer(data, np.uint8)
    if bits == 8 * dt.itemsize:
        return raw.view(dt.newbyteorder("<")).astype(dt)
    flat = np.unpackbits(raw, bitorder="little")
    if flat[n * bits:].any():
        raise DecodeError("non-zero padding bits after the last word")
    cols = np.zeros((n, 8 * dt.itemsize), np.uint8)
    cols[:, :bits] = flat[: n * bits].reshape(n, bits)
    return np.packbits(cols, axis=1, bitorder="little").reshape(-1).view(
        dt.newbyteorder("<")).astype(dt)
