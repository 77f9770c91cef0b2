"""Peer compressors: fp16, qsgd, hd-sr, drive, eden, turboquant, topk, and the Lloyd-Max
codebooks and vNMSE benchmark behind them.

Reference values (Gaussian input, d = 1024): EDEN's vNMSE is D_b / (1 - D_b) and
TurboQuant_mse's is D_b, D_b the Lloyd-Max distortion of N(0, 1) (Max 1960); DRIVE is
EDEN at b = 1 (pi/2 - 1). Unbiasedness is measured as the 1/N shrinkage of the mean of N
decodes with N different seeds.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct

import numpy as np
import pytest

import fedhd
from fedhd import rng
from fedhd.bench.inputs import input_family
from fedhd.kernels import rounding as PK
from fedhd.layout import code_offsets, make_layout
from fedhd.lloyd_max import _lloyd, codebook, distortion
from fedhd.methods import by_id, get
from fedhd.methods.qsgd import levels_of
from fedhd.methods.topk import blob_bytes, choose_k
from fedhd.wire import HEADER_BYTES, seal

PEERS = ["fp16", "qsgd", "hd-sr", "drive", "eden", "turboquant", "topk", "scaled-sign",
         "powersgd"]
ROTATED = ["hd-sr", "drive", "eden", "turboquant"]


def gaussian(d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(d).astype(np.float32)


def seeds(s: int) -> tuple[int, int]:
    return rng.derive_seed(77, s, 0), rng.derive_seed(77, s, 1)


def vnmse_and_bias(method: str, bits: float, x: np.ndarray, n: int) -> tuple[float, float]:
    """(mean of ||x_hat - x||^2 / ||x||^2, ||mean x_hat - x||^2 / ||x||^2) over n seeds."""
    codec = fedhd.Codec(method, bits)
    x64 = x.astype(np.float64)
    xx = float(x64 @ x64)
    total = np.zeros_like(x64)
    err = 0.0
    out = np.empty_like(x)
    for s in range(n):
        seed, dseed = seeds(s)
        xh = codec.decode(codec.encode(x, seed=seed, dither_seed=dseed), out=out)
        xh64 = xh.astype(np.float64)
        total += xh64
        err += float((xh64 - x64) @ (xh64 - x64))
    m = total / n - x64
    return err / n / xx, float(m @ m) / xx


# -- registry ---------------------------------------------------------------------------


def test_registry_ids_and_flags():
    ids = {"fp16": 3, "qsgd": 4, "hd-sr": 5, "drive": 6, "eden": 7, "turboquant": 8, "topk": 9,
           "scaled-sign": 11, "powersgd": 12}
    for name, i in ids.items():
        assert get(name).method_id == i and by_id(i) is get(name)
        assert name in fedhd.methods()
        assert get(name).commutes_with_sum == (name in ROTATED)
    assert [get(m).unbiased for m in PEERS] == [False, True, True, True, True, False, False,
                                                False, False]


# -- Lloyd-Max --------------------------------------------------------------------------


@pytest.mark.parametrize("bits", range(1, 9))
def test_lloyd_max_fixed_point(bits):
    cb = codebook(bits)
    c = cb.centroids
    assert c.shape == (1 << bits,) and (np.diff(c) > 0).all()
    np.testing.assert_array_equal(c, -c[::-1])  # symmetric
    np.testing.assert_allclose(cb.thresholds, 0.5 * (c[1:] + c[:-1]))
    assert np.abs(_lloyd(c) - c).max() < 1e-12  # every centroid is its cell's mean
    # any perturbation increases the distortion (a local minimum)
    bump = np.zeros_like(c)
    bump[len(c) // 2] = 1e-3
    assert distortion(c + bump) > cb.distortion
    # Panter-Dite asymptotics: D_b -> (pi sqrt(3) / 2) 4^-b from below
    if bits >= 6:
        assert 0.95 < cb.distortion / (math.pi * math.sqrt(3) / 2 * 4.0**-bits) < 1


def test_lloyd_max_reference_values():
    """Max (1960): 1 bit +-sqrt(2/pi), distortion 1 - 2/pi; 2 bits 0.4528, 1.510."""
    np.testing.assert_allclose(codebook(1).centroids, [-math.sqrt(2 / math.pi),
                                                       math.sqrt(2 / math.pi)], rtol=1e-12)
    assert codebook(1).distortion == pytest.approx(1 - 2 / math.pi, rel=1e-12)
    np.testing.assert_allclose(codebook(2).centroids[2:], [0.4528, 1.5104], atol=1e-4)
    for b, dist in [(2, 0.11748), (3, 0.03455), (4, 0.009501)]:
        assert codebook(b).distortion == pytest.approx(dist, rel=2e-4)
    # closed-form distortion agrees with Monte Carlo
    z = np.random.default_rng(0).standard_normal(400_000)
    cb = codebook(3)
    q = cb.centroids[np.searchsorted(cb.thresholds, z)]
    assert np.mean((z - q) ** 2) == pytest.approx(cb.distortion, rel=0.01)
    with pytest.raises(ValueError):
        codebook(9)


# -- published behaviour on a Gaussian input, d = 1024 ----------------------------------

REFERENCE = [
    ("eden", 1, 0.571), ("eden", 2, 0.133), ("eden", 4, 0.0096), ("drive", 1, 0.571),
    ("turboquant", 1, 0.363), ("turboquant", 2, 0.117), ("turboquant", 4, 0.0095),
]


@pytest.mark.parametrize(("method", "bits", "ref"), REFERENCE)
def test_reference_vnmse(method, bits, ref):
    v, _ = vnmse_and_bias(method, bits, gaussian(1024), 300)
    assert abs(v / ref - 1) < 0.08, v


def test_qsgd_and_hd_sr_match_their_variance_formulas():
    """Stochastic rounding to spacing delta has variance E[p(1-p)] delta^2 per coordinate:
    QSGD s = 1 gives ||x||_1 / ||x|| - 1 exactly in expectation; hd-sr between min and max
    gives about (range / (L - 1))^2 / 6 per rotated coordinate."""
    x = gaussian(1024)
    v, _ = vnmse_and_bias("qsgd", 2, x, 200)
    expect = float(np.abs(x).sum() / np.linalg.norm(x)) - 1
    assert v == pytest.approx(expect, rel=0.03)
    v, _ = vnmse_and_bias("hd-sr", 4, x, 200)
    assert 0.5 * (2 * 3.3) ** 2 / 15**2 / 6 < v < 2 * (2 * 3.3) ** 2 / 15**2 / 6


# -- unbiasedness -----------------------------------------------------------------------

UNBIASED = [("qsgd", 2), ("qsgd", 4), ("hd-sr", 1), ("hd-sr", 4), ("drive", 1), ("eden", 1),
            ("eden", 2), ("eden", 4)]


@pytest.mark.parametrize(("method", "bits"), UNBIASED)
def test_unbiased_on_gaussian(method, bits):
    """||mean of N decodes - x||^2 / ||x||^2 <= 2.5 vNMSE / N, N = 1500 seeds."""
    n = 1500
    v, bias = vnmse_and_bias(method, bits, gaussian(1024), n)
    assert bias <= 2.5 * v / n, (bias, v / n)


@pytest.mark.parametrize("method", ["qsgd", "hd-sr"])
@pytest.mark.parametrize("name", ["sparse-3", "constant", "student-t2", "blocks"])
def test_exactly_unbiased_methods_on_structured_inputs(method, name):
    """Stochastic rounding is unbiased for every input, not only Gaussian-like ones."""
    n = 1000
    x = input_family(1024)[name]
    v, bias = vnmse_and_bias(method, 2, x, n)
    assert bias <= 2.5 * v / n, (bias, v / n)


def test_bias_test_has_power():
    """The same test flags the biased methods (TurboQuant shrinks by ~1 - D_b)."""
    n = 1500
    v, bias = vnmse_and_bias("turboquant", 2, gaussian(1024), n)
    assert bias > 20 * v / n
    v, bias = vnmse_and_bias("topk", 2, gaussian(1024), 10)
    assert bias == pytest.approx(v)  # deterministic


def test_zero_ties_get_a_fair_coin():
    """Sparse inputs rotate to exact zeros; sending them all to one side biased DRIVE/EDEN
    on sparse-2 (half of y' is 0). With the coin the 1/N shrinkage holds."""
    x = input_family(1024)["sparse-2"]
    n = 600
    v, bias = vnmse_and_bias("eden", 2, x, n)
    assert v > 0.01 and bias <= 2.5 * v / n


# -- budgets ----------------------------------------------------------------------------


def overhead_bytes(method: str, layout) -> int:
    per_chunk = {"qsgd": 4, "hd-sr": 8, "drive": 4, "eden": 4, "turboquant": 4}[method]
    return HEADER_BYTES + per_chunk * layout.chunks


@pytest.mark.parametrize("d", [1024, 100_003])
@pytest.mark.parametrize("method", ["qsgd", "hd-sr", "drive", "eden", "turboquant"])
def test_fixed_rate_bits_are_counted_exactly(method, d):
    x = gaussian(d)
    lay = make_layout(d)
    for b in ([1] if method == "drive" else [1, 2, 3, 4, 8]):
        blob = fedhd.encode(x, bits=b, seed=1, method=method)
        assert len(blob) == overhead_bytes(method, lay) + lay.padded * b // 8
        # within budget up to O(1/d): header, one or two floats per chunk, <= 31 padding
        assert 8 * len(blob) <= b * d + 8 * overhead_bytes(method, lay) + 31 * b


def test_bits_per_coordinate_at_one_million():
    x = gaussian(10**6)
    for method, b in [("qsgd", 2), ("hd-sr", 2), ("drive", 1), ("eden", 4), ("turboquant", 3)]:
        bpc = 8 * len(fedhd.encode(x, bits=b, seed=1, method=method)) / x.size
        assert b <= bpc < b + 0.002
    assert 8 * len(fedhd.encode(x, bits=16, method="fp16")) / x.size < 16.001
    for R in (1, 2.5, 8):
        assert 8 * len(fedhd.encode(x, bits=R, method="topk")) <= R * x.size


@pytest.mark.parametrize("d", [1, 33, 1024, 5000])
def test_topk_fills_its_budget(d):
    for R in (0.0625, 1, 2, 3.5, 8, 64):
        k = choose_k(R, d)
        cap = math.floor(R * d / 8)
        assert k == d or blob_bytes(k + 1, d) > cap
        if k:
            assert blob_bytes(k, d) <= cap
        blob = fedhd.encode(gaussian(d), bits=R, method="topk")
        assert len(blob) == blob_bytes(k, d)


def test_topk_keeps_the_largest():
    x = gaussian(5000, 3)
    blob = fedhd.encode(x, bits=4, method="topk")
    k = choose_k(4, 5000)
    y = fedhd.decode(blob)
    kept = np.flatnonzero(y)
    assert kept.size == k
    np.testing.assert_array_equal(y[kept], x[kept])
    assert np.abs(x[kept]).min() >= np.sort(np.abs(x))[-k]
    # a budget that covers everything is exact
    np.testing.assert_array_equal(fedhd.decode(fedhd.encode(x, bits=64, method="topk")), x)


def test_fp16_round_trip_and_saturation():
    x = np.array([0.0, 1.0, -2.5, 1e-3, 7e4, -1e9, 3e-9], np.float32)
    y = fedhd.decode(fedhd.encode(x, bits=16, method="fp16"))
    np.testing.assert_array_equal(y, [0, 1, -2.5, np.float16(1e-3), 65504, -65504, 0])
    with pytest.raises(ValueError):
        fedhd.encode(x, bits=8, method="fp16")


# -- format and determinism -------------------------------------------------------------


def unpack(payload: bytes, off: int, n: int, b: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(payload, np.uint8)[off:off + n * b // 8],
                         bitorder="little").reshape(n, b)
    return bits.astype(np.int64) @ (1 << np.arange(b))


def fwht(a: np.ndarray) -> np.ndarray:
    """The textbook Walsh-Hadamard transform (Sylvester order, unnormalized) in float64:
    the reference the tests hold fedhd's kernels to."""
    a = a.astype(np.float64).copy()
    h = 1
    while h < a.size:
        a = a.reshape(-1, 2, h)
        a = np.stack([a[:, 0] + a[:, 1], a[:, 0] - a[:, 1]], axis=1).reshape(-1)
        h *= 2
    return a


def test_qsgd_bytes_match_a_numpy_reference():
    """The codes are the documented stochastic rounding with rng.uniforms (no numba)."""
    d = 3000
    x = gaussian(d, 4)
    for b in (1, 2, 5):
        blob = fedhd.encode(x, bits=b, seed=3, method="qsgd", dither_seed=11)
        lay = make_layout(d)
        payload = blob[HEADER_BYTES:]
        norms = np.frombuffer(payload, "<f4", count=lay.chunks).astype(np.float64)
        u = rng.uniforms(11, rng.STREAM_METHOD, lay.padded)
        used, s = levels_of(b)
        xp = np.zeros(lay.padded)
        xp[:d] = x
        offs = code_offsets(lay, b, 4 * lay.chunks)
        for c in range(lay.chunks):
            sl = slice(lay.starts[c], lay.starts[c] + lay.sizes[c])
            ref = np.clip(np.floor((xp[sl] + norms[c]) / (norms[c] / s) + u[sl]), 0, used - 1)
            np.testing.assert_array_equal(unpack(payload, offs[c], lay.sizes[c], b), ref)


@pytest.mark.parametrize("method", ROTATED)
def test_rotated_decode_matches_the_documented_format(method):
    """Decode with numpy only: table lookup, unnormalized FWHT / n, rotation signs."""
    d = 700
    x = gaussian(d, 5)
    b = 1 if method == "drive" else 3
    blob = fedhd.encode(x, bits=b, seed=8, method=method, dither_seed=9)
    lay = make_layout(d)
    payload = blob[HEADER_BYTES:]
    C = lay.chunks
    if method == "hd-sr":
        f = np.frombuffer(payload, "<f4", count=2 * C).reshape(C, 2).astype(np.float64)
        tables = f[:, :1] + np.arange(1 << b) * f[:, 1:]
        offs = code_offsets(lay, b, 8 * C)
    else:
        A = np.frombuffer(payload, "<f4", count=C).astype(np.float64)
        cent = np.array([-1.0, 1.0]) if method == "drive" else codebook(b).centroids
        tables = A[:, None] * cent[None, :]
        offs = code_offsets(lay, b, 4 * C)
    keys = rng.sign_keys(8, C)
    ref = np.zeros(lay.padded)
    for c in range(C):
        n = lay.sizes[c]
        codes = unpack(payload, offs[c], n, b)
        ref[lay.starts[c]:lay.starts[c] + n] = rng.signs(int(keys[c]), n) * fwht(
            tables[c][codes]) / n
    np.testing.assert_allclose(fedhd.decode(blob), ref[:d], rtol=0, atol=1e-5 * np.abs(ref).max())


GOLDEN = {  # sha256 prefixes of the payloads (after the common header, which fedhd.wire
    # owns) of fixed blobs: any change of a method's wire format shows up here
    "fp16": "ca5a3469e9f379c2", "qsgd": "b243655849a90787", "hd-sr": "baf95cc5f8362a6d",
    "drive": "79b64ed2e65ad7b0", "eden": "11d465e26bfd5ec0", "turboquant": "2e060cdc3a57d69f",
    "topk": "48a30cba1f8a4508", "scaled-sign": "7c49aa9a2968b1cb", "powersgd": "1bbe32ddabe43af4",
}


def golden_blob(method: str) -> bytes:
    x = gaussian(1000, 12)
    b = {"fp16": 16, "drive": 1, "topk": 3.5, "scaled-sign": 1}.get(method, 3)
    return fedhd.encode(x, bits=b, seed=2026, method=method, dither_seed=513)


@pytest.mark.parametrize("method", PEERS)
def test_golden_bytes(method):
    blob = golden_blob(method)
    assert blob == golden_blob(method)
    assert hashlib.sha256(blob[HEADER_BYTES:]).hexdigest()[:16] == GOLDEN[method]
    h = fedhd.header(blob)
    assert (h.method_id, h.d, h.seed, h.dither_seed) == (get(method).method_id, 1000, 2026, 513)


@pytest.mark.parametrize("method", ["qsgd", "hd-sr"])
def test_dither_seed_drives_the_rounding(method):
    x = gaussian(1000)
    a = fedhd.encode(x, bits=2, seed=1, dither_seed=2, method=method)
    assert a == fedhd.encode(x, bits=2, seed=1, dither_seed=2, method=method)
    assert a != fedhd.encode(x, bits=2, seed=1, dither_seed=3, method=method)


@pytest.mark.parametrize("method", PEERS)
def test_zero_and_tiny_vectors(method):
    m = get(method)
    for d in (1, 8, 1000):
        z = fedhd.decode(fedhd.encode(np.zeros(d, np.float32), bits=m.default_bits,
                                      method=method))
        np.testing.assert_array_equal(z, 0)
    with pytest.raises(ValueError):
        fedhd.encode(np.array([1.0, np.nan], np.float32), bits=m.default_bits, method=method)


@pytest.mark.parametrize("method", ROTATED)
def test_aggregator_sums_in_the_rotated_domain(method):
    d = 3000
    m = get(method)
    blobs = [fedhd.encode(gaussian(d, k), bits=m.default_bits, seed=4, dither_seed=k,
                          method=method) for k in range(4)]
    w = [0.5, 1.0, 2.0, 4.0]
    agg = fedhd.Aggregator(d, seed=4, method=method)
    for blob, wk in zip(blobs, w, strict=True):
        agg.add(blob, wk)
    ref = sum(wk * fedhd.decode(b).astype(np.float64) for b, wk in zip(blobs, w, strict=True))
    ref /= sum(w)
    assert np.linalg.norm(agg.mean() - ref) <= 1e-5 * np.linalg.norm(ref)
    assert agg._rotated  # really summed before the inverse rotation


# -- malformed blobs --------------------------------------------------------------------


@pytest.mark.parametrize("method", PEERS)
def test_truncated_extended_garbled(method):
    blob = golden_blob(method)
    for bad in (blob[:-1], blob[: HEADER_BYTES + 2], blob + b"\0", blob[:-4] + b"\0" * 4):
        with pytest.raises(fedhd.DecodeError):
            fedhd.decode(bad)
    g = bytearray(blob)
    g[len(g) // 2 + 3] ^= 0x10
    with pytest.raises(fedhd.DecodeError, match="CRC"):
        fedhd.decode(bytes(g))


def resealed(blob: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(blob)
    struct.pack_into(fmt, b, offset, value)
    return seal(b)


@pytest.mark.parametrize("method", ["qsgd", "hd-sr", "drive", "eden", "turboquant"])
def test_inconsistent_scales_with_valid_crc(method):
    blob = golden_blob(method)
    for v in (float("nan"), float("inf"), -1.0):
        with pytest.raises(fedhd.DecodeError):
            fedhd.decode(resealed(blob, HEADER_BYTES + 4 * (method == "hd-sr"), "<f", v))
    # wrong rate for the method (drive is 1 bit, the others at most 8)
    with pytest.raises(fedhd.DecodeError):
        fedhd.decode(resealed(blob, 4, "<H", 16 * (2 if method == "drive" else 9)))


def test_inconsistent_topk_and_fp16_payloads():
    blob = golden_blob("topk")
    d, k = 1000, choose_k(3.5, 1000)
    ib = (k * 10 + 7) // 8
    # first index set beyond d, or equal to the second (not increasing)
    bad_idx = bytearray(blob)
    bad_idx[HEADER_BYTES] |= 0xFF
    bad_idx[HEADER_BYTES + 1] |= 0x03
    with pytest.raises(fedhd.DecodeError):
        fedhd.decode(seal(bad_idx))
    zero_idx = bytearray(blob)
    zero_idx[HEADER_BYTES: HEADER_BYTES + 3] = b"\0\0\0"
    with pytest.raises(fedhd.DecodeError):
        fedhd.decode(seal(zero_idx))
    with pytest.raises(fedhd.DecodeError):
        fedhd.decode(resealed(blob, HEADER_BYTES + ib, "<f", float("inf")))
    with pytest.raises(fedhd.DecodeError):  # a budget that implies another k
        fedhd.decode(resealed(blob, 4, "<H", 16 * 4))
    assert d == fedhd.header(blob).d
    fp = golden_blob("fp16")
    with pytest.raises(fedhd.DecodeError):
        fedhd.decode(resealed(fp, HEADER_BYTES + 10, "<e", float("inf")))


# -- kernels ----------------------------------------------------------------------------


def test_pack_uint_round_trip():
    g = np.random.default_rng(0)
    for w in (1, 3, 8, 13, 20, 31, 32):
        k = int(g.integers(0, 300))
        v = g.integers(0, 1 << w, size=k, dtype=np.int64)
        buf = np.zeros((k * w + 7) // 8, np.uint8)
        PK.pack_uint(v, w, buf)
        out = np.empty(k, np.int64)
        PK.unpack_uint(buf, k, w, out)
        np.testing.assert_array_equal(out, v)


@pytest.mark.parametrize("bits", [5, 8])
def test_nearest_quantize_table_path_is_exact(bits):
    """The bucket table used above 16 levels gives exactly #{thr < v}."""
    cb = codebook(bits)
    lay = make_layout(20_000, 10)
    g = np.random.default_rng(bits)
    sig = g.uniform(0.1, 3, lay.chunks)
    y = (g.standard_normal(lay.padded) * np.repeat(sig, lay.sizes)).astype(np.float32)
    thr = (sig[:, None] * cb.thresholds[None, :]).astype(np.float32)
    y[:30] = thr[0, :30]  # exact ties
    off = code_offsets(lay, bits, 0)
    out = np.empty(lay.padded * bits // 8, np.uint8)
    PK.nearest_quantize(y, lay.starts, lay.sizes, thr, cb.centroids, bits, out, off,
                        np.uint64(1))
    for c in range(lay.chunks):
        sl = slice(lay.starts[c], lay.starts[c] + lay.sizes[c])
        ref = np.searchsorted(thr[c], y[sl], side="left")
        ref[(y[sl] == 0)] = unpack(out.tobytes(), off[c], lay.sizes[c], bits)[y[sl] == 0]
        np.testing.assert_array_equal(unpack(out.tobytes(), off[c], lay.sizes[c], bits), ref)


# -- benchmark --------------------------------------------------------------------------


def test_vnmse_bench_runs(tmp_path):
    from fedhd.bench import vnmse

    out = tmp_path / "v.json"
    rc = vnmse.main(["--json", str(out), "--md", str(tmp_path / "v.md"),
                     "--png", str(tmp_path / "v.png"), "--methods", "eden,topk,fp16,qsgd",
                     "--bits", "2", "--dims", "256,4096", "--seeds", "2", "--bias-seeds", "30",
                     "--no-model"])
    assert rc == 0
    res = json.loads(out.read_text())
    rows = {(r["method"], r["d"]): r for r in res["rows"]}
    assert set(rows) == {(m, d) for m in ("eden", "topk", "fp16", "qsgd") for d in (256, 4096)}
    assert rows[("fp16", 256)]["bits"] == 16
    assert rows[("topk", 4096)]["bits_per_coord"] <= 2
    assert rows[("eden", 256)]["bias_ratio"] is not None
    assert "bias_ratio" not in rows[("eden", 4096)]
    assert rows[("topk", 256)]["bias_ratio_gaussian"] == pytest.approx(30)
    assert 0.1 < rows[("eden", 4096)]["vnmse_gaussian"] < 0.17
    assert (tmp_path / "v.png").stat().st_size > 10_000
    assert "| eden | 2 |" in (tmp_path / "v.md").read_text()


@pytest.mark.slow
def test_model_update_is_a_real_update():
    from fedhd.bench.vnmse import model_update

    u = model_update(steps=5)
    assert u is not None and u.dtype == np.float32
    assert u.size == 64 * 256 + 256 * 256 + 256 * 10 + 522
    assert np.isfinite(u).all() and np.linalg.norm(u) > 0
    v, _ = vnmse_and_bias("eden", 2, u, 20)
    assert v == pytest.approx(0.133, rel=0.1)
