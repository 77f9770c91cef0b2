"""The CUDA backend: CUDA arrays in, the same blobs out (kernels in ``fedhd.kernels.cuda``).

``fedhd.encode`` takes it for a torch CUDA tensor, a CuPy array or any object with
``__cuda_array_interface__`` (viewed zero-copy; other float dtypes are converted on the
device by their own library). ``fedhd.decode(blob, out=<CUDA array>)``,
``fedhd.decode(blob, device="cuda")`` and ``fedhd.Aggregator(d, device="cuda")`` decode
on the GPU. hd-dither encodes on the GPU; every rotated table method (hd-dither, drive,
eden, turboquant, hd-sr) decodes and sums there; the other methods, and chunks longer than
2**16 coordinates, run the CPU kernels on a host copy.

Blobs are host bytes (they go on the wire), so an encode ends with one device-to-host
copy of the codes (b * d / 8 bytes) and a decode starts with one host-to-device copy.
Kernels and copies run on the legacy default stream; every public call is wrapped in
``call``, which waits for the caller's current torch/CuPy stream on entry and for its own
work on exit, so it is safe from any stream.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numba import cuda

from ..kernels import cuda as CK
from ..layout import MAX_D, Layout
from .cpu import Backend

# --- CUDA arrays in and out ----------------------------------------------------------------


def library(x: Any) -> str:
    """'torch', 'cupy' or 'numba': whose CUDA array x is."""
    mod = type(x).__module__
    return "torch" if mod.startswith("torch") else "cupy" if mod.startswith("cupy") else "numba"


def device_index(x: Any) -> int | None:
    """The GPU a torch or CuPy array lives on (None: the current one)."""
    lib = library(x)
    if lib == "torch":
        return x.device.index
    if lib == "cupy":
        return int(x.device.id)
    return None


def parse_device(device: Any) -> int | None:
    """The index in "cuda:N" or a torch.device (None for plain "cuda")."""
    if not isinstance(device, str):
        return getattr(device, "index", None)
    _, _, number = device.partition(":")
    return int(number) if number else None


@contextmanager
def call(index: int | None = None) -> Iterator[None]:
    """One fedhd GPU call (encode, decode, an aggregator's add or mean).

    Makes GPU ``index`` current for numba's kernels and for the torch and CuPy allocators
    that ``empty`` uses (None: keep the current one); waits for the work queued on torch's
    and CuPy's current streams (whatever produced the inputs, on any stream), and on the
    way out for fedhd's own kernels and copies, which run on the legacy default stream.
    So callers see finished results whatever stream they use, work buffers are never
    recycled while a kernel still reads them, and a kernel fault surfaces in the call that
    caused it.
    """
    torch = sys.modules.get("torch")
    torch = torch if torch is not None and torch.cuda.is_available() else None
    cupy = sys.modules.get("cupy")
    with ExitStack() as stack:
        if index is not None:
            stack.enter_context(cuda.gpus[index])
            if torch is not None:
                stack.enter_context(torch.cuda.device(index))
            if cupy is not None:
                stack.enter_context(cupy.cuda.Device(index))
        if torch is not None:
            torch.cuda.current_stream().synchronize()
        if cupy is not None:
            cupy.cuda.get_current_stream().synchronize()
        try:
            yield
        finally:
            cuda.synchronize()


def view(x: Any) -> Any:
    """A zero-copy numba device-array view of a CUDA array, bound to no stream: its copies
    run on the legacy default stream with the kernels (``call`` orders them with the
    caller's streams)."""
    if type(x).__module__.startswith("numba.cuda"):
        return x
    desc = dict(x.__cuda_array_interface__)
    desc.pop("stream", None)
    return cuda.from_cuda_array_interface(desc, owner=x, sync=False)


def as_device_vector(x: Any) -> Any:
    """A contiguous 1-D float32 numba view of a CUDA array (``cpu.as_host_vector``'s twin).

    TypeError for a non-float dtype, ValueError for a wrong shape or size. torch and CuPy
    arrays of other float dtypes, or with strides, are converted on the device first.
    """
    lib = library(x)
    if lib == "torch":
        if not x.is_floating_point():
            raise TypeError(f"x must have a floating dtype, got {x.dtype}")
        x = x.detach()
    else:
        x = view(x) if lib == "numba" else x
        if np.dtype(x.dtype).kind != "f":
            raise TypeError(f"x must have a floating dtype (float16/32/64), got {x.dtype}")
    if len(x.shape) != 1:
        raise ValueError(f"x must be 1-D, got shape {tuple(x.shape)}; flatten it first")
    if not 1 <= x.shape[0] <= MAX_D:
        raise ValueError(f"x must have between 1 and {MAX_D} coordinates, got {x.shape[0]}")
    if lib == "torch":
        import torch

        y = x.to(torch.float32).contiguous()  # no copy when it already is
        if y is not x:  # converted on torch's current stream: wait for it
            torch.cuda.current_stream().synchronize()
        x = y
    elif lib == "cupy":
        import cupy

        y = cupy.ascontiguousarray(x, dtype=cupy.float32)
        if y is not x:
            cupy.cuda.get_current_stream().synchronize()
        x = y
    elif x.dtype != np.float32 or not x.is_c_contiguous():
        raise TypeError("a numba device array must be contiguous float32; convert it first")
    return view(x)


#: dtypes every torch and CuPy version exports through ``__cuda_array_interface__``
_POOLED = {"float32", "float64", "int64", "uint8"}


def empty(n: int, dtype: Any) -> Any:
    """An uninitialized device array (a numba view). When torch or CuPy is loaded with a
    GPU, their caching allocators serve it, so a work buffer per call costs no cudaMalloc."""
    if np.dtype(dtype).name not in _POOLED:
        return cuda.device_array(n, dtype)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        t = torch.empty(n, dtype=getattr(torch, np.dtype(dtype).name), device="cuda")
        return view(t)
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        return view(cupy.empty(n, dtype))
    return cuda.device_array(n, dtype)


def zeros(n: int, dtype: Any) -> Any:
    return upload(np.zeros(n, dtype))


def upload(host: np.ndarray) -> Any:
    """A device copy of a host array (from the same allocator as ``empty``)."""
    host = np.ascontiguousarray(host)
    a = empty(host.size, host.dtype).reshape(host.shape)
    a.copy_to_device(host)
    return a


def new_torch_vector(d: int, device: Any) -> Any:
    """A float32 torch tensor of length d on a CUDA ``device`` (for ``decode(device=)``)."""
    try:
        import torch
    except ImportError:
        raise RuntimeError(
            "device='cuda' returns a torch tensor and needs torch with CUDA; "
            "pass out=cupy.empty(d, cupy.float32) to decode into a CuPy array") from None
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} is not an available CUDA device")
    return torch.empty(d, dtype=torch.float32, device=dev)


def copy(a: Any) -> Any:
    """A device copy of a numba device array."""
    b = empty(a.shape[0], a.dtype)
    b.copy_to_device(a)
    return b


# --- the layout on the device -----------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """A layout cut into sub-blocks and column blocks (``fedhd.kernels.cuda``)."""

    sb_start: Any
    sb_len: Any
    sb_chunk: Any
    cb_chunk: Any
    cb_col0: Any
    cb_ncols: Any
    ch_start: Any
    ch_width: Any
    ch_rows: Any
    ch_sb0: Any
    ch_nsb: Any
    cb_per_chunk: np.ndarray  # host copy: column blocks of each chunk, for the clip sums

    @property
    def subblocks(self) -> int:
        return self.sb_start.shape[0]

    @property
    def column_blocks(self) -> int:
        return self.cb_chunk.shape[0]


def supported(layout: Layout) -> bool:
    """Whether the CUDA kernels handle this layout: its longest chunk (the first) has at
    most 2**16 coordinates."""
    return int(layout.sizes[0]) <= 1 << CK.MAX_LOG2_CHUNK


@lru_cache(maxsize=32)
def _plan(d: int, log2_chunk: int, device_id: int) -> Plan:
    from ..layout import make_layout

    lay = make_layout(d, log2_chunk)
    sizes, starts = lay.sizes, lay.starts
    C = sizes.shape[0]
    width = np.minimum(sizes, CK.SUB)
    rows = sizes // width
    sb0 = np.concatenate(([0], np.cumsum(rows)[:-1]))
    sb_chunk = np.repeat(np.arange(C), rows)
    sb_start = starts[sb_chunk] + (np.arange(sb_chunk.shape[0]) - sb0[sb_chunk]) * width[sb_chunk]
    ncb = -(-width // CK.TPB)
    cb0 = np.concatenate(([0], np.cumsum(ncb)[:-1]))
    cb_chunk = np.repeat(np.arange(C), ncb)
    cb_col0 = (np.arange(cb_chunk.shape[0]) - cb0[cb_chunk]) * CK.TPB
    cb_ncols = np.minimum(CK.TPB, width[cb_chunk] - cb_col0)
    up = cuda.to_device
    return Plan(up(sb_start), up(width[sb_chunk]), up(sb_chunk), up(cb_chunk), up(cb_col0),
                up(cb_ncols), up(np.asarray(starts)), up(width), up(rows), up(sb0), up(rows),
                ncb)


def plan(layout: Layout) -> Plan:
    return _plan(layout.d, layout.log2_chunk, _device_id())


def _device_id() -> int:
    """The current CUDA device's number (0 in numba's simulator, which has one device)."""
    get = getattr(cuda, "get_current_device", None)
    return 0 if get is None else int(getattr(get(), "id", 0))


# --- drivers ---------------------------------------------------------------------------------


def encode_kernels(xv: Any, layout: Layout, keys: Any, thr_norm: Any, clip: float,
                   bits: int, code_off: Any, codes: Any) -> tuple[Any, Any, Any]:
    """Launch the two encode kernels on device arrays; codes (device uint8) get the packed
    codes at code_off. Returns the device arrays (sub-block sums of squares, float32 chunk
    norms, column-block clip sums); nothing is copied to the host."""
    p = plan(layout)
    y = empty(layout.padded, np.float32)
    sb_ss = empty(p.subblocks, np.float64)
    scale = empty(layout.chunks, np.float32)
    cb_clip = empty(p.column_blocks, np.float64)
    CK.forward_subblocks[p.subblocks, CK.TPB](
        xv, layout.d, y, p.sb_start, p.sb_len, p.sb_chunk, p.ch_start, keys, sb_ss)
    CK.quantize_columns[p.column_blocks, CK.TPB](
        y, p.cb_chunk, p.cb_col0, p.cb_ncols, p.ch_start, p.ch_width, p.ch_rows, p.ch_sb0,
        p.ch_nsb, sb_ss, thr_norm, np.float32(clip), np.int64(bits), code_off, codes, scale,
        cb_clip)
    return sb_ss, scale, cb_clip


def rotate_quantize(xv: Any, layout: Layout, keys: np.ndarray, thr_norm: np.ndarray,
                    clip: float, bits: int, code_off: np.ndarray,
                    out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encode on the GPU (``kernels.rotate_quantize``'s twin); the codes land in the host
    payload ``out`` at ``code_off`` (the bytes before them are left for the caller).

    thr_norm: (chunks, 2**bits - 1) float64 thresholds of the normalized grid. Returns the
    float32 chunk norms s_c = ||x_c|| and sum_i y'_i clamp(y'_i, -clip s_c, clip s_c) per
    chunk (float64). ValueError if x holds NaN or Inf.
    """
    codes = empty(out.shape[0], np.uint8)
    sb_ss, scale, cb_clip = encode_kernels(
        xv, layout, upload(keys), upload(thr_norm), clip, bits, upload(code_off), codes)
    codes.copy_to_host(out)
    if not np.isfinite(sb_ss.copy_to_host()).all():
        raise ValueError("x contains NaN or Inf")
    starts = np.concatenate(([0], np.cumsum(plan(layout).cb_per_chunk)[:-1]))
    return scale.copy_to_host(), np.add.reduceat(cb_clip.copy_to_host(), starts)


def decode_kernels(codes: Any, code_off: Any, tables: Any, bits: int, layout: Layout,
                   keys: Any, out: Any) -> None:
    """Launch the two decode kernels on device arrays: out[:d] = D H table_c[code]."""
    p = plan(layout)
    y = empty(layout.padded, np.float32)
    _lookup(p, codes, code_off, tables, bits, 1.0, CK.DECODE, y)
    _inverse(p, layout, y, keys, out)


def _lookup(p: Plan, codes: Any, code_off: Any, tables: Any, bits: int, weight: float,
            mode: int, y: Any) -> None:
    CK.lookup_subblocks[p.subblocks, CK.TPB](
        codes, code_off, tables, np.int64(bits), np.float32(weight), np.int64(mode),
        p.sb_start, p.sb_len, p.sb_chunk, p.ch_start, y)


def _inverse(p: Plan, layout: Layout, y: Any, keys: Any, out: Any) -> None:
    CK.inverse_columns[p.column_blocks, CK.TPB](
        y, layout.d, out, p.cb_chunk, p.cb_col0, p.cb_ncols, p.ch_start, p.ch_width,
        p.ch_rows, keys)


def _upload(codes: np.ndarray, tables: np.ndarray,
            code_off: np.ndarray) -> tuple[Any, Any, Any]:
    return upload(codes), upload(code_off), upload(np.asarray(tables, np.float32))


def dequantize_unrotate(codes: np.ndarray, layout: Layout, keys: np.ndarray,
                        tables: np.ndarray, bits: int, code_off: np.ndarray, out: Any) -> None:
    """Decode one blob's codes into the CUDA vector ``out`` (length d)."""
    c, off, t = _upload(codes, tables, code_off)
    decode_kernels(c, off, t, bits, layout, upload(keys), out)


def lookup_rotated(codes: np.ndarray, layout: Layout, tables: np.ndarray, bits: int,
                   code_off: np.ndarray, weight: float, acc: Any) -> None:
    """acc (CUDA, length padded) += weight * table_c[code], in the rotated domain."""
    _lookup(plan(layout), *_upload(codes, tables, code_off), bits, weight, CK.ACCUMULATE, acc)


def unrotate(acc: Any, layout: Layout, keys: np.ndarray, out: Any) -> None:
    """out[:d] = D H acc per chunk, on the GPU (acc is overwritten)."""
    p = plan(layout)
    _lookup(p, *_no_codes(_device_id()), 1, 1.0, CK.TRANSFORM, acc)
    _inverse(p, layout, acc, upload(keys), out)


@lru_cache(maxsize=8)
def _no_codes(device_id: int) -> tuple[Any, Any, Any]:
    """Placeholder code, offset and table arrays for the TRANSFORM mode, per GPU."""
    return (cuda.device_array(1, np.uint8), cuda.device_array(1, np.int64),
            cuda.device_array((1, 1), np.float32))


# --- the Backend ---------------------------------------------------------------------------


def _blocks(n: int) -> int:
    return -(-n // CK.TPB)


class CudaBackend(Backend):
    """One CUDA GPU (``index`` None: the current one); vectors are numba device views."""

    name = "cuda"

    def __init__(self, index: int | None):
        self.index = index

    @classmethod
    def of_array(cls, x: Any) -> CudaBackend:
        return cls(device_index(x))

    @classmethod
    def of_device(cls, device: Any) -> CudaBackend:
        return cls(parse_device(device))

    def call(self) -> Any:
        return call(self.index)

    def runs(self, device_kernels: bool, layout: Layout) -> bool:
        return device_kernels and supported(layout)

    def as_vector(self, x: Any) -> Any:
        return as_device_vector(x)

    def to_host(self, x: Any) -> np.ndarray:
        return np.asarray(view(x).copy_to_host())

    def zeros(self, n: int, dtype: Any) -> Any:
        return zeros(n, dtype)

    def copy(self, a: Any) -> Any:
        return copy(a)

    def output(self, d: int, out: Any) -> tuple[Any, Any]:
        if out is None:
            out = new_torch_vector(d, "cuda" if self.index is None else f"cuda:{self.index}")
        there = device_index(out)
        if None not in (self.index, there) and self.index != there:
            raise ValueError(f"out is on cuda:{there}, the work on cuda:{self.index}")
        dev = view(out)
        if dev.shape != (d,) or dev.dtype != np.float32:
            raise ValueError(f"out must be a float32 CUDA vector of length {d}")
        return out, dev

    def upload_into(self, dst: Any, host: np.ndarray) -> None:
        dst.copy_to_device(host)

    def rotate_quantize(self, x, layout, keys, thr_norm, clip, bits, code_off, out):
        return rotate_quantize(x, layout, keys, thr_norm, clip, bits, code_off, out)

    def dequantize_unrotate(self, codes, layout, keys, tables, bits, code_off, out):
        dequantize_unrotate(codes, layout, keys, tables, bits, code_off, out)

    def lookup_rotated(self, codes, layout, tables, bits, code_off, weight, acc):
        lookup_rotated(codes, layout, tables, bits, code_off, weight, acc)

    def unrotate(self, acc, layout, keys, out, weight=1.0):
        # the kernels overwrite their input: work on a copy (acc stays; out may alias it)
        unrotate(copy(acc), layout, keys, out)
        if weight != 1.0:
            self.finish(out, weight, out)

    def accumulate(self, total, part):
        # a host part keeps its precision (the float64 sum of directly decoded vectors)
        part = upload(np.ascontiguousarray(part)) if isinstance(part, np.ndarray) else part
        CK.accumulate64[_blocks(total.shape[0]), CK.TPB](total, part)

    def finish(self, total, weight, out):
        CK.mean32[_blocks(total.shape[0]), CK.TPB](total, np.float64(weight), out)
