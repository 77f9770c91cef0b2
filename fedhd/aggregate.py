"""Server-side weighted averaging of many blobs, with decode-after-sum.

For rotated methods every client of a round shares the rotation seed, so the server adds
the dequantized chunks of all clients in the rotated domain and runs ONE inverse
Hadamard transform per chunk at the end (DESIGN §2; TFF's ``commutes_with_sum``):
sum_k w_k D H r_k = D H (sum_k w_k r_k). Other methods are decoded and added directly.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np

from . import methods as registry
from .errors import DecodeError
from .layout import make_layout
from .methods.base import gpu, unrotate
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
    device : optional
        "cuda" or "cuda:N": sum rotated table methods (hd-dither, eden, ...) on that GPU
        and return ``mean()`` there as a torch tensor (``fedhd.gpu``).

    ``add`` validates a blob completely before touching the running sum, so a bad blob
    raises ``DecodeError`` and leaves the sum as it was.
    """

    def __init__(self, d: int, seed: int | None = None, method: str | None = None,
                 bits: float | None = None, device: Any = None):
        self.d = int(d)
        self.device = None if device is None or str(device) == "cpu" else device
        self.seed = seed
        self.method = None if method is None else registry.get(method)
        self.bits = bits
        self._plain = np.zeros(self.d, np.float64)
        # (seed, log2_chunk, on the GPU) -> running sum in the rotated domain
        self._rotated: dict[tuple[int, int, bool], Any] = {}
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
            on_gpu = self.device is not None and method.gpu_decode and gpu().supported(layout)
            key = (h.seed, h.log2_chunk, on_gpu)
            acc = self._rotated.get(key)
            fresh = acc is None
            with self._gpu_call():
                if acc is None:
                    acc = (gpu().zeros(layout.padded, np.float32) if on_gpu
                           else np.zeros(layout.padded, np.float32))
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

    def mean(self, out: Any = None) -> Any:
        """The weighted mean of everything added (float32); one inverse HD per chunk.

        Into ``out`` when given (a float32 vector of length d: numpy, or CUDA when the
        aggregator has a ``device``); else a new numpy vector, or with ``device`` a new
        torch tensor there.
        """
        if self.count == 0:
            raise ValueError("nothing was added")
        with self._gpu_call():
            return self._mean(out)

    def _gpu_call(self) -> Any:
        """``fedhd.gpu.call`` on the aggregator's GPU (nothing without one)."""
        return nullcontext() if self.device is None else gpu().call(
            gpu().parse_device(self.device))

    def _mean(self, out: Any) -> Any:
        if self.device is not None and out is None:
            out = gpu().new_torch_vector(self.d, self.device)
        if out is not None and (out.shape != (self.d,) or str(out.dtype).removeprefix(
                "torch.") != "float32"):
            raise ValueError(f"out must be a float32 vector of length {self.d}")
        if out is not None and not isinstance(out, np.ndarray) and self.device is not None:
            here, there = gpu().parse_device(self.device), gpu().device_index(out)
            if None not in (here, there) and here != there:
                raise ValueError(f"out is on cuda:{there}, the aggregator on cuda:{here}")
        if [k[2] for k in self._rotated] == [True] and not self._plain.any():
            # the usual GPU round: one rotated sum, finished on the device
            (seed, log2_chunk, _), acc = next(iter(self._rotated.items()))
            host = isinstance(out, np.ndarray)
            dev = gpu().empty(self.d, np.float32) if host else gpu().view(out)
            unrotate(gpu().copy(acc), seed, make_layout(self.d, log2_chunk), dev)
            gpu().divide(dev, self.total_weight)
            if host:
                dev.copy_to_host(out)
            return out
        total = self._plain.copy()
        buf = np.empty(self.d, np.float32)
        for (seed, log2_chunk, on_gpu), acc in self._rotated.items():
            layout = make_layout(self.d, log2_chunk)
            if on_gpu:
                dev = gpu().empty(self.d, np.float32)
                total += unrotate(gpu().copy(acc), seed, layout, dev).copy_to_host()
            else:
                total += unrotate(acc.copy(), seed, layout, buf)
        mean = (total / self.total_weight).astype(np.float32)
        if out is None:
            return mean
        if isinstance(out, np.ndarray):
            out[:] = mean
        else:
            gpu().view(out).copy_to_device(mean)
        return out
