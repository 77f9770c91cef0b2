"""The compute kernels, named by what they do; methods reach them through ``fedhd.backend``
(the rotated table methods) or call the CPU-only ones directly.

- ``transform_pack``: FWHT with the rotation signs, b-bit quantization and code packing,
  table look-up (numba, CPU);
- ``rounding``: stochastic rounding, nearest-centroid quantization, plain look-up and
  integer packing (numba, CPU);
- ``rans``: dithered lattice quantization and the rANS coder of hd-dither-ec (numba, CPU);
- ``cuda``: the GPU twins of ``transform_pack`` (numba.cuda; imported only with a GPU);
- ``threads``: how a CPU kernel is split over threads (``set_threads``).
"""

from .threads import get_threads, set_threads

__all__ = ["get_threads", "set_threads"]
