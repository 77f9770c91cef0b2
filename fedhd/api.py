"""Public entry points: encode, decode, methods, Codec. The backend (CPU or a CUDA GPU) of
each call is picked here, once (``fedhd.backend``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import backend
from . import methods as registry
from .backend.cpu import as_host_vector
from .errors import DecodeError
from .layout import DEFAULT_LOG2_CHUNK, MAX_LOG2_CHUNK, MIN_LOG2_CHUNK, make_layout
from .methods import DEFAULT_METHOD
from .rng import check_seed
from .wire import Header, as_bytes, read_header

as_vector = as_host_vector


def methods() -> list[str]:
    """Names of the registered compression methods."""
    return registry.names()


class Codec:
    """A reusable encoder/decoder for one (method, bits, chunk size).

    Parameters
    ----------
    method : str
        A name from ``fedhd.methods()`` (default ``fedhd.DEFAULT_METHOD``).
    bits : float, optional
        Bits per coordinate: an integer 1..8 for fixed-rate methods, a budget for
        entropy-coded ones. Defaults to the method's own default.
    log2_chunk : int
        Full chunk length 2**log2_chunk coordinates for rotated methods (5..24).

    ``decode(blob, out=...)`` writes into a caller's float32 buffer, so a loop over many
    blobs of the same length allocates nothing per call.
    """

    def __init__(self, method: str = DEFAULT_METHOD, bits: float | None = None,
                 log2_chunk: int = DEFAULT_LOG2_CHUNK):
        self.method = registry.get(method)
        self.bits = self.method.check_bits(self.method.default_bits if bits is None else bits)
        if not MIN_LOG2_CHUNK <= int(log2_chunk) <= MAX_LOG2_CHUNK:
            raise ValueError(f"log2_chunk must be in [{MIN_LOG2_CHUNK}, {MAX_LOG2_CHUNK}]")
        self.log2_chunk = int(log2_chunk)

    def encode(self, x: Any, seed: int = 0, dither_seed: int | None = None,
               context: Any = None) -> bytes:
        """Compress x (numpy or torch; a CUDA array is encoded on its GPU). ``seed`` fixes
        the rotation (share it among the clients of a round); ``dither_seed`` (default:
        ``seed``) fixes the dither (give each client its own). ``context``: encoder-side
        state that only methods with ``takes_context`` read (powersgd: a
        ``fedhd.methods.powersgd.PowerSGDContext`` with the tensor shapes and the warm
        start, updated in place); TypeError for any other method."""
        seed = check_seed(seed)
        dither_seed = seed if dither_seed is None else check_seed(dither_seed, "dither_seed")
        be = backend.for_array(x)
        with be.call():
            xv = be.as_vector(x)
            h = Header(self.method.method_id, self.bits, self.log2_chunk, int(xv.shape[0]),
                       seed, dither_seed)
            if not be.runs(self.method.device_encode, make_layout(h.d, h.log2_chunk)):
                xv, be = be.to_host(xv), backend.CPU
            if context is None:
                return self.method.encode(xv, h, be)
            return self.method.encode(xv, h, be, context)

    def decode(self, blob: Any, out: Any = None, device: Any = None) -> Any:
        """Decode a blob of this codec's method; see ``fedhd.decode``."""
        view = as_bytes(blob)
        if read_header(view).method_id != self.method.method_id:
            raise DecodeError(f"blob holds method id {read_header(view).method_id}, "
                              f"not {self.method.name}")
        return decode(view, out, device)


def encode(x: Any, bits: float | None = None, seed: int = 0, method: str = DEFAULT_METHOD,
           dither_seed: int | None = None, log2_chunk: int = DEFAULT_LOG2_CHUNK,
           context: Any = None) -> bytes:
    """Compress a 1-D float vector into one self-describing blob (bytes).

    ``8 * len(blob)`` is every bit sent: header, scales, padding and codes. ``context``:
    see ``Codec.encode`` (powersgd only).
    """
    return Codec(method, bits, log2_chunk).encode(x, seed, dither_seed, context)


def decode(blob: Any, out: Any = None, device: Any = None) -> Any:
    """Decode any fedhd blob into a float32 vector of its original length.

    ``out``: a float32 buffer of length d to decode into (numpy, reused when it fits; or a
    CUDA array, torch or CuPy, decoded into on its GPU). ``device="cuda"`` (or "cuda:N")
    decodes on that GPU into a new torch tensor. Otherwise a new numpy vector.
    Raises ``DecodeError`` (a ValueError) for anything malformed, before allocating.
    """
    view = as_bytes(blob)
    method = registry.by_id(read_header(view).method_id)
    if method is None:
        raise DecodeError(f"unknown method id {read_header(view).method_id}")
    h, layout, payload = method.open(view)
    be = backend.for_output(out, device)
    with be.call():
        result, target = be.output(h.d, out)
        if be.runs(method.device_decode, layout):
            method.decode_payload(payload, h, layout, target, be)
        else:  # no device kernels: decode on the host, then copy up
            host = np.empty(h.d, np.float32)
            method.decode_payload(payload, h, layout, host, backend.CPU)
            be.upload_into(target, host)
    return result


def update_norm(blob: Any) -> float:
    """The L2 norm of the vector a blob decodes to (for ``commutes_with_sum`` methods from
    the rotated domain, without the inverse transform; padding included). DecodeError for
    a malformed blob."""
    view = as_bytes(blob)
    method = registry.by_id(read_header(view).method_id)
    if method is None:
        raise DecodeError(f"unknown method id {read_header(view).method_id}")
    h, layout, payload = method.open(view)
    if method.commutes_with_sum:
        return method.rotated_contribution(payload, h, layout).norm()
    return float(np.linalg.norm(decode(view).astype(np.float64)))
