"""fedhd: unbiased dithered-Hadamard compression of federated-learning updates.

>>> import numpy as np, fedhd
>>> x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
>>> blob = fedhd.encode(x, bits=2, seed=7)          # hd-dither-ec, ~2 bits per coordinate
>>> x_hat = fedhd.decode(blob)                       # float32, unbiased estimate of x
"""

from .aggregate import Aggregator
from .api import Codec, as_vector, decode, encode, methods, update_norm
from .arrays import Spec, flatten, unflatten
from .errors import DecodeError, NormExceeded
from .methods import DEFAULT_METHOD
from .rng import derive_seed
from .wire import Header, read_header

__all__ = [
    "DEFAULT_METHOD",
    "Aggregator",
    "Codec",
    "DecodeError",
    "Header",
    "NormExceeded",
    "Spec",
    "as_vector",
    "decode",
    "derive_seed",
    "encode",
    "flatten",
    "header",
    "methods",
    "read_header",
    "unflatten",
    "update_norm",
]
__version__ = "0.1.0"


def header(blob: bytes) -> Header:
    """The validated common header of a blob (method id, bits, d, seeds)."""
    from .wire import as_bytes

    return read_header(as_bytes(blob))
