"""The common blob header, shared by every method. Little-endian, 31 bytes:

=======  =====  ==============================================================
offset   type   field
=======  =====  ==============================================================
0        2s     magic ``b"FH"``
2        u8     format version (1)
3        u8     method id (see ``fedhd.methods``)
4        u16    bits per coordinate x 16 (fixed rate b, or the budget R)
6        u8     log2 of the full chunk length
7        u32    d, the vector length in coordinates
11       u64    rotation seed (shared by all clients of a round)
19       u64    dither seed (one per client)
27       u32    CRC-32 of header bytes 0..26 followed by the payload
=======  =====  ==============================================================

The method's payload follows. Decoders check every field and the exact payload length
implied by the header before they allocate, then the CRC, so truncated, extended or
bit-flipped blobs raise ``DecodeError``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Any

from .errors import DecodeError
from .layout import MAX_D, MAX_LOG2_CHUNK, MIN_LOG2_CHUNK

try:  # the same CRC-32 as zlib's, ~6x faster (ISA-L's carry-less-multiply kernel)
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency; a --no-deps install
    from zlib import crc32

MAGIC = b"FH"
VERSION = 1
_HEADER = struct.Struct("<2sBBHBIQQI")
HEADER_BYTES = _HEADER.size  # 31
_CRC_OFFSET = HEADER_BYTES - 4


@dataclass(frozen=True)
class Header:
    """The decoded common header of a blob."""

    method_id: int
    bits: float
    log2_chunk: int
    d: int
    seed: int
    dither_seed: int

    @property
    def bits_x16(self) -> int:
        return round(self.bits * 16)


def bits_to_x16(bits: float) -> int:
    """The header's integer form of a bit rate: bits * 16, rounded."""
    return round(bits * 16)


def write_header(buf: bytearray | memoryview, h: Header) -> None:
    """Write ``h`` into the first HEADER_BYTES of ``buf`` with a zero CRC (see ``seal``)."""
    _HEADER.pack_into(
        buf, 0, MAGIC, VERSION, h.method_id, bits_to_x16(h.bits), h.log2_chunk, h.d,
        h.seed, h.dither_seed, 0,
    )


def _crc(blob: bytes | bytearray | memoryview) -> int:
    """CRC-32 over the header fields before the CRC, then the payload."""
    mv = memoryview(blob)
    return crc32(mv[HEADER_BYTES:], crc32(mv[:_CRC_OFFSET]))


def seal(buf: bytearray) -> bytes:
    """Fill in the CRC-32 (header fields and payload) and return the finished blob."""
    struct.pack_into("<I", buf, _CRC_OFFSET, _crc(buf))
    return bytes(buf)


def rewrite_header(blob: bytes | bytearray | memoryview, **fields: Any) -> bytes:
    """A copy of a blob with header fields replaced (``Header`` names: method_id, bits,
    log2_chunk, d, seed, dither_seed) and the CRC recomputed, payload unchanged. For tests
    and fuzzing: it writes whatever it is told, including lies the decoder must refuse."""
    buf = bytearray(blob)
    magic, version, method_id, bits_x16, log2_chunk, d, seed, dseed, _ = _HEADER.unpack_from(buf)
    h = replace(Header(method_id, bits_x16 / 16, log2_chunk, d, seed, dseed), **fields)
    _HEADER.pack_into(buf, 0, magic, version, h.method_id, bits_to_x16(h.bits), h.log2_chunk,
                      h.d, h.seed, h.dither_seed, 0)
    return seal(buf)


def as_bytes(blob: object) -> memoryview:
    """A read-only byte view of a blob; TypeError for anything not bytes-like."""
    if isinstance(blob, (bytes, bytearray, memoryview)):
        mv = memoryview(blob)
    else:
        try:
            import numpy as np

            if isinstance(blob, np.ndarray) and blob.dtype == np.uint8 and blob.ndim == 1:
                mv = memoryview(np.ascontiguousarray(blob).tobytes())
            else:
                raise TypeError
        except TypeError:
            raise DecodeError(
                f"a blob must be bytes-like, got {type(blob).__name__}"
            ) from None
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv


def read_header(blob: memoryview) -> Header:
    """Parse and range-check the common header (not the payload length, not the CRC)."""
    if len(blob) < HEADER_BYTES:
        raise DecodeError(
            f"blob of {len(blob)} bytes is shorter than the {HEADER_BYTES}-byte header"
        )
    magic, version, method_id, bits_x16, log2_chunk, d, seed, dseed, _ = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise DecodeError(f"bad magic {magic!r}: not a fedhd blob")
    if version != VERSION:
        raise DecodeError(f"unsupported format version {version} (this fedhd reads {VERSION})")
    if not MIN_LOG2_CHUNK <= log2_chunk <= MAX_LOG2_CHUNK:
        raise DecodeError(
            f"chunk exponent {log2_chunk} outside [{MIN_LOG2_CHUNK}, {MAX_LOG2_CHUNK}]"
        )
    if not 1 <= d <= MAX_D:
        raise DecodeError(f"vector length {d} outside [1, {MAX_D}]")
    return Header(method_id, bits_x16 / 16, log2_chunk, d, seed, dseed)


def check_payload(blob: memoryview, expected_len: int) -> memoryview:
    """Check the blob's exact length and CRC; return the payload view."""
    if len(blob) != expected_len:
        kind = "truncated" if len(blob) < expected_len else "extended"
        raise DecodeError(f"blob is {kind}: {len(blob)} bytes, header implies {expected_len}")
    (crc,) = struct.unpack_from("<I", blob, _CRC_OFFSET)
    if _crc(blob) != crc:
        raise DecodeError("CRC mismatch: the blob is corrupted")
    return blob[HEADER_BYTES:]
