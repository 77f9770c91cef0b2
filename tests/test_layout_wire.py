import math

import numpy as np
import pytest

import fedhd
from fedhd.layout import MIN_CHUNK, make_layout
from fedhd.wire import HEADER_BYTES


def hd_encode(x, *args, **kw):
    """``fedhd.encode`` with hd-dither unless a method is named (these tests are about it)."""
    if len(args) < 3:
        kw.setdefault("method", "hd-dither")
    return fedhd.encode(x, *args, **kw)


@pytest.mark.parametrize("d", [1, 31, 32, 33, 1000, 1024, 4097, 8161, 8191, 65536, 10**6 + 7])
def test_layout_covers_d_with_little_padding(d):
    lay = make_layout(d)
    assert lay.sizes.sum() == lay.padded
    assert lay.padded >= d and lay.padded - d < MIN_CHUNK
    assert all(s & (s - 1) == 0 and s >= MIN_CHUNK for s in lay.sizes)
    assert lay.chunks <= d // (1 << lay.log2_chunk) + lay.log2_chunk


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("d", [4096, 4097, 5000, 8161, 8191, 16383, 65537, 100_003])
def test_wire_size_bound(bits, d):
    x = np.random.default_rng(d).standard_normal(d).astype(np.float32)
    blob = hd_encode(x, bits=bits, seed=1)
    assert len(blob) <= math.ceil(bits * d / 8) * 1.01 + 64


def test_header_fields():
    x = np.ones(5000, np.float32)
    blob = hd_encode(x, bits=3, seed=11, dither_seed=12)
    h = fedhd.header(blob)
    assert (h.method_id, h.bits, h.d, h.seed, h.dither_seed) == (1, 3, 5000, 11, 12)
    assert len(blob) > HEADER_BYTES


def test_the_blob_crc_is_zlibs_crc32():
    """The CRC-32 the wire uses (ISA-L's, for speed) is zlib's, bit for bit, with or without
    a running value: blobs stay checkable by any CRC-32 implementation."""
    import zlib

    from fedhd import wire

    g = np.random.default_rng(0)
    for n in (0, 1, 7, 64, 4097, 1 << 20):
        b = g.integers(0, 256, n, dtype=np.uint8).tobytes()
        for start in (0, 1, 0xDEADBEEF):
            assert wire.crc32(b, start) == zlib.crc32(b, start)
    blob = fedhd.encode(np.ones(1000, np.float32), bits=2)
    mv = memoryview(blob)
    assert wire._crc(blob) == zlib.crc32(mv[HEADER_BYTES:], zlib.crc32(mv[:HEADER_BYTES - 4]))
