"""Server-side weighted averaging of many blobs, with decode-after-sum.

For methods that ``commutes_with_sum`` every client of a round shares the rotation seed,
so the server adds the dequantized chunks of all clients in the rotated domain and runs
ONE inverse Hadamard transform per chunk at the end (DESIGN §2; TFF's
``commutes_with_sum``): sum_k w_k D H r_k = D H (sum_k w_k r_k). Other methods are decoded
and added directly, in float64.

The sum never goes non-finite: each blob's decoder checks its fields, and ``add`` refuses
(``DecodeError``) a contribution whose bound would let a float32 rotated sum overflow,
before touching it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import backend
from . import methods as registry
from .errors import DecodeError, NormExceeded
from .layout import make_layout
from .methods.base import Method
from .rng import sign_keys
from .wire import as_bytes, read_header

#: Largest weight ``add`` takes (2**53: weights are example counts; a float64 sum of them
#: stays exact and finite, and weight * 2**96-bounded values stays finite in float64).
MAX_WEIGHT = 2.0**53
#: A rotated running sum stays below this bound per coordinate times the chunk length,
#: so that the unnormalized inverse FWHT of it (at most n times larger) is a finite float32.
_ROTATED_LIMIT = 2.0**126


class Aggregator:
    """Weighted mean of decoded blobs of length ``d``.

    Parameters
    ----------
    d : int
        Vector length every blob must have.
    seed : int, optional
        The round's rotation seed; when given, blobs that sum in the rotated domain must
        carry it.
    method, bits, log2_chunk : optional
        When given, every blob must match them.
    device : optional
        "cuda" or "cuda:N": sum methods with device kernels (hd-dither, eden, ...) on that
        GPU and return ``mean()`` there as a torch tensor (``fedhd.backend``).
    low_memory : bool (default: False)
        Add entropy-coded blobs (hd-dither-ec) without a work vector of d floats: each
        is decoded twice, once to check its streams and once into the sum (about 1.8x
        the decode time). The sum is the same bit for bit; with ``max_norm`` the measured
        norm may differ in its last bits (another summation order) and the blob goes in
        with one float32 rounding instead of two.

    ``add`` validates a blob completely before touching the running sum, so a bad blob
    raises ``DecodeError`` and leaves the sum as it was.
    """

    def __init__(self, d: int, seed: int | None = None, method: str | None = None,
                 bits: float | None = None, device: Any = None,
                 log2_chunk: int | None = None, low_memory: bool = False):
        self.d = int(d)
        self.low_memory = bool(low_memory)
        self.backend = backend.for_device(device)
        self.seed = seed
        self.method = None if method is None else registry.get(method)
        self.bits = bits
        self.log2_chunk = log2_chunk
        self._plain: np.ndarray | None = None  # float64 sum of directly decoded vectors
        # (seed, log2_chunk, backend name) -> [backend, running rotated sum, bound, scratch]
        self._rotated: dict[tuple[int, int, str], list[Any]] = {}
        self.total_weight = 0.0
        self.count = 0

    def add(self, blob: Any, weight: float = 1.0, max_norm: float | None = None,
            clip: bool = False) -> float | None:
        """Add weight * decode(blob) to the running sum; ``DecodeError``: nothing added.

        ``max_norm``: the server's bound on the update's L2 norm. Over it, the update is
        refused (``NormExceeded``, nothing added) or, with ``clip``, scaled down to it (the
        weight still counts in full). A norm the blob states (per-chunk norms) over the
        bound refuses it without decoding; otherwise the norm of the decoded update is
        measured (in the rotated domain for ``commutes_with_sum`` methods: no inverse
        transform), so codes chosen to exceed the stated norm cannot get through.
        Returns the measured norm when ``max_norm`` is given.
        """
        _check_weight(weight, max_norm)
        view = as_bytes(blob)
        method = self._method_of(view)
        h, layout, payload = method.open(view)
        if max_norm is not None and not clip:
            stated = method.stated_norm(payload, h, layout)
            if stated is not None and not stated <= max_norm:
                raise NormExceeded(stated, max_norm)
        norm = None
        if method.commutes_with_sum:
            part = method.rotated_contribution(payload, h, layout, self.low_memory)
            if max_norm is not None:
                norm = part.norm()
            w = weight * self._norm_factor(norm, max_norm, clip)
            be = (self.backend if self.backend.runs(method.device_decode, layout)
                  else backend.CPU)
            key = (h.seed, h.log2_chunk, be.name)
            slot = self._rotated.get(key)
            bound = (0.0 if slot is None else slot[2]) + w * part.max_abs
            if not bound * int(layout.sizes[0]) <= _ROTATED_LIMIT:
                raise DecodeError("this blob's values would overflow the round's sum")
            with be.call():
                acc = be.zeros(layout.padded, np.float32) if slot is None else slot[1]
                scratch = {} if slot is None else slot[3]  # methods' work vectors
                acc = part.add_to(acc, w, be, scratch)
            self._rotated[key] = [be, acc, bound, scratch]
        else:
            x = _decode_host(view).astype(np.float64)
            if not np.isfinite(x).all():
                raise DecodeError(f"{method.name} blob decodes to NaN or Inf")
            if max_norm is not None:
                norm = float(np.linalg.norm(x))
            self._add_plain(weight * self._norm_factor(norm, max_norm, clip) * x)
        self.total_weight += weight
        self.count += 1
        return norm

    def _method_of(self, view: memoryview) -> Method:
        """The blob's method, after checking its header against the round."""
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
        if self.log2_chunk is not None and h.log2_chunk != self.log2_chunk:
            raise DecodeError(f"blob has chunk exponent {h.log2_chunk}, the round uses "
                              f"{self.log2_chunk}")
        if method.commutes_with_sum and self.seed is not None and h.seed != self.seed:
            raise DecodeError(f"blob has rotation seed {h.seed}, the round uses {self.seed}")
        return method

    @staticmethod
    def _norm_factor(norm: float | None, max_norm: float | None, clip: bool) -> float:
        """1, or max_norm / norm for an update clipped to the bound (NormExceeded if not
        clipping)."""
        if norm is None or max_norm is None or norm <= max_norm:
            return 1.0
        if not clip:
            raise NormExceeded(norm, max_norm)
        return max_norm / norm

    def add_dense(self, x: np.ndarray, weight: float = 1.0, max_norm: float | None = None,
                  clip: bool = False) -> float | None:
        """Add an uncompressed update (e.g. a client that did not compress); ``max_norm``
        and ``clip`` as for ``add``."""
        _check_weight(weight, max_norm)
        x = np.asarray(x, np.float64).ravel()
        if x.shape != (self.d,) or not np.isfinite(x).all():
            raise ValueError("dense update has the wrong length or is not finite")
        norm = None if max_norm is None else float(np.linalg.norm(x))
        self._add_plain(weight * self._norm_factor(norm, max_norm, clip) * x)
        self.total_weight += weight
        self.count += 1
        return norm

    def _add_plain(self, wx: np.ndarray) -> None:
        total = wx if self._plain is None else self._plain + wx
        if not np.isfinite(total).all():  # checked before anything is kept
            raise DecodeError("weight * update overflows the round's sum")
        self._plain = total

    def mean(self, out: Any = None, release: bool = False) -> Any:
        """The weighted mean of everything added (float32); one inverse HD per chunk.

        Into ``out`` when given (a float32 vector of length d: numpy, or CUDA when the
        aggregator has a ``device``); else a new numpy vector, or with ``device`` a new
        torch tensor there. ``release=True`` (no ``out``): the mean takes the running sum's
        own memory when it can (one rotated sum, nothing else added: no new d-vector) and
        the aggregator is left empty, ready for a new round. ValueError if the mean is not
        finite (it cannot be, by the bounds ``add`` keeps).
        """
        if self.count == 0:
            raise ValueError("nothing was added")
        be = self.backend
        if out is not None and (release or tuple(out.shape) != (self.d,)
                                or str(out.dtype).removeprefix("torch.") != "float32"):
            raise ValueError(f"out must be a float32 vector of length {self.d}"
                             + (" (and not given with release=True)" if release else ""))
        sums = list(self._rotated.items())
        # one rotated sum on this backend: unrotate straight into the result (no float64
        # vector); with ``release`` on the host, into the sum's own memory
        single = len(sums) == 1 and self._plain is None and sums[0][1][0] is be
        # a host ``out`` on a GPU aggregator: finish on the device, then copy back
        staged = isinstance(out, np.ndarray) and be is not backend.CPU
        with be.call():
            if single and release and be is backend.CPU:
                result = target = sums[0][1][1][: self.d]
            elif staged:
                result, target = out, be.zeros(self.d, np.float32)
            else:
                result, target = be.output(self.d, out)
            if single:
                (seed, log2_chunk, _), (_, acc, _, _) = sums[0]
                layout = make_layout(self.d, log2_chunk)
                be.unrotate(acc, layout, sign_keys(seed, layout.chunks), target,
                            self.total_weight)
            else:
                total = be.zeros(self.d, np.float64)
                for (seed, log2_chunk, _), (acc_be, acc, _, _) in sums:
                    layout = make_layout(self.d, log2_chunk)
                    with acc_be.call():
                        part = acc_be.zeros(self.d, np.float32)
                        acc_be.unrotate(acc, layout, sign_keys(seed, layout.chunks), part)
                    be.accumulate(total, part if acc_be is be else acc_be.to_host(part))
                if self._plain is not None:
                    be.accumulate(total, self._plain)
                be.finish(total, self.total_weight, target)
            host = be.to_host(target)
            # a float64 sum of finite float32 values is finite: no d-sized mask needed
            if not np.isfinite(np.add.reduce(host, dtype=np.float64)):
                raise ValueError("the mean is not finite")
            if staged:
                out[:] = host
        if release:
            self._plain, self._rotated = None, {}
            self.total_weight, self.count = 0.0, 0
        return result


def _check_weight(weight: float, max_norm: float | None) -> None:
    if not (np.isfinite(weight) and 0 < weight <= MAX_WEIGHT):
        raise ValueError(f"weight must be in (0, 2**53], got {weight}")
    if max_norm is not None and not (np.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be finite and positive, got {max_norm}")


def _decode_host(view: memoryview) -> np.ndarray:
    from .api import decode

    return decode(view)
