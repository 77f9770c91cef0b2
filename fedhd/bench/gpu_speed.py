"""GPU speed: hd-dither encode/decode on a CUDA device as ratios to a device-to-device copy
of the same float32 vector, timed in the same run (``python -m fedhd bench speed --device
cuda``).

Per d it reports, each the best of ``repeat`` synchronized wall times:

- ``copy``: a device-to-device copy of the d float32 coordinates (the baseline);
- ``enc kern`` / ``dec kern``: the encode / decode kernels alone, on device-resident data
  (the vector in, the packed codes out; and back);
- ``encode`` / ``decode``: the whole ``fedhd.encode(tensor)`` / ``fedhd.decode(blob, out=)``
  call, with the host side of a blob (the b d / 8 bytes crossing PCIe, CRC-32, header);
- ``torch fwht``: a butterfly FWHT of the same chunks written with torch tensor ops;
- ``diff``: the fraction of payload bytes that differ from the CPU encoder's blob.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from .. import rng
from ..api import decode, encode
from ..grid import grid
from ..layout import DEFAULT_LOG2_CHUNK, code_offsets
from ..methods.hd_dither import METHOD as HD_DITHER
from ..wire import HEADER_BYTES

GPU_DIMS = [1 << 20, 1 << 24, 1 << 27]


def best_time(fn: Callable[[], object], repeat: int, sync: Callable[[], None]) -> float:
    """Best synchronized wall time of ``repeat`` calls, seconds (after two warm-ups)."""
    fn()
    fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def torch_fwht(x, log2_chunk: int):
    """Unnormalized FWHT of each 2**log2_chunk chunk of the torch tensor x (its length a
    multiple of that): radix-2 butterflies as tensor ops, one pass over memory per level."""
    import torch

    n = 1 << log2_chunk
    y = x.reshape(-1, n)
    h = 1
    while h < n:
        v = y.view(-1, n // (2 * h), 2, h)
        y = torch.stack((v[:, :, 0] + v[:, :, 1], v[:, :, 0] - v[:, :, 1]), dim=2)
        y = y.view(-1, n)
        h *= 2
    return y.reshape(-1)


def device_name() -> str:
    from numba import cuda

    get = getattr(cuda, "get_current_device", None)
    name = getattr(get(), "name", "numba CUDA simulator") if get else "numba CUDA simulator"
    return name.decode() if isinstance(name, bytes) else str(name)


def bench_gpu(d: int, bits: int, repeat: int, check_cpu: bool) -> dict[str, object]:
    """One row of the table. Runs in numba's CUDA simulator too (tests: a smoke run, no
    timing meaning); the torch baseline needs torch with CUDA and is NaN without it."""
    from numba import cuda

    from ..backend import cuda as gpu
    from ..kernels.cuda import MAX_LOG2_CHUNK

    sync = cuda.synchronize
    lc = min(DEFAULT_LOG2_CHUNK, MAX_LOG2_CHUNK)
    x_host = np.random.default_rng(0).standard_normal(d).astype(np.float32)
    x = gpu.upload(x_host)
    dst = gpu.empty(d, np.float32)
    t_copy = best_time(lambda: dst.copy_to_device(x), repeat, sync)

    blob = encode(x, bits=bits, seed=1, method="hd-dither", log2_chunk=lc)
    t_enc = best_time(lambda: encode(x, bits=bits, seed=1, method="hd-dither", log2_chunk=lc),
                      repeat, sync)
    method = HD_DITHER
    h, layout, payload = method.open(memoryview(blob))
    C = layout.chunks
    keys = gpu.upload(rng.sign_keys(1, C))
    thr = gpu.upload(grid(bits).thresholds(rng.dithers(1, C)))
    off = gpu.upload(code_offsets(layout, bits, 4 * C))
    codes = gpu.empty(len(payload), np.uint8)
    t_enc_k = best_time(lambda: gpu.encode_kernels(x, layout, keys, thr, grid(bits).clip,
                                                   bits, off, codes), repeat, sync)
    tables = gpu.upload(method.tables(payload, h, layout))
    dev_codes = gpu.upload(np.frombuffer(payload, np.uint8))
    out = gpu.empty(d, np.float32)
    t_dec_k = best_time(lambda: gpu.decode_kernels(dev_codes, off, tables, bits, layout, keys,
                                                   out), repeat, sync)
    t_dec = best_time(lambda: decode(blob, out=out), repeat, sync)
    t_fwht = torch_fwht_time(x_host, lc, repeat)

    diff = float("nan")
    if check_cpu:
        cpu = np.frombuffer(encode(x_host, bits=bits, seed=1, method="hd-dither",
                                   log2_chunk=lc), np.uint8)
        diff = float((cpu[HEADER_BYTES:] != np.frombuffer(blob, np.uint8)[HEADER_BYTES:]).mean())
    ms = 1e3
    return {"device": device_name(), "method": "hd-dither", "bits": bits, "d": d,
            "log2_chunk": lc, "copy_ms": ms * t_copy, "encode_kernels_ms": ms * t_enc_k,
            "decode_kernels_ms": ms * t_dec_k, "encode_ms": ms * t_enc, "decode_ms": ms * t_dec,
            "torch_fwht_ms": ms * t_fwht, "encode_kernels_over_copy": t_enc_k / t_copy,
            "decode_kernels_over_copy": t_dec_k / t_copy, "encode_over_copy": t_enc / t_copy,
            "decode_over_copy": t_dec / t_copy, "torch_fwht_over_copy": t_fwht / t_copy,
            "payload_bytes_differing_from_cpu": diff}


def torch_fwht_time(x_host: np.ndarray, log2_chunk: int, repeat: int) -> float:
    """Best time of ``torch_fwht`` on the zero-padded vector on torch's CUDA device (NaN
    without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return float("nan")
    if not torch.cuda.is_available():
        return float("nan")
    n = 1 << log2_chunk
    padded = torch.zeros(-(-x_host.shape[0] // n) * n, device="cuda")
    padded[: x_host.shape[0]] = torch.from_numpy(x_host)
    return best_time(lambda: torch_fwht(padded, log2_chunk), repeat, torch.cuda.synchronize)


def run(dims: list[int], bits: int, repeat: int, check_cpu: bool) -> list[dict[str, object]]:
    from numba import cuda

    if not cuda.is_available():
        raise SystemExit("--device cuda: numba sees no CUDA device")
    print(f"# {device_name()}: hd-dither b={bits}, ratios to a device-to-device copy of the "
          f"same float32 vector (best of {repeat})")
    print(f"{'d':>10}{'copy ms':>9}{'enc kern':>10}{'dec kern':>10}{'encode':>9}"
          f"{'decode':>9}{'torch fwht':>12}{'diff':>10}")
    rows = []
    for d in dims:
        r = bench_gpu(d, bits, repeat, check_cpu)
        rows.append(r)
        print(f"{d:>10}{r['copy_ms']:>9.3f}{r['encode_kernels_over_copy']:>9.1f}x"
              f"{r['decode_kernels_over_copy']:>9.1f}x{r['encode_over_copy']:>8.1f}x"
              f"{r['decode_over_copy']:>8.1f}x{r['torch_fwht_over_copy']:>11.1f}x"
              f"{r['payload_bytes_differing_from_cpu']:>10.1e}", flush=True)
    return rows
