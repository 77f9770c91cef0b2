"""The method contract: every compressor encodes a float32 vector into one blob.

A ``Method`` turns a validated 1-D float32 vector into a blob that starts with the common
header (``fedhd.wire``) and decodes it back. Methods that rotate with the shared HD
transform (``rotated = True``) also decode into the rotated domain, so a server can sum
many clients there and run one inverse rotation (decode-after-sum, ``fedhd.Aggregator``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from .. import kernels as K
from .. import rng
from ..errors import DecodeError
from ..layout import Layout, make_layout
from ..wire import HEADER_BYTES, Header, check_payload, read_header, seal, write_header


class Method:
    """Base class. Subclasses set ``name``, ``method_id`` and implement the hooks."""

    name: str = ""
    method_id: int = 0
    rotated: bool = False
    unbiased: bool = True
    #: Whether ``bits`` is a fixed integer rate (False: a float budget in bits/coordinate).
    integer_bits: bool = True
    min_bits: float = 1
    max_bits: float = 8
    default_bits: float = 2
    #: Whether ``encode_payload`` takes a CUDA vector (``fedhd.gpu``); other methods get a
    #: host copy.
    gpu_encode: bool = False
    #: Whether ``decode_payload``/``accumulate_rotated`` write CUDA vectors themselves;
    #: other methods decode on the host and copy the result up.
    gpu_decode: bool = False

    # -- arguments -------------------------------------------------------------------------
    def check_bits(self, bits: float) -> float:
        """Validate the rate; return it normalized (int for fixed-rate methods)."""
        if isinstance(bits, bool) or not isinstance(bits, (int, float, np.integer, np.floating)):
            raise TypeError(f"bits must be a number, got {type(bits).__name__}")
        if self.integer_bits:
            if float(bits) != int(bits):
                raise ValueError(f"{self.name} takes an integer number of bits, got {bits}")
            bits = int(bits)
        else:
            bits = float(bits)
        if not self.min_bits <= bits <= self.max_bits:
            raise ValueError(
                f"{self.name}: bits must be in [{self.min_bits}, {self.max_bits}], got {bits}"
            )
        return bits

    # -- hooks -----------------------------------------------------------------------------
    def payload_size(self, h: Header, layout: Layout) -> int:
        """Fixed-size methods: payload bytes implied by the header. Variable-size: override
        ``expected_size``."""
        raise NotImplementedError

    def expected_size(self, blob: memoryview, h: Header, layout: Layout) -> int:
        """Total blob length implied by the header (and any method sub-header)."""
        return HEADER_BYTES + self.payload_size(h, layout)

    def encode_payload(self, x: np.ndarray, h: Header, layout: Layout) -> bytes | np.ndarray:
        raise NotImplementedError

    def decode_payload(
        self, payload: memoryview, h: Header, layout: Layout, out: np.ndarray
    ) -> None:
        """Write the decoded vector into ``out`` (float32, length d)."""
        raise NotImplementedError

    def accumulate_rotated(
        self, payload: memoryview, h: Header, layout: Layout, acc: np.ndarray, weight: float
    ) -> None:
        """Rotated methods: acc (length layout.padded) += weight * decoded rotated chunks,
        scaled so that ``unrotate(acc)`` gives the weighted sum of decoded vectors."""
        raise NotImplementedError

    # -- driver ----------------------------------------------------------------------------
    def encode(
        self, x: Any, bits: float, seed: int, dither_seed: int, log2_chunk: int
    ) -> bytes:
        """x: a float32 numpy vector, or a CUDA one from ``fedhd.gpu.as_device_vector``."""
        layout = make_layout(x.shape[0], log2_chunk)
        h = Header(self.method_id, bits, log2_chunk, x.shape[0], seed, dither_seed)
        if not isinstance(x, np.ndarray) and not (self.gpu_encode and gpu().supported(layout)):
            x = x.copy_to_host()
        payload = self.encode_payload(x, h, layout)
        buf = bytearray(HEADER_BYTES + len(payload))
        write_header(buf, h)
        np.frombuffer(buf, np.uint8)[HEADER_BYTES:] = np.frombuffer(payload, np.uint8)
        return seal(buf)

    def open(self, blob: memoryview) -> tuple[Header, Layout, memoryview]:
        """Validate a blob completely (fields, exact length, CRC) before any allocation."""
        h = read_header(blob)
        if h.method_id != self.method_id:
            raise DecodeError(f"blob holds method id {h.method_id}, not {self.name}")
        try:
            self.check_bits(h.bits)
        except (TypeError, ValueError) as e:
            raise DecodeError(f"bad bits field: {e}") from None
        layout = make_layout(h.d, h.log2_chunk)
        payload = check_payload(blob, self.expected_size(blob, h, layout))
        return h, layout, payload

    def decode(self, blob: memoryview, out: Any = None, device: Any = None) -> Any:
        """Validate, then decode into ``out`` (a float32 numpy vector of length d, reused
        when it fits, or a CUDA array that must fit) or, with ``device="cuda[:N]"``, into a
        new torch tensor there; else into a new numpy vector."""
        h, layout, payload = self.open(blob)
        if out is None and device is not None and str(device) != "cpu":
            out = gpu().new_torch_vector(h.d, device)
        if out is None or isinstance(out, np.ndarray):
            if out is None or out.shape != (h.d,) or out.dtype != np.float32:
                out = np.empty(h.d, np.float32)
            self.decode_payload(payload, h, layout, out)
            return out
        with gpu().call(gpu().device_index(out)):
            dev = gpu().view(out)
            if dev.shape != (h.d,) or dev.dtype != np.float32:
                raise ValueError(f"out must be a float32 CUDA vector of length {h.d}")
            if self.gpu_decode and gpu().supported(layout):
                self.decode_payload(payload, h, layout, dev)
            else:
                host = np.empty(h.d, np.float32)
                self.decode_payload(payload, h, layout, host)
                dev.copy_to_device(host)
        return out


def gpu() -> Any:
    """``fedhd.gpu``, imported on first use (it imports numba.cuda)."""
    from .. import gpu as module

    return module


def finite_chunk_sumsq(x: np.ndarray, layout: Layout) -> np.ndarray:
    """Per-chunk sum of squares in float64; ValueError if x holds NaN or Inf.

    A float64 sum of float32 squares cannot overflow, so a non-finite sum means a
    non-finite input.
    """
    ss = K.chunk_sumsq(x, layout.starts, layout.sizes, x.shape[0])
    if not np.isfinite(ss).all():
        raise ValueError("x contains NaN or Inf")
    return ss


def unrotate(acc: Any, seed: int, layout: Layout, out: Any) -> Any:
    """out[:d] = D H acc chunk by chunk (unnormalized H; acc is overwritten). acc and out
    are both numpy or both CUDA vectors."""
    keys = rng.sign_keys(seed, layout.chunks)
    if isinstance(acc, np.ndarray):
        K.unrotate(acc, layout.d, layout.starts, layout.sizes, keys, out)
    else:
        gpu().unrotate(acc, layout, keys, out)
    return out


def code_offsets(layout: Layout, bits: int, head: int) -> np.ndarray:
    """Byte offset of each chunk's packed codes, after ``head`` bytes of per-chunk fields."""
    return _code_offsets(layout.d, layout.log2_chunk, bits, head)


@lru_cache(maxsize=256)
def _code_offsets(d: int, log2_chunk: int, bits: int, head: int) -> np.ndarray:
    sizes = make_layout(d, log2_chunk).sizes
    off = np.concatenate(([0], np.cumsum(sizes * bits // 8)[:-1])).astype(np.int64) + head
    off.setflags(write=False)
    return off


class RotatedTableMethod(Method):
    """A rotated fixed-rate method whose payload is ``head_bytes`` of per-chunk fields,
    then b-bit codes (``fedhd.kernels`` packing), decoded by a per-chunk table look-up
    followed by the inverse rotation. Subclasses provide ``head_bytes`` and ``tables``."""

    rotated = True
    gpu_decode = True

    def head_bytes(self, layout: Layout) -> int:
        """Bytes of per-chunk fields before the codes."""
        raise NotImplementedError

    def tables(self, payload: memoryview, h: Header, layout: Layout) -> np.ndarray:
        """float32 (chunks, 2**b): the decoded rotated value of each code, times 1/n for
        the unnormalized inverse FWHT; DecodeError for inconsistent per-chunk fields."""
        raise NotImplementedError

    def payload_size(self, h: Header, layout: Layout) -> int:
        return self.head_bytes(layout) + layout.padded * int(h.bits) // 8

    def decode_payload(self, payload, h, layout, out):
        b = int(h.bits)
        codes = np.frombuffer(payload, np.uint8)
        keys = rng.sign_keys(h.seed, layout.chunks)
        tables = self.tables(payload, h, layout)
        off = code_offsets(layout, b, self.head_bytes(layout))
        if isinstance(out, np.ndarray):
            K.dequantize_unrotate(codes, h.d, layout.starts, layout.sizes, keys, tables, b,
                                  off, out)
        else:
            gpu().dequantize_unrotate(codes, layout, keys, tables, b, off, out)

    def accumulate_rotated(self, payload, h, layout, acc, weight):
        b = int(h.bits)
        codes = np.frombuffer(payload, np.uint8)
        tables = self.tables(payload, h, layout)
        off = code_offsets(layout, b, self.head_bytes(layout))
        if isinstance(acc, np.ndarray):
            K.lookup_rotated(codes, layout.starts, layout.sizes, tables, b, off,
                             np.float32(weight), acc)
        else:
            gpu().lookup_rotated(codes, layout, tables, b, off, weight, acc)
