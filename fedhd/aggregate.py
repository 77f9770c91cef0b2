"""Server-side weighted averaging of many blobs, with decode-after-sum.

For rotated methods every client of a round shares the rotation seed, so the server adds
the dequantized chunks of all clients in the rotated domain and runs ONE inverse
Hadamard transform per chunk at the end (DESIGN §2; TFF's ``commutes_with_sum``):
sum_k w_k D H r_k = D H (sum_k w_k r_k). Other methods are decoded and added directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import methods as registry
from .errors import DecodeError
from .layout import make_layout
from .methods.base import unrotate
from .wire import as_bytes, read_header


class Aggregator:
    """Weighted mean of decoded blobs of length ``d``.

    Parameters
    ----------
    d : int
        Vector length every blob must have.
    seed : int, optional
        The round's rotation seed; when given, rotated blobs must carry it.
    method, bits : optional
        When given, every blob must match them.

    ``add`` validates a blob completely before touching the running sum, so a bad blob
    raises ``DecodeError`` and leaves the sum as it was.
    """

    def __init__(self, d: int, seed: int | None = None, method: str | None = None,
                 bits: float | None = None):
        self.d = int(d)
        self.seed = seed
        self.method = None if method is None else registry.get(method)
        self.bits = bits
        self._plain = np.zeros(self.d, np.float64)
        self._rotated: dict[tuple[int, int], np.ndarray] = {}  # (seed, log2_chunk) -> sum
        self.total_weight = 0.0
        self.count = 0

    def add(self, blob: Any, weight: float = 1.0) -> None:
        """Add weight * decode(blob) to the running sum."""
        if not (np.isfinite(weight) and weight > 0):
            raise ValueError(f"weight must be finite and positive, got {weight}")
        view = as_bytes(blob)
        h = read_header(view)
        method = registry.by_id(h.method_id)
        if method is None:
            raise DecodeError(f"unknown method id {h.method_id}")
        if self.method is not None and method is not self.method:
            raise DecodeError(f"blob uses {method.name}, the round uses {self.method.name}")
        if self.bits is not None and h.bits_x16 != round(self.bits * 16):
            raise DecodeError(f"blob has {h.bits} bits, the round uses {self.bits}")
        if h.d != self.d:
            raise DecodeError(f"blob has length {h.d}, the round expects {self.d}")
        if self.seed is not None and method.rotated and h.seed != self.seed:
            raise DecodeError(f"blob has rotation seed {h.seed}, the round uses {self.seed}")
        if method.rotated:
            h, layout, payload = method.open(view)
            key = (h.seed, h.log2_chunk)
            acc = self._rotated.get(key)
            fresh = acc is None
            if acc is None:
                acc = np.zeros(layout.padded, np.float32)
            method.accumulate_rotated(payload, h, layout, acc, weight)
            if fresh:
                self._rotated[key] = acc
        else:
            x = method.decode(view)
            self._plain += weight * x
        self.total_weight += weight
        self.count += 1

    def add_dense(self, x: np.ndarray, weight: float = 1.0) -> None:
        """Add an uncompressed vector (e.g. a client that did not compress)."""
        x = np.asarray(x, np.float64).ravel()
        if x.shape != (self.d,) or not np.isfinite(x).all():
            raise ValueError("dense update has the wrong length or is not finite")
        self._plain += weight * x
        self.total_weight += weight
        self.count += 1

    def mean(self) -> np.ndarray:
        """The weighted mean of everything added (float32); one inverse HD per chunk."""
        if self.count == 0:
            raise ValueError("nothing was added")
        total = self._plain.copy()
        buf = np.empty(self.d, np.float32)
        for (seed, log2_chunk), acc in self._rotated.items():
            total += unrotate(acc.copy(), seed, make_layout(self.d, log2_chunk), buf)
        return (total / self.total_weight).astype(np.float32)
