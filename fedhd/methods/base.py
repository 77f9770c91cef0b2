"""The method contract: every compressor encodes a float32 vector into one blob.

A ``Method`` turns a validated 1-D float32 vector into a blob that starts with the common
header (``fedhd.wire``) and decodes it back. Where a call runs (CPU or GPU) is decided by
the caller (``fedhd.Codec``, ``fedhd.Aggregator``), which passes the ``Backend`` to the
hooks; a method only states what it can do on a device:

- ``device_encode`` / ``device_decode``: its hooks run on any backend (else the caller
  gives them host vectors and ``fedhd.backend.CPU``);
- ``commutes_with_sum``: it decodes into the rotated domain of the shared HD rotation,
  where the server sums many clients and runs ONE inverse rotation per round
  (``rotated_contribution``; decode-after-sum, ``fedhd.Aggregator``).

A concrete method class sets ``name``; its wire id comes from ``methods.ids.METHOD_IDS``.
A class with a name missing from that table, or without a name while not marked
``abstract``, fails at import.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..backend import Backend
from ..backend.cpu import finite_chunk_sumsq
from ..errors import DecodeError
from ..layout import Layout, make_layout
from ..wire import HEADER_BYTES, Header, check_payload, read_header, seal, write_header
from .ids import METHOD_IDS

__all__ = [
    "MAX_DECODED",
    "Contribution",
    "Method",
    "blob_buffer",
    "check_encodable",
    "check_magnitude",
    "finite_chunk_sumsq",
    "norm_of_chunk_fields",
    "rotated_norm",
    "round_up_f32",
]

#: Largest magnitude a decoded coordinate may have: 2**31 coordinates of it still sum to a
#: finite float32 (2**127 < 3.4e38). Decoders refuse fields that imply more.
MAX_DECODED = 2.0**96


class Contribution:
    """One blob decoded as far as the rotated domain, validated, not yet summed."""

    #: Bound on |value| of every rotated coordinate it adds (before the weight).
    max_abs: float

    def norm(self) -> float:
        """The L2 norm of the decoded vector, computed in the rotated domain (no inverse
        transform): ||D H t_c||^2 = n_c ||t_c||^2 per chunk (padding coordinates included,
        so it bounds the decoded vector's norm from above)."""
        raise NotImplementedError

    def add_to(self, acc: Any, weight: float, be: Backend,
               scratch: dict[str, Any] | None = None) -> Any:
        """Add weight * the rotated chunks, scaled so that ``be.unrotate`` of the sum gives
        the weighted sum of decoded vectors, to the sum acc (padded); returns the new sum:
        acc itself, or a work vector holding acc + them (acc then becomes a work vector).
        ``scratch``: a dict the caller keeps beside the sum, where a method that needs a
        work vector leaves it for the sum's next blobs (it goes when the caller drops the
        dict)."""
        raise NotImplementedError


class Method:
    """Base class. Subclasses set ``name`` and implement the hooks."""

    #: Set True on classes that are bases of other methods (no name, no id).
    abstract: ClassVar[bool] = True
    name: ClassVar[str] = ""
    method_id: ClassVar[int] = -1
    #: E[decode(encode(x))] = x for every x (over the dither / rounding randomness).
    unbiased: ClassVar[bool] = True
    #: Decodes into the shared rotated domain, where blobs add before ONE inverse rotation.
    commutes_with_sum: ClassVar[bool] = False
    #: Whether ``bits`` is a fixed integer rate (False: a float budget in bits/coordinate).
    integer_bits: ClassVar[bool] = True
    min_bits: ClassVar[float] = 1
    max_bits: ClassVar[float] = 8
    default_bits: ClassVar[float] = 2
    #: ``encode_payload`` runs on any backend (else it gets host vectors).
    device_encode: ClassVar[bool] = False
    #: ``decode_payload`` and ``rotated_contribution(...).add_to`` run on any backend.
    device_decode: ClassVar[bool] = False
    #: ``encode`` reads an encoder-side ``context`` (powersgd: the tensor shapes and the
    #: warm start); the decoder never needs one.
    takes_context: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("abstract", False):
            return
        cls.abstract = False
        name = cls.__dict__.get("name")
        if not isinstance(name, str) or not name:
            raise TypeError(f"method class {cls.__name__} must set a name (or abstract = True)")
        if name not in METHOD_IDS:
            raise TypeError(f"method {name!r} ({cls.__name__}) has no wire id: add it to "
                            "METHOD_IDS in fedhd/methods/ids.py")
        cls.method_id = METHOD_IDS[name]

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

    def encode_payload(self, x: Any, h: Header, layout: Layout,
                       be: Backend) -> bytes | bytearray | np.ndarray:
        """The payload bytes of x (a float32 vector of ``be``); or the whole blob buffer
        of ``blob_buffer``, payload written, which ``encode`` then seals in place."""
        raise NotImplementedError

    def decode_payload(self, payload: memoryview, h: Header, layout: Layout, out: Any,
                       be: Backend) -> None:
        """Write the decoded vector into ``out`` (float32, length d, a vector of ``be``).
        DecodeError, before anything is written, for a field out of range."""
        raise NotImplementedError

    def stated_norm(self, payload: memoryview, h: Header, layout: Layout) -> float | None:
        """The L2 norm of the encoded vector as the blob states it (per-chunk norms or
        scales), read without decoding; None when the blob carries none."""
        return None

    def rotated_contribution(self, payload: memoryview, h: Header, layout: Layout,
                             low_memory: bool = False) -> Contribution:
        """``commutes_with_sum`` methods: the validated blob, ready to add to a rotated sum.
        ``low_memory``: check and add without a scratch vector of the blob's length, at
        the cost of decoding twice where the checks need a decode (entropy-coded blobs)."""
        raise NotImplementedError

    # -- driver ----------------------------------------------------------------------------
    def encode(self, x: Any, h: Header, be: Backend, context: Any = None) -> bytes:
        """The sealed blob of x (a float32 vector of ``be``) under header ``h``. Only
        methods that set ``takes_context`` accept a ``context`` (TypeError otherwise)."""
        if context is not None:
            raise TypeError(f"{self.name} takes no encoder context")
        layout = make_layout(h.d, h.log2_chunk)
        payload = self.encode_payload(x, h, layout, be)
        if isinstance(payload, bytearray):  # from blob_buffer: the header's room is there
            buf = payload
        else:
            buf = bytearray(HEADER_BYTES + len(payload))
            np.frombuffer(buf, np.uint8)[HEADER_BYTES:] = np.frombuffer(payload, np.uint8)
        del payload  # peak: two blobs (the buffer and the sealed bytes), not three
        write_header(buf, h)
        return seal(buf)

    def open(self, blob: memoryview) -> tuple[Header, Layout, memoryview]:
        """Validate a blob's framing (fields, exact length, CRC) before any allocation."""
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


def blob_buffer(payload_bytes: int) -> tuple[bytearray, np.ndarray]:
    """(a blob's buffer: HEADER_BYTES of room, then the payload; the payload part as a
    uint8 array to write into). An ``encode_payload`` that fills the array and returns the
    bytearray saves ``Method.encode`` a copy of the payload."""
    raw = bytearray(HEADER_BYTES + payload_bytes)
    return raw, np.frombuffer(raw, np.uint8)[HEADER_BYTES:]


def rotated_norm(acc: np.ndarray, layout: Layout) -> float:
    """sqrt(sum_c n_c ||acc_c||^2): the norm of D H acc for a rotated vector ``acc``."""
    sq = np.add.reduceat(np.square(acc, dtype=np.float64), layout.starts)
    return float(np.sqrt(sq @ layout.sizes.astype(np.float64)))


def check_magnitude(values: np.ndarray, what: str) -> None:
    """DecodeError unless every value is finite and within ``MAX_DECODED``."""
    if not (np.isfinite(values).all() and np.abs(values).max(initial=0.0) <= MAX_DECODED):
        raise DecodeError(f"{what} must be finite and at most {MAX_DECODED:.3g} in magnitude")


def check_encodable(values: np.ndarray, name: str) -> None:
    """Encoders: ValueError when what they would send is beyond ``MAX_DECODED``."""
    if np.abs(values).max(initial=0.0) > MAX_DECODED:
        raise ValueError(f"x is too large for {name}: values beyond {MAX_DECODED:.3g}")


def norm_of_chunk_fields(payload: memoryview, chunks: int, offset: int = 0) -> float:
    """sqrt(sum of squares) of ``chunks`` float32 per-chunk norms at ``offset``."""
    v = np.frombuffer(payload, "<f4", chunks, offset).astype(np.float64)
    return float(np.sqrt(v @ v))


def round_up_f32(v: np.ndarray) -> np.ndarray:
    """float32 values >= v (float64), the nearest such."""
    f = v.astype(np.float32)
    low = f.astype(np.float64) < v
    f[low] = np.nextafter(f[low], np.float32(np.inf))
    return f
