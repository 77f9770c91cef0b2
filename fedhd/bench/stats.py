"""Error statistics of a method on a vector: vNMSE and the bias of the mean of N decodes."""

from __future__ import annotations

import numpy as np

from ..api import Codec


def vnmse_and_bias(x: np.ndarray, method: str, bits: float, n: int,
                   seed0: int = 0) -> tuple[float, float]:
    """Over seeds seed0 .. seed0+n-1 (each a fresh rotation and dither):

    vnmse = mean ||x_hat - x||^2 / ||x||^2, and
    bias  = ||mean(x_hat) - x||^2 / ||x||^2.
    For an unbiased method E[bias] = vnmse / n (the error of a mean of n independent
    estimates); a biased one stays above ||E x_hat - x||^2 / ||x||^2 however large n is.
    """
    codec = Codec(method, bits)
    x64 = x.astype(np.float64)
    norm2 = float(x64 @ x64)
    total = np.zeros_like(x64)
    err = 0.0
    out = np.empty(x.shape[0], np.float32)
    for s in range(seed0, seed0 + n):
        xh = codec.decode(codec.encode(x, seed=s), out=out)
        total += xh
        diff = xh - x64
        err += float(diff @ diff)
    mean = total / n
    return err / n / norm2, float(((mean - x64) ** 2).sum()) / norm2


def c_b(bits: float) -> float:
    """The paper's constant (pi sqrt(3) / 2) 4^-b."""
    return float(np.pi * np.sqrt(3) / 2 * 4.0 ** (-bits))
