"""What the server tells the clients about the masked vector, and how both sides flatten
the model (no Flower import). These bytes ride, opaque to the protocol, in the
MASK_REQUEST of each client.

Layout (little-endian): the ``fedhd.modular.ModularSpec`` (41 bytes), max_weight (f64;
0 = unweighted mean), flags (u8; bit 0: send the app's MetricRecord in the clear), the
SHA-256 of the model layout (32 bytes), the weight key (u16 length + UTF-8).

The masked vector is the summable code of the update (float arrays, sorted by key,
flattened and concatenated) and a tail of 64-bit counters (``TAIL_*``): 1 (the count),
the client's weight in units of 2**-20, whether it clipped, whether its weight was capped,
then every value of the non-float arrays (sorted by key) as int64.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from fedhd.errors import DecodeError
from fedhd.modular import SPEC_BYTES, ModularSpec

from .crypto import sha256

TAIL_COUNT, TAIL_WEIGHT, TAIL_CLIPPED, TAIL_CAPPED = 0, 1, 2, 3
TAIL_FIELDS = 4
WEIGHT_ONE = 1 << 20  # a weight of 1 in the tail's fixed point
_FIXED = struct.Struct("<dB32sH")
FLAG_CLIENT_METRICS = 1


@dataclass(frozen=True)
class RoundParams:
    spec: ModularSpec
    max_weight: float  # 0: every client has weight 1
    client_metrics: bool
    digest: bytes
    weight_key: str

    def to_bytes(self) -> bytes:
        key = self.weight_key.encode()
        return self.spec.to_bytes() + _FIXED.pack(
            self.max_weight, FLAG_CLIENT_METRICS if self.client_metrics else 0, self.digest,
            len(key)) + key

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundParams:
        if len(data) < SPEC_BYTES + _FIXED.size:
            raise DecodeError(f"round params of {len(data)} bytes are truncated")
        spec = ModularSpec.from_bytes(data[:SPEC_BYTES])
        max_weight, flags, digest, klen = _FIXED.unpack_from(data, SPEC_BYTES)
        rest = data[SPEC_BYTES + _FIXED.size:]
        if len(rest) != klen:
            raise DecodeError(f"round params: weight key of {klen} bytes, {len(rest)} left")
        if not (math.isfinite(max_weight) and max_weight >= 0):
            raise DecodeError(f"round params: max_weight {max_weight} is not >= 0")
        if flags & ~FLAG_CLIENT_METRICS:
            raise DecodeError(f"round params: unknown flags {flags:#x}")
        try:
            key = rest.decode()
        except UnicodeDecodeError:
            raise DecodeError("round params: the weight key is not UTF-8") from None
        return cls(spec, float(max_weight), bool(flags & FLAG_CLIENT_METRICS), digest, key)


def layout_digest(arrays: Iterable[tuple[str, np.dtype, tuple[int, ...]]]) -> bytes:
    """SHA-256 of the model's (key, dtype, shape) triples, sorted by key."""
    parts = [f"{k}\0{np.dtype(dt).str}\0{list(shape)}\n".encode()
             for k, dt, shape in sorted(arrays, key=lambda t: t[0])]
    return sha256(*parts)


def split_keys(arrays: Mapping[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """(float keys, other keys), each sorted: the order both sides flatten in."""
    keys = sorted(arrays)
    return ([k for k in keys if arrays[k].dtype.kind == "f"],
            [k for k in keys if arrays[k].dtype.kind != "f"])


def tail_length(arrays: Mapping[str, np.ndarray]) -> int:
    _, other = split_keys(arrays)
    return TAIL_FIELDS + sum(int(arrays[k].size) for k in other)


def weight_fixed(weight: float, max_weight: float) -> tuple[int, bool]:
    """(the weight in units of 2**-20 of max_weight, capped), for weight > 0."""
    if max_weight == 0:
        return WEIGHT_ONE, False
    capped = weight > max_weight
    return round(WEIGHT_ONE * min(weight, max_weight) / max_weight), capped
