"""Threads for the CPU kernels: a chunk range per thread (numba kernels release the GIL)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any

import numpy as np

#: Below this many coordinates a call runs on the calling thread: starting threads would
#: cost more than it saves (and Flower simulations already run clients in parallel).
PARALLEL_MIN = 1 << 18
_threads = max(1, int(os.environ.get("FEDHD_THREADS", min(os.cpu_count() or 1, 8))))
_pool: ThreadPoolExecutor | None = None


def set_threads(n: int) -> None:
    """Threads used for one large encode/decode (default: FEDHD_THREADS or the cores, <= 8)."""
    global _threads, _pool
    _threads = max(1, int(n))
    _pool = None


def get_threads() -> int:
    """Threads used for one large encode/decode."""
    return _threads


def over_chunks(kernel: Any, sizes: np.ndarray, *args: Any) -> None:
    """Run ``kernel(c0, c1, *args)`` over all chunks; large vectors are split into
    contiguous chunk ranges of about equal length, one per thread (kernels release the GIL).
    """
    global _pool
    C = sizes.shape[0]
    total = int(sizes.sum())
    if _threads == 1 or C < 2 or total < PARALLEL_MIN:
        kernel(0, C, *args)
        return
    cuts = np.searchsorted(np.cumsum(sizes), total * np.arange(1, _threads) / _threads) + 1
    bounds = np.unique(np.concatenate(([0], np.minimum(cuts, C), [C])))
    if _pool is None:
        _pool = ThreadPoolExecutor(_threads, thread_name_prefix="fedhd")
    futures = [_pool.submit(kernel, int(a), int(b), *args)
               for a, b in pairwise(bounds)]
    for f in futures:
        f.result()
