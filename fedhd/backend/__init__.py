"""The device seam: where a call runs, picked once per call by ``Codec`` and ``Aggregator``.

A ``Backend`` holds vectors (numpy on the CPU, numba device views on a CUDA GPU) and runs
the kernels of the rotated table methods on them, with the same signatures everywhere (a
``Layout`` in, the same things out):

=========================  ===============================================================
``rotate_quantize``        encode: signs, FWHT, companded thresholds, packed b-bit codes
``dequantize_unrotate``    decode one blob: table look-up, FWHT, signs
``lookup_rotated``         decode-before-sum: acc += weight * table[code], rotated domain
``unrotate``               decode-after-sum: out = D H acc
``accumulate``/``finish``  the float64 running total of a mean and its float32 result
=========================  ===============================================================

``CPU`` (``fedhd.backend.cpu``, numba) runs everything; ``fedhd.backend.cuda`` (numba.cuda)
is imported only when a CUDA array or device shows up, and runs a method only when the
method says it has device kernels (``Method.device_encode`` / ``device_decode``) and the
layout fits them (``supports``). Everything else runs on ``CPU`` on a host copy.
"""

from __future__ import annotations

from typing import Any

from .cpu import CPU, Backend

__all__ = ["CPU", "Backend", "for_array", "for_device", "for_output", "is_cuda_array"]


def is_cuda_array(x: Any) -> bool:
    """Whether x lives on a CUDA device: a torch CUDA tensor, a CuPy array, a numba device
    array or any object with ``__cuda_array_interface__``."""
    if type(x).__module__.startswith("torch"):
        return bool(getattr(x, "is_cuda", False))
    return hasattr(x, "__cuda_array_interface__") or type(x).__module__.startswith("numba.cuda")


def for_array(x: Any) -> Backend:
    """The backend that holds x: the CUDA backend of x's GPU, else ``CPU``."""
    if is_cuda_array(x):
        from .cuda import CudaBackend

        return CudaBackend.of_array(x)
    return CPU


def for_device(device: Any) -> Backend:
    """The backend of a device name: None or "cpu" -> ``CPU``; "cuda" or "cuda:N" (or a
    torch.device) -> that GPU's."""
    if device is None or str(device) == "cpu":
        return CPU
    from .cuda import CudaBackend

    return CudaBackend.of_device(device)


def for_output(out: Any, device: Any) -> Backend:
    """Where a decode writes: the backend that holds ``out`` when one is given, else the
    one ``device`` names."""
    return for_array(out) if out is not None else for_device(device)
