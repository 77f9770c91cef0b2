"""Fuzz every registered method with hostile blobs: ``fedhd.decode``, ``fedhd.Aggregator``
and one ``CompressedFedAvg`` round.

    python -m benchmarks.fuzz_blobs --blobs 100000 --seed 0 [--json out.json]
    python -m benchmarks.fuzz_blobs --seed 0 --replay 1234     # one mutant, in detail

CRC-32 is not authentication: a hostile client can edit any field of its blob and re-seal
it. Each mutant starts from an honest blob (every registered method at a couple of rates
and three lengths, chunk 2**10 so that there are several chunks) and gets one mutation:
bit flips, random bytes or special values (inf, NaN, negative, 3e38, ...) in the per-chunk
fields and sub-headers that ``FIELDS`` locates, header fields at extremes, truncation,
extension, or a combination; most are re-sealed with a correct CRC (``reseal``). Every
mutant goes through

- ``fedhd.decode``: only ``fedhd.DecodeError`` may escape; an accepted blob decodes to a
  finite float32 vector with max |x_i| <= FLT_MAX / d (d of them cannot overflow a float32
  sum);
  under 1 s (timed twice before it counts), and under 64 MiB of tracemalloc-tracked
  allocation (numpy's; numba's own allocations are not tracked);
- ``fedhd.Aggregator``: 3 honest blobs plus the mutant at a random position; a refused
  ``add`` (ValueError) must leave the mean of the other three bit for bit unchanged, an
  accepted one must give a finite mean;
- one round of ``CompressedFedAvg`` with 3 honest replies and the hostile one: the new
  global arrays must be finite; if the hostile reply was dropped they must equal the round
  without it, if it was accepted the hostile reply's own (decoded, possibly clipped)
  update must have a norm within ``OUTSIZED`` times the largest honest update norm, the
  bound passed as ``max_update_norm`` where the strategy has it.

``--strategy-every N`` / ``--mem-every N`` restrict the last two checks to every N-th
mutant (default: all; the whole run costs about 1 ms a mutant on one core).
Mutant ``i`` of seed ``s`` depends on (s, i) only, so ``--replay i`` rebuilds it exactly.
The exit code is 1 when anything failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import re
import struct
import sys
import time
import tracemalloc
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

import fedhd
from fedhd.layout import make_layout

# --- the wire, as README "Wire format" describes it -----------------------------------------
HEADER_BYTES = 31
CRC_OFFSET = 27  # u32 CRC-32 of header bytes 0..26, then the payload
EC_INNER_CRC = HEADER_BYTES + 1  # hd-dither-ec: u32 after its 1-byte coder format field
#: (name, offset, struct format) of the common header's fields
HEADER_FIELDS = (
    ("magic", 0, "2s"), ("version", 2, "<B"), ("method_id", 3, "<B"), ("bits_x16", 4, "<H"),
    ("log2_chunk", 6, "<B"), ("d", 7, "<I"), ("seed", 11, "<Q"), ("dither_seed", 19, "<Q"),
)

FLT_MAX = float(np.finfo(np.float32).max)
TIME_LIMIT_S = 1.0
MEMORY_LIMIT = 64 << 20
#: The strategy's bound on one reply's update norm (``max_update_norm`` where it has one):
#: this many times the largest honest decoded update norm of the round. An accepted hostile
#: reply whose own decoded (possibly clipped) update exceeds it is a failure.
OUTSIZED = 10.0

LENGTHS = (100, 1000, 5000)
LOG2_CHUNK = 10
STRATEGY_SEED = 5  # CompressedFedAvg(seed=...); round 1's rotation seed is derived from it
GOOD_WEIGHTS = (1.0, 2.0, 3.0)
HOSTILE_WEIGHT = 1.5
#: Bit rates fuzzed per method; a method missing here gets the first rate it accepts of
#: FALLBACK_BITS.
BITS: dict[str, tuple[float, ...]] = {
    "identity": (32,), "fp16": (16,), "drive": (1,),
    "hd-dither": (1, 3), "eden": (2, 4), "turboquant": (1, 3), "hd-sr": (2, 4),
    "qsgd": (1, 4), "hd-dither-ec": (1.0, 2.5), "topk": (4.0, 16.0),
}
FALLBACK_BITS = (2, 4, 1, 8, 16, 32, 2.0)


# --- where each method keeps its fields --------------------------------------------------------
@dataclass(frozen=True)
class Field:
    """One field of a payload: ``kind`` f32 / f16 / u32 / u8 (one element at each offset)
    or bytes (a region, one offset per byte)."""

    name: str
    kind: str
    offsets: np.ndarray  # blob offsets of its elements


def _f(name: str, kind: str, start: int, count: int, stride: int) -> Field:
    return Field(name, kind, start + stride * np.arange(max(count, 0), dtype=np.int64))


def _region(name: str, start: int, stop: int) -> Field:
    return Field(name, "bytes", np.arange(start, max(start, stop), dtype=np.int64))


def _scaled(name: str, head: int = 4) -> Callable[[int, int, int], list[Field]]:
    """C float32 per-chunk fields (``head`` bytes a chunk), then the packed codes."""
    def fields(d: int, C: int, n: int) -> list[Field]:
        H = HEADER_BYTES
        out = [_f(name, "f32", H, C, head)] if head == 4 else [
            _f("lo", "f32", H, C, 8), _f("step", "f32", H + 4, C, 8)]
        return [*out, _region("codes", H + head * C, n)]
    return fields


def _ec_fields(d: int, C: int, n: int) -> list[Field]:
    """hd-dither-ec: u8 coder format, u32 inner CRC (or reserved zeros), f32 scales, f32
    steps, u32 stream word counts, u8 models + zero padding to 4 bytes, u32 stream words."""
    p = HEADER_BYTES + 5
    T = 12 * C + 4 * -(-C // 4)
    return [
        _f("format", "u8", HEADER_BYTES, 1, 1), _f("inner-crc", "u32", HEADER_BYTES + 1, 1, 4),
        _f("scale", "f32", p, C, 4), _f("step", "f32", p + 4 * C, C, 4),
        _f("count", "u32", p + 8 * C, C, 4), _f("model", "u8", p + 12 * C, C, 1),
        _region("table-pad", p + 13 * C, p + T), _f("word", "u32", p + T, (n - p - T) // 4, 4),
    ]


def _topk_fields(d: int, C: int, n: int) -> list[Field]:
    """topk: k indices of bit_length(d - 1) bits each (packed), then k float32 values."""
    w = max(1, (d - 1).bit_length())
    payload = n - HEADER_BYTES
    k = payload * 8 // (w + 32) + 2
    while k > 0 and (k * w + 7) // 8 + 4 * k > payload:
        k -= 1
    ib = (k * w + 7) // 8
    return [_region("indices", HEADER_BYTES, HEADER_BYTES + ib),
            _f("value", "f32", HEADER_BYTES + ib, k, 4)]


def _powersgd_fields(blob: bytes) -> list[Field]:
    """powersgd: u32 V, V x (u32 offset, rows, cols), raw float32 coordinates, then the
    float32 factors P and Q of each view (read from the honest blob)."""
    H = HEADER_BYTES
    d = fedhd.header(blob).d
    (V,) = struct.unpack_from("<I", blob, H)
    views = np.frombuffer(blob, "<u4", 3 * V, H + 4).reshape(V, 3).astype(np.int64)
    raw = d - int((views[:, 1] * views[:, 2]).sum())
    start = H + 4 + 12 * V
    return [_f("views", "u32", H, 1, 4), _f("view-table", "u32", H + 4, 3 * V, 4),
            _f("value", "f32", start, raw, 4),
            _f("factor", "f32", start + 4 * raw, (len(blob) - start - 4 * raw) // 4, 4)]


#: methods whose fields depend on the blob's own sub-header: blob -> its payload fields
BLOB_FIELDS: dict[str, Callable[[bytes], list[Field]]] = {"powersgd": _powersgd_fields}

#: method -> (d, chunks, blob length) -> its payload fields (each method's docstring)
FIELDS: dict[str, Callable[[int, int, int], list[Field]]] = {
    "identity": lambda d, C, n: [_f("value", "f32", HEADER_BYTES, d, 4)],
    "fp16": lambda d, C, n: [_f("value", "f16", HEADER_BYTES, d, 2)],
    "hd-dither": _scaled("scale"),
    "eden": _scaled("scale"),
    "drive": _scaled("scale"),
    "turboquant": _scaled("norm"),
    "qsgd": _scaled("norm"),
    "hd-sr": _scaled("lo/step", head=8),
    "hd-dither-ec": _ec_fields,
    "topk": _topk_fields,
    "scaled-sign": _scaled("scale"),
}


def fields_of(method: str, blob: bytes) -> list[Field]:
    """The payload fields of an honest blob of ``method`` (none for an unknown method)."""
    h = fedhd.header(blob)
    layout = make_layout(h.d, h.log2_chunk)
    if method in BLOB_FIELDS:
        found = BLOB_FIELDS[method](bytes(blob))
    else:
        fn = FIELDS.get(method)
        found = fn(h.d, layout.chunks, len(blob)) if fn else []
    return [f for f in found if f.offsets.size]


def field_offset(method: str, blob: bytes, name: str, index: int = 0) -> int:
    """Blob offset of element ``index`` of field ``name``."""
    for f in fields_of(method, blob):
        if f.name == name:
            return int(f.offsets[index])
    raise KeyError(f"{method} has no field {name!r}")


# --- re-sealing ----------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _ec_inner_crc() -> tuple[int, bool]:
    """(method id of hd-dither-ec, whether its payload bytes 1..4 hold the inner CRC of
    the header rather than reserved zeros), from an honest blob."""
    if "hd-dither-ec" not in fedhd.methods():
        return -1, False
    blob = fedhd.encode(np.linspace(-1, 1, 64, dtype=np.float32), method="hd-dither-ec")
    inner = struct.unpack_from("<I", blob, EC_INNER_CRC)[0]
    return fedhd.header(blob).method_id, inner == zlib.crc32(blob[:CRC_OFFSET])


def reseal(blob: bytes | bytearray, inner_crc: bool | None = None) -> bytes:
    """``blob`` with a correct CRC-32 at offset 27 (header bytes 0..26, then the payload).

    hd-dither-ec blobs (by their method id byte) also get the inner CRC of header bytes
    0..26 at payload offset 1..4, when that format has one; ``inner_crc=False`` leaves those
    bytes as they are (a mutation of them), True forces it."""
    buf = bytearray(blob)
    if len(buf) < HEADER_BYTES:
        return bytes(buf)
    if inner_crc is None:
        ec_id, has_inner = _ec_inner_crc()
        inner_crc = has_inner and buf[3] == ec_id
    if inner_crc and len(buf) >= EC_INNER_CRC + 4:
        struct.pack_into("<I", buf, EC_INNER_CRC, zlib.crc32(bytes(buf[:CRC_OFFSET])))
    crc = zlib.crc32(bytes(buf[HEADER_BYTES:]), zlib.crc32(bytes(buf[:CRC_OFFSET])))
    struct.pack_into("<I", buf, CRC_OFFSET, crc)
    return bytes(buf)


def set_field(blob: bytes, offset: int, kind: str, value: float | int,
              inner_crc: bool | None = None) -> bytes:
    """``blob`` with the element at ``offset`` set to ``value``, re-sealed."""
    buf = bytearray(blob)
    _put(buf, offset, kind, value)
    return reseal(buf, inner_crc)


_FMT = {"f32": "<f", "f16": "<e", "u32": "<I", "u8": "<B", "u16": "<H", "u64": "<Q"}
_SIZE = {"f32": 4, "f16": 2, "u32": 4, "u8": 1, "bytes": 1}
_RAW = {"f32": "<I", "f16": "<H"}


def _put(buf: bytearray, offset: int, kind: str, value: float | int) -> None:
    struct.pack_into(_FMT[kind], buf, offset, value)


def _f32_bits(v: float) -> int:
    return int(np.float32(v).view(np.uint32))


def _f16_bits(v: float) -> int:
    return int(np.float16(v).view(np.uint16))


#: float specials as raw bit patterns (NaN payloads and -0 survive that way)
F32_SPECIALS: dict[str, int] = {
    "inf": 0x7F800000, "-inf": 0xFF800000, "nan": 0x7FC00000, "snan": 0x7F800001,
    "-nan": 0xFFFFFFFF, "-0": 0x80000000, "0": 0, "-1": _f32_bits(-1.0),
    "-1e-30": _f32_bits(-1e-30), "3e38": _f32_bits(3e38), "-3e38": _f32_bits(-3e38),
    "FLT_MAX": 0x7F7FFFFF, "1e30": _f32_bits(1e30), "1e20": _f32_bits(1e20),
    "2**100": _f32_bits(2.0**100), "2**64": _f32_bits(2.0**64), "1e10": _f32_bits(1e10),
    "1e5": _f32_bits(1e5), "denormal": 1, "FLT_MIN": 0x00800000,
}
F16_SPECIALS: dict[str, int] = {
    "inf": 0x7C00, "-inf": 0xFC00, "nan": 0x7E00, "snan": 0x7C01, "-nan": 0xFFFF,
    "65504": _f16_bits(65504.0), "-65504": _f16_bits(-65504.0), "-0": 0x8000, "denormal": 1,
}
INT_SPECIALS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 20)
U8_SPECIALS = (0, 1, 2, 3, 4, 127, 128, 255)


# --- the honest blobs ----------------------------------------------------------------------------
@dataclass
class Base:
    """An honest configuration: 3 good client blobs and the 4th client's, which is mutated."""

    method: str
    bits: float
    d: int
    seed: int
    good: list[bytes]
    target: bytes
    fields: list[Field]
    good_mean: np.ndarray  # Aggregator mean of the 3 good blobs, added in order
    honest_norm: float  # largest norm of the 4 honest decoded updates
    strategy: Any = None  # a StrategyRound, built on first use

    @property
    def name(self) -> str:
        return f"{self.method} b={self.bits:g} d={self.d}"

    def aggregator(self) -> fedhd.Aggregator:
        return fedhd.Aggregator(self.d, seed=self.seed, method=self.method, bits=self.bits)


def _bits_for(method: str) -> tuple[float, ...]:
    if method in BITS:
        return BITS[method]
    x = np.ones(64, np.float32)
    for b in FALLBACK_BITS:
        try:
            fedhd.encode(x, bits=b, method=method)
            return (b,)
        except (ValueError, TypeError):
            continue
    raise RuntimeError(f"no bit rate of {FALLBACK_BITS} encodes with {method}")


def make_base(method: str, bits: float, d: int) -> Base:
    """3 good blobs and a 4th honest one of (method, bits, d), from fixed seeds, with the
    rotation seed of round 1 of ``CompressedFedAvg(seed=STRATEGY_SEED)``."""
    seed = fedhd.derive_seed(STRATEGY_SEED, 1)
    rng = np.random.default_rng([zlib.crc32(method.encode()), round(bits * 16), d])
    xs = [(0.01 * rng.standard_normal(d)).astype(np.float32) for _ in range(4)]
    if method in ("topk", "identity"):
        xs[3][rng.integers(d)] = 0.5  # one large coordinate
    blobs = [fedhd.encode(x, bits=bits, seed=seed, method=method, dither_seed=100 + j,
                          log2_chunk=LOG2_CHUNK) for j, x in enumerate(xs)]
    for blob in blobs:
        if reseal(blob) != blob:
            raise RuntimeError(f"reseal() does not reproduce the CRC of a {method} blob")
    agg = fedhd.Aggregator(d, seed=seed, method=method, bits=bits)
    for blob, w in zip(blobs[:3], GOOD_WEIGHTS):
        agg.add(blob, w)
    norms = [float(np.linalg.norm(fedhd.decode(blob).astype(np.float64))) for blob in blobs]
    return Base(method, bits, d, seed, blobs[:3], blobs[3], fields_of(method, blobs[3]),
                agg.mean(), max(norms))


def build_bases(methods: Sequence[str] | None = None) -> list[Base]:
    """Every (method, bits, d) configuration (this also warms up the JIT)."""
    names = list(methods) if methods else fedhd.methods()
    unknown = sorted(set(names) - set(fedhd.methods()))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; registered: {fedhd.methods()}")
    return [make_base(m, b, d) for m in names for b in _bits_for(m) for d in LENGTHS]


# --- mutators -----------------------------------------------------------------------------------
@dataclass
class Mutant:
    blob: bytes
    desc: list[str] = field(default_factory=list)


class _Edit:
    """A mutation in progress: the buffer, what was done, how to seal it."""

    def __init__(self, blob: bytes, base: Base):
        self.buf = bytearray(blob)
        self.base = base
        self.desc: list[str] = []
        self.seal = True
        self.inner: bool | None = None

    def value_fields(self) -> list[Field]:
        return [f for f in self.base.fields if f.kind != "bytes"]


def _pick_element(rng: random.Random, f: Field) -> tuple[int, str]:
    i = rng.choice((0, f.offsets.size - 1, rng.randrange(f.offsets.size)))
    return i, f"{f.name}[{i}] ({f.kind} @ {int(f.offsets[i])})"


def _special(rng: random.Random, kind: str, old: int) -> tuple[int, str]:
    """(raw value, label) of a special value of a field of this kind."""
    if kind == "f32":
        label = rng.choice(list(F32_SPECIALS))
        return F32_SPECIALS[label], label
    if kind == "f16":
        label = rng.choice(list(F16_SPECIALS))
        return F16_SPECIALS[label], label
    if kind == "u8":
        v = rng.choice(U8_SPECIALS)
        return v, str(v)
    v = rng.choice((*INT_SPECIALS, old + 1, max(old - 1, 0), min(2 * old, 0xFFFFFFFF),
                    rng.getrandbits(32)))
    return v, str(v)


def _read(buf: bytearray, off: int, kind: str) -> int:
    return struct.unpack_from(_RAW.get(kind, _FMT[kind]), buf, off)[0]


def _write_raw(buf: bytearray, off: int, kind: str, raw: int) -> None:
    struct.pack_into(_RAW.get(kind, _FMT[kind]), buf, off, raw)


def m_field_special(rng: random.Random, e: _Edit) -> None:
    """A per-chunk / per-value field (or all of its elements) set to a special value."""
    fs = e.value_fields()
    if not fs:
        return m_header_extreme(rng, e)
    f = rng.choice(fs)
    i, where = _pick_element(rng, f)
    raw, label = _special(rng, f.kind, _read(e.buf, int(f.offsets[i]), f.kind))
    if rng.random() < 0.2:
        for off in f.offsets:
            _write_raw(e.buf, int(off), f.kind, raw)
        where = f"every {f.name} ({f.offsets.size} x {f.kind} from @ {int(f.offsets[0])})"
    else:
        _write_raw(e.buf, int(f.offsets[i]), f.kind, raw)
    if f.name in ("inner-crc", "format"):
        e.inner = False
    e.desc.append(f"{where} := {label}")


def m_field_random(rng: random.Random, e: _Edit) -> None:
    """Random bytes in one element of a per-chunk field or sub-header."""
    fs = e.value_fields()
    if not fs:
        return m_codes_random(rng, e)
    f = rng.choice(fs)
    i, where = _pick_element(rng, f)
    off, n = int(f.offsets[i]), _SIZE[f.kind]
    e.buf[off:off + n] = rng.randbytes(n)
    if f.name in ("inner-crc", "format"):
        e.inner = False
    e.desc.append(f"{where} := 0x{e.buf[off:off + n].hex()} (bytes)")


def m_field_bitflip(rng: random.Random, e: _Edit) -> None:
    """One bit of one element of a field flipped (sign, exponent, mantissa of a float)."""
    fs = e.value_fields()
    if not fs:
        return m_bitflip(rng, e)
    f = rng.choice(fs)
    i, where = _pick_element(rng, f)
    bit = rng.randrange(8 * _SIZE[f.kind])
    off = int(f.offsets[i]) + bit // 8
    e.buf[off] ^= 1 << (bit % 8)
    if f.name in ("inner-crc", "format"):
        e.inner = False
    e.desc.append(f"{where} bit {bit} flipped")


def m_bitflip(rng: random.Random, e: _Edit) -> None:
    """1..8 random bit flips anywhere; a quarter keep the now stale CRC."""
    k = rng.choice((1, 1, 2, 3, 8))
    flips = []
    for _ in range(k):
        pos = rng.randrange(8 * len(e.buf))
        e.buf[pos // 8] ^= 1 << (pos % 8)
        flips.append(f"{pos // 8}.{pos % 8}")
    e.seal = rng.random() < 0.75
    e.inner = False  # the flips may be in the inner CRC itself
    e.desc.append(f"bits flipped at byte.bit {','.join(flips)}")


def _header_values(name: str, old: Any, base: Base) -> list[Any]:
    if name == "magic":
        return [b"HF", b"\0\0", b"FI"]
    if name == "version":
        return [0, 2, 255]
    if name == "method_id":
        return [*range(12), 127, 255]
    if name == "bits_x16":
        return [0, 1, 8, 15, 16, 17, 24, 32, 40, 48, 64, 128, 129, 256, 512, 1024, 65535,
                old - 1, old + 1, 2 * old]
    if name == "log2_chunk":
        return [0, 4, 5, 6, 9, 11, 16, 24, 25, 31, 255]
    if name == "d":
        return [0, 1, 2, 31, 32, 33, old - 1, old + 1, 2 * old, old // 2, 1 << 20,
                (1 << 31) - 1, 1 << 31, (1 << 32) - 1]
    return [0, 1, old ^ 1, 1 << 63, (1 << 64) - 1]  # seeds


def m_header_extreme(rng: random.Random, e: _Edit) -> None:
    """One common-header field set to an extreme or neighbouring value."""
    name, off, fmt = rng.choice(HEADER_FIELDS)
    old = struct.unpack_from(fmt, e.buf, off)[0]
    vals = [v for v in _header_values(name, old, e.base) if v != old and (
        isinstance(v, bytes) or 0 <= v < 1 << (8 * struct.calcsize(fmt)))]
    v = rng.choice(vals)
    struct.pack_into(fmt, e.buf, off, v)
    e.desc.append(f"header {name} (@ {off}) {old!r} := {v!r}")


def m_header_random(rng: random.Random, e: _Edit) -> None:
    """1..4 random bytes of header bytes 2..26."""
    pos = sorted(rng.sample(range(2, CRC_OFFSET), rng.randint(1, 4)))
    for p in pos:
        e.buf[p] = rng.randrange(256)
    e.desc.append("header bytes " + ",".join(f"{p}:=0x{e.buf[p]:02x}" for p in pos))


def m_truncate(rng: random.Random, e: _Edit) -> None:
    """Cut to a shorter length (re-sealed when a header remains, mostly)."""
    n = len(e.buf)
    new = rng.choice((0, rng.randrange(1, HEADER_BYTES), HEADER_BYTES,
                      rng.randrange(HEADER_BYTES, n), n - 1, max(n - 4, 0), n // 2))
    del e.buf[new:]
    e.seal = rng.random() < 0.8
    e.desc.append(f"truncated {n} -> {new} bytes")


def m_extend(rng: random.Random, e: _Edit) -> None:
    """Bytes appended (zeros, random, or the blob again)."""
    n = len(e.buf)
    k = rng.choice((1, 3, 4, 8, rng.randint(1, 64), n))
    how = rng.choice(("zeros", "random", "copy"))
    tail = bytes(k) if how == "zeros" else rng.randbytes(k) if how == "random" else (
        bytes(e.buf) * (k // n + 1))[:k]
    e.buf += tail
    e.seal = rng.random() < 0.8
    e.desc.append(f"extended {n} -> {n + k} bytes ({how})")


def m_codes_random(rng: random.Random, e: _Edit) -> None:
    """Random bytes in the codes / streams / indices, or anywhere in the payload."""
    regions = [f for f in e.base.fields if f.kind == "bytes" or f.name == "word"]
    if regions:
        f = rng.choice(regions)
        lo, hi = int(f.offsets[0]), int(f.offsets[-1]) + _SIZE[f.kind]
    else:
        f, lo, hi = None, HEADER_BYTES, len(e.buf)
    if hi <= lo:
        return m_bitflip(rng, e)
    if rng.random() < 0.2:
        a, b = lo, hi
    else:
        a = rng.randrange(lo, hi)
        b = min(hi, a + rng.randint(1, 16))
    e.buf[a:b] = rng.randbytes(b - a)
    e.desc.append(f"random bytes @ {a}..{b - 1} ({f.name if f else 'payload'})")


def m_ec_stream(rng: random.Random, e: _Edit) -> None:
    """hd-dither-ec: a chunk's stream word count changed by -4..+64 with words inserted or
    removed so that the length stays consistent (gets past the length check into the
    rANS decoder); other methods: a field special."""
    by = {f.name: f for f in e.base.fields}
    if "count" not in by or "word" not in by:
        return m_field_special(rng, e)
    C = by["count"].offsets.size
    c = rng.randrange(C)
    counts = [_read(e.buf, int(o), "u32") for o in by["count"].offsets]
    delta = rng.choice((-4, -1, 1, 2, 8, 64, -counts[c]))
    delta = max(delta, -counts[c])
    end = int(by["word"].offsets[0]) + 4 * sum(counts[:c + 1])
    if delta > 0:
        fill = rng.choice(("zeros", "random", "0xff"))
        words = bytes(4 * delta) if fill == "zeros" else rng.randbytes(4 * delta) if (
            fill == "random") else b"\xff" * (4 * delta)
        e.buf[end:end] = words
    else:
        fill = "removed"
        del e.buf[end + 4 * delta:end]
    _put(e.buf, int(by["count"].offsets[c]), "u32", counts[c] + delta)
    e.desc.append(f"count[{c}] (u32 @ {int(by['count'].offsets[c])}) {counts[c]} -> "
                  f"{counts[c] + delta}, {abs(delta)} words {fill} at @ {end}")


_IMPLIED = re.compile(r"(?:implies|at least) (\d+)")


def m_header_resized(rng: random.Random, e: _Edit) -> None:
    """d, bits or log2_chunk changed, then the blob cut or padded (zeros, random bytes or
    its own bytes) to the length the decoder says that header implies, so the payload is
    decoded under a header it was not written for (the length comes from the DecodeError
    message; without one this is a plain header mutation)."""
    name, off, fmt = rng.choice([f for f in HEADER_FIELDS if f[0] in
                                 ("d", "bits_x16", "log2_chunk")])
    old = struct.unpack_from(fmt, e.buf, off)[0]
    if name == "d":
        new = rng.choice((1, 2, 31, 33, old - 1, old + 1, old // 2, 2 * old, old + 32,
                          rng.randint(1, 4 * old)))
    elif name == "bits_x16":
        new = rng.choice((8, 16, 32, 48, 64, 128, 256, 1024, old - 1, old + 1, old + 16,
                          max(old - 16, 1), rng.randint(1, 1024)))
    else:
        new = rng.choice((5, 6, 7, 8, 9, 11, 12, 16, 24))
    if new == old or not 0 <= new < 1 << (8 * struct.calcsize(fmt)):
        new = old + 1
    struct.pack_into(fmt, e.buf, off, new)
    fill = rng.choice(("zeros", "random", "self"))
    sizes = []
    for _ in range(3):
        try:
            fedhd.decode(reseal(e.buf, e.inner))
            break
        except Exception as exc:
            m = _IMPLIED.search(str(exc))
            if not m or int(m.group(1)) > 1 << 20 or int(m.group(1)) == len(e.buf):
                break
        n = int(m.group(1))
        if n < len(e.buf):
            del e.buf[max(n, HEADER_BYTES):]
        else:
            k = n - len(e.buf)
            e.buf += bytes(k) if fill == "zeros" else rng.randbytes(k) if fill == "random" else (
                bytes(e.buf[HEADER_BYTES:]) * (k // max(len(e.buf) - HEADER_BYTES, 1) + 1))[:k]
        sizes.append(str(len(e.buf)))
    e.desc.append(f"header {name} (@ {off}) {old} := {new}, resized to "
                  f"{' -> '.join(sizes) or 'unchanged'} bytes ({fill})")


def m_stated_norm(rng: random.Random, e: _Edit) -> None:
    """A chunk's scale / norm set to 0.5..9.9 times the largest honest update norm and all
    its codes to one byte (e.g. every code the largest): the decoded update then exceeds
    the norm the blob states (what ``max_update_norm`` may check) by the codebook's
    extreme over its RMS."""
    by = {f.name: f for f in e.base.fields}
    scale = next((by[n] for n in ("scale", "norm") if n in by), None)
    if scale is None or "codes" not in by:
        return m_field_special(rng, e)
    h = fedhd.header(e.base.target)
    layout = make_layout(h.d, h.log2_chunk)
    b = int(h.bits)
    c = rng.randrange(layout.chunks)
    start = int(by["codes"].offsets[0]) + int(layout.starts[c]) * b // 8
    n = int(layout.sizes[c]) * b // 8
    fill = rng.choice((0xFF, 0xEE, 0x00, 0x55, 0xAA, 0x77, rng.randrange(256)))
    e.buf[start:start + n] = bytes([fill]) * n
    factor = rng.choice((0.5, 1.0, 2.0, 5.0, 9.9))
    off = int(scale.offsets[c])
    _put(e.buf, off, "f32", factor * e.base.honest_norm)
    e.desc.append(f"{scale.name}[{c}] (f32 @ {off}) := {factor:g} x honest norm "
                  f"{e.base.honest_norm:.4g}, its codes @ {start}..{start + n - 1} := 0x{fill:02x}")


def m_multi(rng: random.Random, e: _Edit) -> None:
    """Two or three of the field / header / code mutations together."""
    chosen = rng.sample(_COMBINABLE, rng.randint(2, 3))
    for m in sorted(chosen, key=lambda m: m is m_ec_stream):  # it moves the fields after it
        m(rng, e)


_COMBINABLE = [m_field_special, m_field_random, m_field_bitflip, m_header_extreme,
               m_codes_random, m_ec_stream]
MUTATORS: dict[str, Callable[[random.Random, _Edit], None]] = {
    "field-special": m_field_special, "field-random": m_field_random,
    "field-bitflip": m_field_bitflip, "bitflip": m_bitflip,
    "header-extreme": m_header_extreme, "header-random": m_header_random,
    "truncate": m_truncate, "extend": m_extend, "codes-random": m_codes_random,
    "header-resized": m_header_resized, "stated-norm": m_stated_norm,
    "ec-stream": m_ec_stream, "multi": m_multi,
}


def mutators_for(base: Base) -> list[str]:
    """The mutators that apply to a base (``ec-stream`` needs stream word counts,
    ``stated-norm`` a per-chunk scale or norm before the codes)."""
    has = {f.name for f in base.fields}
    skip = set()
    if not {"count", "word"} <= has:
        skip.add("ec-stream")
    if "codes" not in has or not has & {"scale", "norm"}:
        skip.add("stated-norm")
    return [m for m in MUTATORS if m not in skip]


def mutant_rng(seed: int, index: int) -> random.Random:
    return random.Random(seed * 0x1_0000_0001 + index)


def make_mutant(bases: Sequence[Base], seed: int, index: int) -> tuple[Base, str, Mutant,
                                                                         random.Random]:
    """Mutant ``index``: base and mutator round-robin, the mutation from (seed, index)."""
    base = bases[index % len(bases)]
    names = mutators_for(base)
    mname = names[(index // len(bases)) % len(names)]
    rng = mutant_rng(seed, index)
    e = _Edit(base.target, base)
    MUTATORS[mname](rng, e)
    blob = reseal(e.buf, e.inner) if e.seal else bytes(e.buf)
    desc = [*e.desc, "re-sealed" if e.seal else "stale CRC"]
    return base, mname, Mutant(blob, desc), rng


# --- checks --------------------------------------------------------------------------------------
@dataclass
class Failure:
    kind: str
    detail: str


def _huge(x: np.ndarray) -> bool:
    """Whether d copies of the largest |x_i| overflow a float32 sum (the bound decoders must
    enforce, so that no aggregate of the decoded coordinates can overflow)."""
    return float(np.abs(x).max(initial=0.0)) * x.size > FLT_MAX


def check_decode(blob: bytes, memory: bool) -> tuple[str, list[Failure], float]:
    """('rejected' | 'accepted' | 'error', failures, max |x| when accepted)."""
    fails: list[Failure] = []
    peak = 0
    for attempt in range(2):
        t0 = time.perf_counter()
        status, x = "accepted", None
        try:
            x = fedhd.decode(blob)
        except fedhd.DecodeError:
            status = "rejected"
        except Exception as exc:
            status = "error"
            fails.append(Failure("decode-exception", _short(exc)))
        dt = time.perf_counter() - t0
        if dt <= TIME_LIMIT_S:
            break
        if attempt == 1:
            fails.append(Failure("decode-slow", f"{dt:.2f} s ({status})"))
        elif status == "error":
            fails.clear()
    if memory:
        tracemalloc.start()
        try:
            fedhd.decode(blob)
        except Exception:
            pass
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if peak > MEMORY_LIMIT:
            fails.append(Failure("decode-memory", f"peak {peak / 2**20:.1f} MiB"))
    big = 0.0
    if x is not None:
        if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 1):
            fails.append(Failure("decode-badtype", f"{type(x).__name__} {getattr(x, 'dtype', '')}"))
        elif not np.isfinite(x).all():
            fails.append(Failure("decode-nonfinite", _nonfinite(x)))
        else:
            big = float(np.abs(x).max(initial=0.0))
            if _huge(x):
                fails.append(Failure("decode-huge", f"max |x| {big:.3g} > FLT_MAX / d = "
                                     f"{FLT_MAX / x.size:.3g}"))
    return status, fails, big


def check_aggregator(base: Base, blob: bytes, pos: int) -> tuple[str, list[Failure]]:
    """3 good blobs + the mutant at position ``pos``: ('rejected' | 'accepted' | 'error')."""
    agg = base.aggregator()
    good = iter(zip(base.good, GOOD_WEIGHTS))
    status = "accepted"
    fails: list[Failure] = []
    for j in range(4):
        if j == pos:
            try:
                agg.add(blob, HOSTILE_WEIGHT)
            except ValueError:
                status = "rejected"
            except Exception as exc:
                return "error", [Failure("agg-add-exception", _short(exc))]
        else:
            g, w = next(good)
            try:
                agg.add(g, w)
            except Exception as exc:
                return "error", [Failure("agg-good-refused", f"after the mutant: {_short(exc)}")]
    try:
        mean = agg.mean()
    except ValueError as exc:
        if status == "rejected":
            fails.append(Failure("agg-changed", f"mean() of the 3 good raised {_short(exc)}"))
        return status, fails
    except Exception as exc:
        return "error", [Failure("agg-mean-exception", _short(exc))]
    if status == "rejected":
        if not np.array_equal(mean, base.good_mean):
            diff = np.abs(mean.astype(np.float64) - base.good_mean)
            worst = np.nanmax(diff) if np.isfinite(diff).any() else "nan"
            fails.append(Failure("agg-changed", f"refused add changed the sum: max |diff| {worst}"))
    elif not np.isfinite(mean).all():
        fails.append(Failure("agg-nonfinite", _nonfinite(mean)))
    return status, fails


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:160]}"


def _nonfinite(x: np.ndarray) -> str:
    bad = ~np.isfinite(x)
    i = int(np.flatnonzero(bad)[0])
    return f"{int(bad.sum())} of {x.size} non-finite, first x[{i}] = {x[i]}"


class StrategyRound:
    """One configured round of ``CompressedFedAvg`` over a zero global model ``w`` of length
    d, with 3 good replies ready and the round's result without a 4th."""

    def __init__(self, base: Base):
        from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
        from flwr.clientapp import ClientApp

        from benchmarks.localgrid import LocalGrid, transport
        from strategies import CompressedFedAvg
        from strategies import constants as C

        self._types = (Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict, C)
        self.limit = OUTSIZED * base.honest_norm
        # the newest keyword arguments first (a strategy without them raises TypeError)
        for extra in ({"max_update_norm": self.limit, "wire_accounting": False},
                      {"max_update_norm": self.limit}, {"wire_accounting": False}, {}):
            try:
                self.strategy = CompressedFedAvg(method=base.method, bits=base.bits,
                                                 seed=STRATEGY_SEED, log2_chunk=LOG2_CHUNK,
                                                 **extra)
                break
            except TypeError:
                continue
        self.bounded = "max_update_norm" in extra
        grid = LocalGrid(ClientApp(), 4)
        self.global_w = np.zeros(base.d, np.float32)
        messages = self.strategy.configure_train(
            1, ArrayRecord({"w": Array(self.global_w)}), ConfigRecord({}), grid)
        self.instructions = sorted((transport(m) for m in messages),
                                   key=lambda m: grid.node_ids.index(m.metadata.dst_node_id))
        if len(self.instructions) != 4:
            raise RuntimeError(f"configure_train sent {len(self.instructions)} messages, not 4")
        self.good = [self.reply(j, blob) for j, blob in enumerate(base.good)]
        arrays, _ = self.strategy.aggregate_train(1, self.good)
        if arrays is None:
            raise RuntimeError(f"{base.name}: the 3 honest replies gave no arrays")
        self.baseline = arrays["w"].numpy()

    def reply(self, j: int, blob: bytes) -> Any:
        Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict, C = self._types
        content = RecordDict({
            "arrays": ArrayRecord({C.BLOB_KEY: Array(C.BLOB_DTYPE, (len(blob),), C.BLOB_STYPE,
                                                     blob)}),
            C.REPLY_RECORD: ConfigRecord({C.KEY_FORMAT: C.FORMAT_VERSION,
                                          C.KEY_FLOAT_KEYS: ["w"]}),
            "metrics": MetricRecord({"num-examples": 10}),
        })
        return Message(content, reply_to=self.instructions[j])

    def check(self, blob: bytes) -> tuple[str, list[Failure]]:
        """('dropped' | 'accepted' | 'error', failures) of a round with the hostile reply."""
        C = self._types[-1]
        try:
            arrays, metrics = self.strategy.aggregate_train(1, [*self.good, self.reply(3, blob)])
        except Exception as exc:
            return "error", [Failure("strategy-exception", _short(exc))]
        if arrays is None:
            return "error", [Failure("strategy-no-arrays", "3 good replies gave no arrays")]
        w = arrays["w"].numpy()
        if not np.isfinite(w).all():
            return "accepted", [Failure("strategy-nonfinite", _nonfinite(w))]
        if metrics is not None and metrics[C.METRIC_ACCEPTED] == 3:
            if not np.array_equal(w, self.baseline):
                return "dropped", [Failure("strategy-changed", "dropped reply changed the "
                                           "result: max |diff| "
                                           f"{np.abs(w - self.baseline).max():.3g}")]
            return "dropped", []
        # every reply weighs the same and the global model is 0: w = (3 good + hostile) / 4
        w64, b64 = w.astype(np.float64), self.baseline.astype(np.float64)
        norm = float(np.linalg.norm(4 * w64 - 3 * b64))
        slack = 1e-3 * self.limit + 1e-5 * (4 * np.linalg.norm(w64) + 3 * np.linalg.norm(b64))
        if norm > self.limit + slack:
            how = "max_update_norm" if self.bounded else "no max_update_norm"
            return "accepted", [Failure("strategy-outsized", f"hostile update norm {norm:.3g} > "
                                        f"{self.limit:.3g} = {OUTSIZED:g} x honest ({how}), "
                                        f"max |w| {np.abs(w).max():.3g}")]
        return "accepted", []


# --- the run -------------------------------------------------------------------------------
@dataclass
class Example:
    index: int
    base: str
    mutator: str
    mutation: str
    failure: str
    detail: str


@dataclass
class Report:
    blobs: int
    seed: int
    seconds: float = 0.0
    rows: dict[tuple[str, str], Counter] = field(
        default_factory=lambda: defaultdict(Counter))
    max_accepted: dict[tuple[str, str], float] = field(default_factory=dict)
    examples: dict[tuple[str, str, str], list[Example]] = field(
        default_factory=lambda: defaultdict(list))
    strategy_rounds: int = 0
    memory_samples: int = 0
    bounded_strategy: bool = False

    @property
    def failures(self) -> int:
        return sum(c["failed"] for c in self.rows.values())

    def failure_kinds(self) -> Counter:
        out: Counter = Counter()
        for c in self.rows.values():
            out.update({k[5:]: v for k, v in c.items() if k.startswith("fail:")})
        return out

    def table(self) -> str:
        lines = [f"{'method':13s} {'mutator':15s} {'total':>6s} {'reject':>6s} {'accept':>6s} "
                 f"{'strat':>5s} {'FAIL':>5s}  {'max|x| acc':>10s}  failures"]
        methods = sorted({m for m, _ in self.rows})
        for m in methods:
            tot: Counter = Counter()
            for (mm, mut), c in sorted(self.rows.items()):
                if mm != m:
                    continue
                tot.update(c)
                kinds = " ".join(f"{k[5:]}:{v}" for k, v in sorted(c.items())
                                 if k.startswith("fail:"))
                big = self.max_accepted.get((m, mut), 0.0)
                lines.append(f"{m:13s} {mut:15s} {c['total']:6d} {c['rejected']:6d} "
                             f"{c['accepted']:6d} {c['strategy']:5d} {c['failed']:5d}  "
                             f"{big:10.3g}  {kinds}")
            lines.append(f"{m:13s} {'ALL':15s} {tot['total']:6d} {tot['rejected']:6d} "
                         f"{tot['accepted']:6d} {tot['strategy']:5d} {tot['failed']:5d}")
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.failure_kinds().items()))
        lines.append(f"{self.blobs} mutants, {self.failures} failed ({kinds or 'none'}); "
                     f"{self.strategy_rounds} strategy rounds, {self.memory_samples} memory "
                     f"samples; {self.seconds:.1f} s")
        return "\n".join(lines)

    def example_text(self, per_key: int = 1) -> str:
        """The first failures of each (method, failure kind, mutator)."""
        lines = []
        last = None
        for (m, kind, _), exs in sorted(self.examples.items()):
            if (m, kind) != last:
                lines.append(f"{m} / {kind}:")
                last = (m, kind)
            for ex in exs[:per_key]:
                lines.append(f"  #{ex.index} [{ex.base}, {ex.mutator}] {ex.mutation}"
                             f"\n      -> {ex.detail}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "blobs": self.blobs, "seed": self.seed, "seconds": self.seconds,
            "failures": self.failures, "failure_kinds": dict(self.failure_kinds()),
            "strategy_rounds": self.strategy_rounds, "memory_samples": self.memory_samples,
            "strategy_has_max_update_norm": self.bounded_strategy,
            "rows": [{"method": m, "mutator": mut, **c,
                      "max_abs_accepted": self.max_accepted.get((m, mut), 0.0)}
                     for (m, mut), c in sorted(self.rows.items())],
            "examples": [ex.__dict__ for _, exs in sorted(self.examples.items())
                         for ex in exs],
        }


@contextmanager
def _quiet(strategy: bool = True) -> Iterator[None]:
    """No numpy float warnings, no flwr log lines (every dropped reply logs a warning)."""
    if strategy:
        import strategies  # noqa: F401 - flwr configures its logger on import
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.ERROR)
    try:
        with np.errstate(all="ignore"):
            yield
    finally:
        flwr_logger.setLevel(level)


def run_fuzz(blobs: int = 100_000, seed: int = 0, *, strategy_every: int = 1,
             mem_every: int = 1, methods: Sequence[str] | None = None,
             strategy: bool = True, progress: Callable[[str], None] | None = None,
             max_examples: int = 3) -> Report:
    """Fuzz ``blobs`` mutants; the Report's ``failures`` must be 0."""
    t0 = time.perf_counter()
    report = Report(blobs, seed)
    with _quiet(strategy):
        bases = build_bases(methods)
        for i in range(blobs):
            base, mname, mutant, rng = make_mutant(bases, seed, i)
            row = report.rows[(base.method, mname)]
            row["total"] += 1
            status, fails, big = check_decode(mutant.blob, i % mem_every == 0)
            report.memory_samples += i % mem_every == 0
            row[status] += 1
            if status == "accepted" and not fails:
                key = (base.method, mname)
                report.max_accepted[key] = max(report.max_accepted.get(key, 0.0), big)
            agg_status, agg_fails = check_aggregator(base, mutant.blob, rng.randrange(4))
            fails += agg_fails
            row[f"agg-{agg_status}"] += 1
            if strategy and (i % strategy_every == 0 or (
                    agg_status == "accepted" and rng.randrange(10 * strategy_every) < 10)):
                if base.strategy is None:
                    base.strategy = StrategyRound(base)
                    report.bounded_strategy = base.strategy.bounded
                s_status, s_fails = base.strategy.check(mutant.blob)
                fails += s_fails
                row["strategy"] += 1
                row[f"strategy-{s_status}"] += 1
                report.strategy_rounds += 1
            if fails:
                row["failed"] += 1
                for f in fails:
                    row[f"fail:{f.kind}"] += 1
                    exs = report.examples[(base.method, f.kind, mname)]
                    if len(exs) < max_examples:
                        exs.append(Example(i, base.name, mname, "; ".join(mutant.desc),
                                           f.kind, f.detail))
            if progress is not None and (i + 1) % 10_000 == 0:
                progress(f"{i + 1} mutants, {report.failures} failed, "
                         f"{time.perf_counter() - t0:.0f} s")
    report.seconds = time.perf_counter() - t0
    return report


def replay(seed: int, index: int, methods: Sequence[str] | None = None) -> str:
    """Every check of one mutant, in words."""
    with _quiet():
        bases = build_bases(methods)
        base, mname, mutant, rng = make_mutant(bases, seed, index)
        lines = [f"mutant #{index} of seed {seed}: {base.name}, {mname}",
                 "  " + "; ".join(mutant.desc), f"  blob ({len(mutant.blob)} bytes): "
                 f"{mutant.blob[:512].hex()}{'...' if len(mutant.blob) > 512 else ''}"]
        status, fails, big = check_decode(mutant.blob, True)
        lines.append(f"  decode: {status}, max |x| {big:.3g}")
        a_status, a_fails = check_aggregator(base, mutant.blob, rng.randrange(4))
        lines.append(f"  aggregator: {a_status}")
        s_status, s_fails = StrategyRound(base).check(mutant.blob)
        lines.append(f"  strategy: {s_status}")
        for f in fails + a_fails + s_fails:
            lines.append(f"  FAIL {f.kind}: {f.detail}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fuzz_blobs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blobs", type=int, default=100_000, help="number of mutants")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the counts and failure examples here")
    p.add_argument("--methods", nargs="*", help="only these methods (default: all registered)")
    p.add_argument("--strategy-every", type=int, default=1,
                   help="run a CompressedFedAvg round on every N-th mutant")
    p.add_argument("--mem-every", type=int, default=1,
                   help="measure tracemalloc peak on every N-th decode")
    p.add_argument("--no-strategy", action="store_true", help="skip the strategy rounds")
    p.add_argument("--replay", type=int, metavar="I", help="run mutant I alone, verbosely")
    args = p.parse_args(argv)
    if args.replay is not None:
        text = replay(args.seed, args.replay, args.methods)
        print(text)
        return 1 if "FAIL" in text else 0
    report = run_fuzz(args.blobs, args.seed, strategy_every=args.strategy_every,
                      mem_every=args.mem_every, methods=args.methods,
                      strategy=not args.no_strategy,
                      progress=lambda s: print(s, file=sys.stderr, flush=True))
    print(report.table())
    if report.failures:
        print("\nfirst failures per method and kind (replay with --replay I):")
        print(report.example_text())
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report.to_json(), fh, indent=1, default=_json_default)
    return 1 if report.failures else 0


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    raise TypeError(type(o).__name__)


if __name__ == "__main__":
    sys.exit(main())
