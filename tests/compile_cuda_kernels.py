"""Compile every kernel of fedhd.kernels.cuda for a Hopper GPU (sm_90) with numba-cuda's
real CUDA target, and assemble it with ptxas: no GPU needed, only numba-cuda's NVVM and
ptxas (``pip install "numba-cuda[cu12]"``). Run by tests/test_gpu.py in a subprocess
(the rest of the suite runs numba's simulator, which type-checks nothing).

Prints one line per kernel: name, registers per thread, spill bytes, shared memory bytes,
and the float32 fused multiply-adds in its PTX (the CPU rounds every float32 operation, so
a fused one would break bit-equality).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numba.cuda.dispatcher as dispatcher
from numba import cuda
from numba import types as T


class _Hopper:
    compute_capability = (9, 0)


# Kernels that call device functions compile them for the current device's capability;
# without a GPU there is none, so name one.
dispatcher.get_current_device = lambda: _Hopper()

from fedhd.kernels import cuda as CK  # noqa: E402

f32, f64, i64, u8, u64 = T.float32, T.float64, T.int64, T.uint8, T.uint64


def vec(t):
    return T.Array(t, 1, "C")


def mat(t):
    return T.Array(t, 2, "C")


IDX = vec(i64)  # the plan arrays
# the argument types fedhd.backend.cuda launches each kernel with
SIGNATURES = {
    "forward_subblocks": (vec(f32), i64, vec(f32), IDX, IDX, IDX, IDX, vec(u64), vec(f64)),
    "quantize_columns": (vec(f32), IDX, IDX, IDX, IDX, IDX, IDX, IDX, IDX, vec(f64), mat(f64),
                         f32, i64, IDX, vec(u8), vec(f32), vec(f64)),
    "lookup_subblocks": (vec(u8), IDX, mat(f32), i64, f32, i64, IDX, IDX, IDX, IDX,
                         vec(f32)),
    "inverse_columns": (vec(f32), i64, vec(f32), IDX, IDX, IDX, IDX, IDX, IDX, vec(u64)),
    "accumulate64": (vec(f64), vec(f32)),
    "mean32": (vec(f64), f64, vec(f32)),
}


def ptxas() -> str:
    import nvidia.cuda_nvcc

    return str(Path(nvidia.cuda_nvcc.__path__[0]) / "bin" / "ptxas")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        for name, sig in SIGNATURES.items():
            ptx, _ = cuda.compile_ptx(getattr(CK, name).py_func, T.void(*sig), cc=(9, 0))
            src = Path(tmp) / f"{name}.ptx"
            src.write_text(ptx)
            info = subprocess.run([ptxas(), "-arch=sm_90", "-v", str(src), "-o",
                                   str(src.with_suffix(".cubin"))],
                                  capture_output=True, text=True, check=True).stderr
            regs = int(re.search(r"Used (\d+) registers", info).group(1))
            spill = sum(int(v) for v in re.findall(r"(\d+) bytes spill", info))
            smem = re.search(r"(\d+) bytes smem", info)
            print(name, regs, spill, int(smem.group(1)) if smem else 0,
                  ptx.count("fma.rn.f32"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
