"""Speed benchmark: encode / decode time as a ratio to np.copyto of the same vector.

Every figure is a ratio to a baseline timed in the same run (best of ``--repeat``), so
it transfers across machines better than seconds do.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np

from .. import rng
from ..api import Codec, methods
from ..kernels import transform_pack as K
from ..layout import make_layout
from ..methods import get

DEFAULT_DIMS = [1 << 20, 1 << 24, 10_000_000]


def best_time(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time of ``repeat`` calls, seconds (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_codec(method: str, bits: float, d: int, repeat: int) -> dict[str, object]:
    x = np.random.default_rng(0).standard_normal(d).astype(np.float32)
    dst = np.empty_like(x)
    codec = Codec(method, bits)
    blob = codec.encode(x, seed=1)
    t_copy = best_time(lambda: np.copyto(dst, x), repeat)
    t_enc = best_time(lambda: codec.encode(x, seed=1), repeat)
    t_dec = best_time(lambda: codec.decode(blob, out=dst), repeat)
    return {"method": method, "bits": bits, "d": d, "copy_ms": 1e3 * t_copy,
            "encode_ms": 1e3 * t_enc, "decode_ms": 1e3 * t_dec,
            "encode_over_copy": t_enc / t_copy, "decode_over_copy": t_dec / t_copy,
            "bits_per_coord": 8 * len(blob) / d}


def bench_dense_rotation(d: int, repeat: int, qr: bool) -> dict[str, object]:
    """A dense random rotation (QR of a Gaussian matrix, then mat-vec) against the FWHT.

    The QR costs Theta(d^3) time: with ``qr=False`` the mat-vec runs on the Gaussian
    matrix itself (the same Theta(d^2) cost and memory) and the QR time is not measured.
    """
    g = np.random.default_rng(0)
    t = time.perf_counter()
    q = g.standard_normal((d, d), dtype=np.float32)
    if qr:
        q, _ = np.linalg.qr(q)
    t_qr = time.perf_counter() - t if qr else float("nan")
    x = g.standard_normal(d).astype(np.float32)
    t_mv = best_time(lambda: q @ x, repeat)
    lay = make_layout(d, max(5, int(np.log2(d))))
    keys = rng.sign_keys(1, lay.chunks)
    out = np.empty(lay.padded, np.float32)
    t_hd = best_time(lambda: K.rotate(x, d, lay.starts, lay.sizes, keys, out), repeat)
    return {"d": d, "qr_s": t_qr, "dense_matvec_ms": 1e3 * t_mv, "hd_ms": 1e3 * t_hd,
            "matvec_over_hd": t_mv / t_hd, "dense_matrix_mb": d * d * 4 / 2**20}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedhd bench speed", description=__doc__)
    p.add_argument("--methods", nargs="*", default=None, help="default: all registered")
    p.add_argument("--bits", type=float, default=2)
    p.add_argument("--dims", type=int, nargs="*", default=None,
                   help=f"default: {DEFAULT_DIMS} (cpu), 2**20, 2**24, 2**27 (cuda)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: hd-dither on the GPU against a device-to-device copy")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--dense", type=int, nargs="*", default=[4096, 16384],
                   help="dims of the dense-rotation comparison (empty list to skip)")
    p.add_argument("--qr-max", type=int, default=4096,
                   help="time the Theta(d^3) QR only up to this d")
    p.add_argument("--json", default=None, help="write the rows to this file")
    a = p.parse_args(argv)
    if a.device == "cuda":
        from . import gpu_speed

        rows = gpu_speed.run(a.dims or gpu_speed.GPU_DIMS, int(a.bits), a.repeat, True)
    else:
        rows = bench_cpu(a)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def bench_cpu(a: argparse.Namespace) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    print(f"{'method':<14}{'bits':>5}{'d':>10}{'copy ms':>9}{'enc ms':>9}{'dec ms':>9}"
          f"{'enc/copy':>10}{'dec/copy':>10}{'bits/coord':>11}")
    for d in a.dims or DEFAULT_DIMS:
        for name in a.methods or methods():
            m = get(name)
            bits = a.bits
            try:
                bits = m.check_bits(bits)
            except ValueError:
                bits = m.default_bits
            r = bench_codec(name, bits, d, a.repeat)
            rows.append(r)
            print(f"{name:<14}{bits:>5g}{d:>10}{r['copy_ms']:>9.1f}{r['encode_ms']:>9.1f}"
                  f"{r['decode_ms']:>9.1f}{r['encode_over_copy']:>10.1f}"
                  f"{r['decode_over_copy']:>10.1f}{r['bits_per_coord']:>11.3f}", flush=True)
    for d in a.dense:
        r = bench_dense_rotation(d, a.repeat, d <= a.qr_max)
        rows.append(r)
        print(f"dense rotation d={d}: QR {r['qr_s']:.1f} s, {r['dense_matrix_mb']:.0f} MB; "
              f"mat-vec {r['dense_matvec_ms']:.2f} ms vs HD {r['hd_ms']:.3f} ms "
              f"({r['matvec_over_hd']:.0f}x)", flush=True)
    return rows
