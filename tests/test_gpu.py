"""The CUDA backend (fedhd.backend.cuda, fedhd.kernels.cuda) against the CPU kernels.

Without a GPU these run in numba's CUDA simulator (tests/conftest.py), which checks the
kernels' logic: indexing, shared memory, synchronization, packing. Tests marked ``gpu``
need a real CUDA device (torch or CuPy arrays, large vectors) and skip elsewhere.

The GPU runs the same float32 butterflies in the same order as the CPU and computes the
thresholds from the same float64 values, so blobs should match byte for byte; the tests
allow what the issue allows: codes differing where rounding lands on a level boundary,
at most 1e-4 of them, and scales within float32 rounding of the per-chunk sums.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fedhd
from fedhd import rng
from fedhd.wire import HEADER_BYTES

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
cuda = pytest.importorskip("numba.cuda")
real_gpu = pytest.mark.skipif(SIMULATED or not cuda.is_available(),
                              reason="needs a CUDA GPU")
TABLE_METHODS = ["hd-dither", "drive", "eden", "turboquant", "hd-sr"]


def hd_encode(x, *args, **kw):
    """``fedhd.encode`` with hd-dither unless a method is named (these tests are about it)."""
    if len(args) < 3:
        kw.setdefault("method", "hd-dither")
    return fedhd.encode(x, *args, **kw)


@pytest.fixture(autouse=True)
def _simulator_settings():
    """The simulator polls its threads: a short GIL switch interval makes it ~5x faster.
    Its uint64 arithmetic goes through numpy scalars, which warn when they wrap."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
        yield
    sys.setswitchinterval(old)


def _vector(d: int, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    return (g.standard_normal(d) * np.exp(g.standard_normal(d))).astype(np.float32)


def _chunk_layout() -> tuple[int, int]:
    """(d, log2_chunk) with multi-row chunks, every tail size and padding."""
    from fedhd.kernels.cuda import MAX_LOG2_CHUNK, SUB

    log2_chunk = min(MAX_LOG2_CHUNK, SUB.bit_length() + 1)  # 4 rows per full chunk
    return (1 << log2_chunk) + (1 << (log2_chunk - 1)) + 32 + 7, log2_chunk


def _compare_blobs(a: bytes, b: bytes) -> float:
    """Fraction of payload bytes that differ; header bytes and lengths must be equal."""
    assert len(a) == len(b)
    assert a[:HEADER_BYTES - 4] == b[:HEADER_BYTES - 4]
    x, y = np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)
    return float((x[HEADER_BYTES:] != y[HEADER_BYTES:]).mean())


def test_device_splitmix_golden():
    """The kernels' SplitMix64 gives the published sequence and rng.splitmix's values."""
    from fedhd.kernels.cuda import splitmix

    @cuda.jit
    def outputs(state, out):
        i = cuda.grid(1)
        if i < out.shape[0]:
            out[i] = splitmix(state, i)

    got = cuda.device_array(40, np.uint64)
    outputs[1, 64](np.uint64(0), got)
    host = got.copy_to_host()
    assert int(host[0]) == 0xE220A8397B1DCDAF and int(host[1]) == 0x6E789E6AA1B965F4
    key = int(rng.sign_keys(7, 1)[0])
    outputs[1, 64](np.uint64(key), got)
    np.testing.assert_array_equal(got.copy_to_host(), rng.splitmix(np.uint64(key),
                                                                   np.arange(40)))


@pytest.mark.parametrize("bits", range(1, 9))
def test_gpu_encode_matches_cpu(bits):
    d, log2_chunk = _chunk_layout()
    x = _vector(d, bits)
    cpu = hd_encode(x, bits=bits, seed=11, dither_seed=5, log2_chunk=log2_chunk)
    gpu = hd_encode(cuda.to_device(x), bits=bits, seed=11, dither_seed=5,
                       log2_chunk=log2_chunk)
    assert _compare_blobs(cpu, gpu) <= 1e-4
    # and the GPU blob decodes on the CPU to what the CPU blob decodes to
    np.testing.assert_allclose(fedhd.decode(gpu), fedhd.decode(cpu), rtol=0,
                               atol=1e-6 * np.abs(x).max())


@pytest.mark.parametrize("method", TABLE_METHODS)
def test_gpu_decode_matches_cpu(method):
    d, log2_chunk = _chunk_layout()
    x = _vector(d, 1)
    bits = 1 if method == "drive" else 2
    blob = hd_encode(x, bits=bits, seed=3, method=method, log2_chunk=log2_chunk)
    out = cuda.device_array(d, np.float32)
    assert fedhd.decode(blob, out=out) is out
    # the same float32 operations in the same order: equal to the last bit
    np.testing.assert_array_equal(out.copy_to_host(), fedhd.decode(blob))


@pytest.mark.parametrize("method", ["identity", "qsgd", "hd-dither-ec"])
def test_methods_without_kernels_take_host_copies(method):
    x = _vector(3000, 2)
    blob = hd_encode(cuda.to_device(x), seed=1, method=method)
    assert blob == hd_encode(x, seed=1, method=method)
    out = cuda.device_array(3000, np.float32)
    fedhd.decode(blob, out=out)
    np.testing.assert_array_equal(out.copy_to_host(), fedhd.decode(blob))

def test_long_chunks_take_the_host_kernels():
    from fedhd.backend import cuda as gpu
    from fedhd.kernels.cuda import MAX_LOG2_CHUNK
    from fedhd.layout import make_layout

    lc = MAX_LOG2_CHUNK + 1
    d = (1 << lc) + 100
    assert not gpu.supported(make_layout(d, lc))
    x = _vector(d, 3)
    blob = hd_encode(cuda.to_device(x), bits=3, seed=2, log2_chunk=lc)
    assert blob == hd_encode(x, bits=3, seed=2, log2_chunk=lc)
    out = cuda.device_array(d, np.float32)
    np.testing.assert_array_equal(fedhd.decode(blob, out=out).copy_to_host(),
                                  fedhd.decode(blob))


@pytest.mark.parametrize("d", [1, 33, 100])
def test_tiny_vectors_on_the_gpu(d):
    """Vectors shorter than a sub-block: one padded 32-chunk and binary tails."""
    from fedhd.backend import cuda as gpu
    from fedhd.layout import make_layout

    assert gpu.supported(make_layout(d, 16))  # the longest chunk decides, not log2_chunk
    x = _vector(d, 9)
    blob = hd_encode(cuda.to_device(x), bits=3, seed=6)
    assert blob == hd_encode(x, bits=3, seed=6)
    out = cuda.device_array(d, np.float32)
    np.testing.assert_array_equal(fedhd.decode(blob, out=out).copy_to_host(),
                                  fedhd.decode(blob))


def test_gpu_aggregator_matches_cpu():
    d, log2_chunk = _chunk_layout()
    xs = [_vector(d, 10 + k) for k in range(3)]
    blobs = [hd_encode(x, bits=2, seed=9, dither_seed=k, log2_chunk=log2_chunk)
             for k, x in enumerate(xs)]
    cpu, gpu = fedhd.Aggregator(d, seed=9), fedhd.Aggregator(d, seed=9, device="cuda")
    for k, b in enumerate(blobs):
        cpu.add(b, weight=k + 1.0)
        gpu.add(b, weight=k + 1.0)
    with pytest.raises(fedhd.DecodeError):  # a bad blob leaves the GPU sum as it was
        gpu.add(blobs[0][:-1])
    out = cuda.device_array(d, np.float32)
    assert gpu.mean(out=out) is out
    np.testing.assert_array_equal(out.copy_to_host(), cpu.mean())
    # a method without GPU kernels in the same round: summed on the host, same mean
    extra = hd_encode(xs[0], method="identity")
    cpu.add(extra)
    gpu.add(extra)
    np.testing.assert_array_equal(gpu.mean(out=out).copy_to_host(), cpu.mean())


def test_device_selection():
    """"cuda:N" picks GPU N for the kernels and the allocators (the simulator has one)."""
    from fedhd.backend import cuda as gpu

    assert gpu.parse_device("cuda") is None and gpu.parse_device("cuda:1") == 1
    d, log2_chunk = _chunk_layout()
    x = _vector(d, 12)
    blob = hd_encode(x, bits=2, seed=1, log2_chunk=log2_chunk)
    agg = fedhd.Aggregator(d, device="cuda:0")
    agg.add(blob, weight=2.0)
    host = np.empty(d, np.float32)
    assert agg.mean(out=host) is host  # a host buffer: summed on the GPU, copied back
    np.testing.assert_allclose(host, fedhd.decode(blob), rtol=0, atol=1e-6 * np.abs(x).max())


def test_bad_device_input_is_refused():
    with pytest.raises(ValueError, match="NaN or Inf"):
        hd_encode(cuda.to_device(np.array([1.0, np.nan] * 50, np.float32)), bits=2)
    with pytest.raises(TypeError, match="floating"):
        hd_encode(cuda.to_device(np.arange(100, dtype=np.int32)), bits=2)
    with pytest.raises(TypeError, match="float32"):
        hd_encode(cuda.to_device(np.ones(100, np.float64)), bits=2)
    with pytest.raises(ValueError, match="1-D"):
        hd_encode(cuda.to_device(np.ones((10, 10), np.float32)), bits=2)
    blob = hd_encode(np.ones(100, np.float32), bits=2)
    with pytest.raises(ValueError, match="length 100"):
        fedhd.decode(blob, out=cuda.device_array(99, np.float32))
    out = cuda.device_array(100, np.float32)
    out.copy_to_device(np.full(100, 7.0, np.float32))
    for bad in (blob[:-1], blob[:40] + bytes([blob[40] ^ 1]) + blob[41:], b"garbage"):
        with pytest.raises(fedhd.DecodeError):
            fedhd.decode(bad, out=out)
    assert (out.copy_to_host() == 7.0).all()  # untouched


def test_default_block_sizes_in_a_fresh_simulator():
    """The suite shrinks the blocks for the simulator; this runs the shipped sizes
    (256 threads, 4096-coordinate sub-blocks, 16-row chunks) once, in a subprocess."""
    if not SIMULATED:
        pytest.skip("on a GPU the whole module runs the shipped sizes")
    code = """
import sys, warnings
import numpy as np
from numba import cuda
import fedhd
from fedhd.kernels import cuda as CK
sys.setswitchinterval(1e-4)
warnings.filterwarnings("ignore", "overflow encountered")
assert (CK.TPB, CK.SUB, CK.MAX_LOG2_CHUNK) == (256, 4096, 16)
d = 2 * 4096 + 96 + 3
x = np.random.default_rng(0).standard_normal(d).astype(np.float32)
cpu = fedhd.encode(x, bits=3, seed=4, method="hd-dither", log2_chunk=13)
assert fedhd.encode(cuda.to_device(x), bits=3, seed=4, method="hd-dither", log2_chunk=13) == cpu
out = cuda.device_array(d, np.float32)
np.testing.assert_array_equal(fedhd.decode(cpu, out=out).copy_to_host(), fedhd.decode(cpu))
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDHD_CUDA_")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_kernels_compile_for_hopper():
    """numba-cuda's real target type-checks and compiles every kernel for sm_90 (the
    simulator checks no types: it once passed a shared array whose size was not a
    constant), and ptxas assembles it with no register spills and <= 64 registers per
    thread, so a 256-thread block takes at most a quarter of an SM's 64K registers. No
    float32 multiply-add may be fused (it once was, in the weighted sum of the server)."""
    from importlib.util import find_spec

    if find_spec("numba_cuda") is None or find_spec("nvidia.cuda_nvcc") is None:
        pytest.skip('needs numba-cuda with NVVM and ptxas: pip install "numba-cuda[cu12]"')
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FEDHD_CUDA_", "NUMBA_ENABLE_CUDASIM"))}
    script = os.path.join(os.path.dirname(__file__), "compile_cuda_kernels.py")
    r = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {name: tuple(map(int, rest)) for name, *rest in map(str.split, r.stdout.splitlines())}
    assert set(rows) == {"forward_subblocks", "quantize_columns", "lookup_subblocks",
                         "inverse_columns", "accumulate64", "mean32"}
    for name, (regs, spill, _smem, fma32) in rows.items():
        assert spill == 0 and regs <= 64, (name, regs, spill)
        assert fma32 == 0, f"{name}: float32 fma in the PTX, the CPU rounds twice"


def test_gpu_speed_bench_runs(capsys):
    """A smoke run of ``python -m fedhd bench speed --device cuda`` (in the simulator its
    times mean nothing): every row is filled and the GPU blob equals the CPU's."""
    from fedhd.bench.speed import main

    assert main(["--device", "cuda", "--dims", "777", "--repeat", "1"]) == 0
    text = capsys.readouterr().out
    row = text.strip().splitlines()[-1].split()
    assert row[0] == "777" and float(row[-1]) == 0.0  # no payload byte differs


def test_torch_fwht_baseline_is_the_hadamard_transform():
    """The benchmark's torch butterfly baseline computes H x per chunk (Sylvester order)."""
    torch = pytest.importorskip("torch")
    from scipy.linalg import hadamard

    from fedhd.bench.gpu_speed import torch_fwht

    x = _vector(4 * 64, 7).astype(np.float64)
    got = torch_fwht(torch.from_numpy(x), 6).numpy().reshape(4, 64)
    np.testing.assert_allclose(got, x.reshape(4, 64) @ hadamard(64).T, rtol=1e-12,
                               atol=1e-9)


# --- a real GPU: torch and CuPy arrays, large vectors ----------------------------------------


@real_gpu
@pytest.mark.gpu
def test_torch_cuda_tensors_zero_copy_and_dtypes():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    x = _vector(100_003, 4)
    t = torch.from_numpy(x).cuda()
    blob = hd_encode(t, bits=2, seed=1)
    assert _compare_blobs(blob, hd_encode(x, bits=2, seed=1)) <= 1e-4
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        host = t.to(dt).float().cpu().numpy()
        assert _compare_blobs(hd_encode(t.to(dt), bits=2, seed=1),
                              hd_encode(host, bits=2, seed=1)) <= 1e-4
    strided = torch.from_numpy(np.repeat(x, 2)).cuda()[::2]
    assert _compare_blobs(hd_encode(strided, bits=2, seed=1), blob) <= 1e-4
    y = fedhd.decode(blob, device="cuda")
    assert isinstance(y, torch.Tensor) and y.is_cuda and y.dtype == torch.float32
    np.testing.assert_array_equal(y.cpu().numpy(), fedhd.decode(blob))

    with pytest.raises(TypeError):
        hd_encode(torch.arange(10, device="cuda"), bits=2)


@real_gpu
@pytest.mark.gpu
def test_cupy_arrays():
    cupy = pytest.importorskip("cupy")
    x = _vector(70_001, 5)
    blob = hd_encode(cupy.asarray(x), bits=4, seed=2)
    assert _compare_blobs(blob, hd_encode(x, bits=4, seed=2)) <= 1e-4
    out = cupy.empty(x.shape[0], cupy.float32)
    assert fedhd.decode(blob, out=out) is out
    np.testing.assert_array_equal(cupy.asnumpy(out), fedhd.decode(blob))


@real_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("d", [1 << 20, (1 << 22) + 12345])
def test_large_vectors_codes_agree(d):
    """Codes differ from the CPU's only where float rounding lands on a boundary."""
    torch = pytest.importorskip("torch")
    x = _vector(d, 6)
    cpu = hd_encode(x, bits=2, seed=8)
    gpu = hd_encode(torch.from_numpy(x).cuda(), bits=2, seed=8)
    frac = _compare_blobs(cpu, gpu)
    print(f"d={d}: differing payload bytes {frac:.2e}")
    assert frac <= 1e-4
    agg = fedhd.Aggregator(d, seed=8, device="cuda")
    ref = fedhd.Aggregator(d, seed=8)
    for k in range(4):
        b = hd_encode(torch.from_numpy(x).cuda(), bits=2, seed=8, dither_seed=k)
        agg.add(b, weight=k + 0.3)  # weights != 1: the product must round before the sum
        ref.add(b, weight=k + 0.3)
    np.testing.assert_array_equal(agg.mean().cpu().numpy(), ref.mean())


@real_gpu
@pytest.mark.gpu
def test_side_streams():
    """Inputs produced, and outputs read, on a torch side stream (not ordered with the
    legacy default stream): fedhd's calls wait for both ends."""
    torch = pytest.importorskip("torch")
    d = (1 << 22) + 3
    x = _vector(d, 11)
    want = hd_encode(x, bits=2, seed=4)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for _ in range(3):
            t = torch.from_numpy(x).to("cuda", non_blocking=True) * 1.0  # queued on s
            assert _compare_blobs(hd_encode(t.half().float(), bits=2, seed=4),
                                  hd_encode(x.astype(np.float16).astype(np.float32),
                                               bits=2, seed=4)) <= 1e-4
            assert _compare_blobs(hd_encode(t, bits=2, seed=4), want) <= 1e-4
            out = torch.full((d,), float("nan"), device="cuda")
            fedhd.decode(want, out=out)
            got = out.cpu().numpy()  # read on s right after the call
            np.testing.assert_array_equal(got, fedhd.decode(want))

