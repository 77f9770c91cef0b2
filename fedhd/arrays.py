"""Pack a model's arrays (a list or a dict, e.g. a state dict) into one float vector.

``flatten(arrays)`` returns the float32 concatenation of every floating array and a
``Spec`` that restores the structure: names, shapes, dtypes, and every non-float array
(integer counters, boolean masks) carried bit-exact beside the vector. Float arrays come
back in their own dtype; non-float arrays come back identical.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _to_numpy(a: Any) -> np.ndarray:
    if type(a).__module__.startswith("torch"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _is_float(a: np.ndarray) -> bool:
    return a.dtype.kind == "f"


@dataclass
class Spec:
    """What ``unflatten`` needs: keys (None for a list), shapes, dtypes, exact extras."""

    keys: list[str] | None
    shapes: list[tuple[int, ...]]
    dtypes: list[str]
    is_float: list[bool]
    extras: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Coordinates in the float vector."""
        return sum(int(np.prod(s)) for s, f in zip(self.shapes, self.is_float) if f)


def flatten(arrays: Mapping[str, Any] | Sequence[Any]) -> tuple[np.ndarray, Spec]:
    """Concatenate the float arrays into one float32 vector; keep the rest exactly."""
    if isinstance(arrays, Mapping):
        names = [str(k) for k in arrays]
        keys: list[str] | None = names
        values = [_to_numpy(arrays[k]) for k in names]
    else:
        keys = None
        values = [_to_numpy(a) for a in arrays]
    spec = Spec(keys, [v.shape for v in values], [v.dtype.str for v in values],
                [_is_float(v) for v in values])
    floats = []
    for i, v in enumerate(values):
        if spec.is_float[i]:
            floats.append(v.astype(np.float32, copy=False).ravel())
        else:
            spec.extras[i] = v.copy()
    vec = np.concatenate(floats) if floats else np.zeros(0, np.float32)
    return vec, spec


def unflatten(vec: np.ndarray, spec: Spec) -> dict[str, np.ndarray] | list[np.ndarray]:
    """Inverse of ``flatten``: the arrays in their shapes and dtypes."""
    vec = np.asarray(vec)
    if vec.shape != (spec.size,):
        raise ValueError(f"vector has shape {vec.shape}, the spec needs ({spec.size},)")
    out: list[np.ndarray] = []
    pos = 0
    for i, (shape, dt) in enumerate(zip(spec.shapes, spec.dtypes)):
        if spec.is_float[i]:
            n = int(np.prod(shape))
            out.append(vec[pos:pos + n].astype(np.dtype(dt)).reshape(shape))
            pos += n
        else:
            out.append(spec.extras[i].copy())
    if spec.keys is None:
        return out
    return dict(zip(spec.keys, out, strict=True))
