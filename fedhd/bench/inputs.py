"""The adversarial input family every error figure is measured on (worst case over it).

Gaussian, k-sparse (first k entries 1, k = 1..16), constant, Student-t with 2 degrees of
freedom, and blocks whose scales run from 1e-3 to 1e3. Deterministic given (name, d, seed).
"""

from __future__ import annotations

import numpy as np


def input_family(d: int, seed: int = 0) -> dict[str, np.ndarray]:
    """name -> float32 vector of length d."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {"gaussian": rng.standard_normal(d)}
    for k in range(1, 17):
        v = np.zeros(d)
        v[: min(k, d)] = 1.0
        out[f"sparse-{k}"] = v
    out["constant"] = np.ones(d)
    out["student-t2"] = rng.standard_t(2, size=d)
    blocks = np.array_split(np.arange(d), 7)
    v = rng.standard_normal(d)
    for scale, idx in zip(10.0 ** np.arange(-3, 4), blocks):
        v[idx] *= scale
    out["blocks"] = v
    return {k: v.astype(np.float32) for k, v in out.items()}
