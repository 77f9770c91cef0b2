"""hd-dither-ec: exact unbiasedness, error per bit, budget, determinism, wire robustness.

Figures come from theory: with the step delta_c of chunk c (on the wire) the estimate's
error in the normalized rotated domain is uniform on [-delta_c/2, delta_c/2), so the
expected vNMSE of a blob is exactly sum_c s_c^2 delta_c^2 / 12 / sum_c s_c^2
(``expected_vnmse``): the worst case over inputs is read off the blobs, and Monte-Carlo
checks confirm it. Seeds are fixed; every statistical tolerance states its margin.
"""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_peers import fwht

import fedhd
from fedhd import rng
from fedhd.bench.inputs import input_family
from fedhd.kernels import rans as E
from fedhd.layout import make_layout
from fedhd.methods import get
from fedhd.methods import hd_dither_ec as H
from fedhd.wire import HEADER_BYTES, rewrite_header, seal

NAME = "hd-dither-ec"
METHOD = get(NAME)
BOUND = {1: 0.60, 2: 0.108, 4: 0.0065}  # the worst-case vNMSE at d = 2**16


def enc(x, bits=2.0, seed=1, dither_seed=2, **kw):
    return fedhd.encode(x, bits=bits, seed=seed, method=NAME, dither_seed=dither_seed, **kw)


def tables(blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h = fedhd.header(blob)
    C = make_layout(h.d, h.log2_chunk).chunks
    off = H.TABLE_OFF
    return (np.frombuffer(blob, "<f4", C, off).astype(np.float64),
            np.frombuffer(blob, "<f4", C, off + 4 * C).astype(np.float64),
            np.frombuffer(blob, "<u4", C, off + 8 * C).astype(np.int64))


def expected_vnmse(blob: bytes) -> float:
    """E ||x^ - x||^2 / ||x||^2 over the dithers, given the blob's scales and steps."""
    s, delta, _ = tables(blob)
    return float((s**2 * delta**2).sum() / 12 / (s**2).sum())


def vnmse(x: np.ndarray, y: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float(np.sum((y - x) ** 2) / np.sum(x**2))


def gauss(d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(d).astype(np.float32)


# -- registration, arguments -------------------------------------------------------------------


def test_registered_with_its_wire_id():
    assert NAME in fedhd.methods()
    assert METHOD.method_id == 2 and METHOD.commutes_with_sum and METHOD.unbiased
    blob = enc(gauss(1000), bits=1.5)
    h = fedhd.header(blob)
    assert h.method_id == 2 and h.bits == 1.5 and h.d == 1000


@pytest.mark.parametrize("bits", [0.49, 8.01, -1, float("nan"), float("inf")])
def test_budget_out_of_range_is_a_value_error(bits):
    with pytest.raises(ValueError):
        enc(gauss(100), bits=bits)


@pytest.mark.parametrize("bits", ["2", None, True, [2]])
def test_budget_of_wrong_type_is_a_type_error(bits):
    with pytest.raises(TypeError):
        fedhd.Codec(NAME, bits=bits) if bits is not None else enc(gauss(10), bits="x")


def test_bad_vectors():
    with pytest.raises(ValueError):
        enc(np.array([1.0, np.nan], np.float32))
    with pytest.raises(ValueError):
        enc(np.array([1.0, np.inf], np.float32))
    with pytest.raises(ValueError):
        enc(np.ones((4, 4), np.float32))
    with pytest.raises(TypeError):
        enc(np.ones(4, np.int32))
    with pytest.raises(ValueError):  # a chunk norm beyond 2**96 is refused, not overflowed
        enc(np.full(1024, 1e36, np.float32))


# -- round trip, determinism -------------------------------------------------------------------


# 4064 = 2048 + ... + 32: every chunk short (two coder states); 4096: one chunk of four
@pytest.mark.parametrize("d", [1, 31, 33, 100, 1000, 1024, 4064, 4096, 5000, (1 << 16) + 77])
def test_round_trip_any_length(d):
    x = gauss(d, d)
    blob = enc(x, bits=3)
    y = fedhd.decode(blob)
    assert y.dtype == np.float32 and y.shape == (d,) and np.isfinite(y).all()
    # one draw of the error: within 4x of its expectation (n >= 32 uniform errors a chunk)
    assert vnmse(x, y) <= 4 * expected_vnmse(blob) + 1e-12


def test_same_arguments_same_bytes_and_dither_only_moves_the_codes():
    x = gauss(70000, 3)
    a, b = enc(x, 2, 4, 5), enc(x, 2, 4, 5)
    assert a == b
    c = enc(x, 2, 4, 6)
    assert c != a
    # the steps (and scales) depend on x and the rotation only, never on the dither: this is
    # what makes the estimate exactly unbiased
    ta, tc = tables(a), tables(c)
    np.testing.assert_array_equal(ta[0], tc[0])
    np.testing.assert_array_equal(ta[1], tc[1])


def test_numpy_and_torch_inputs_give_the_same_bytes():
    torch = pytest.importorskip("torch")
    x = gauss(3000, 1)
    assert enc(torch.from_numpy(x)) == enc(x)
    assert enc(torch.from_numpy(x).double()) == enc(x.astype(np.float64)) == enc(x)


def test_zero_and_partly_zero_vectors():
    z = np.zeros(70000, np.float32)
    blob = enc(z)
    np.testing.assert_array_equal(fedhd.decode(blob), z)
    # all chunks empty: only the tables and the minimum padding (one word a 256 coordinates)
    layout = make_layout(70000, 16)
    assert len(blob) == (H.TABLE_OFF + H.table_bytes(layout.chunks)
                         + 4 * H.min_words(layout.padded))
    x = gauss(70000)
    x[: 1 << 16] = 0  # first chunk all zero: decoded exactly
    y = fedhd.decode(enc(x))
    np.testing.assert_array_equal(y[: 1 << 16], 0)
    assert vnmse(x, y) < 0.2


@pytest.mark.parametrize("n", [1 << 10, 1 << 16])  # two and four coder states
def test_escapes_round_trip(n):
    """A vector whose rotation is one spike (|z| = sqrt(n) >> 6.5) goes through the escape
    path; the error stays that of the lattice (4 draws of n uniform errors: the mean's sd is
    ~1.4% at n = 1024)."""
    key = int(rng.sign_keys(9, 1)[0])
    col = 1.0 - 2.0 * (np.bitwise_count(np.arange(n) & 345) & 1)  # Hadamard column 345
    x = (rng.signs(key, n) * col).astype(np.float32)  # H D x = n e_345
    y_rot = np.empty(n, np.float32)
    layout = make_layout(n, 16)
    E.rotate_norms(x, n, layout.starts, layout.sizes, rng.sign_keys(9, 1), y_rot)
    assert np.count_nonzero(np.abs(y_rot) > 1) == 1
    errs = []
    for ds in range(4):
        blob = enc(x, bits=2, seed=9, dither_seed=ds)
        errs.append(vnmse(x, fedhd.decode(blob)) / expected_vnmse(blob))
    assert 0.9 < np.mean(errs) < 1.1


def test_huge_but_finite_values():
    x = gauss(5000) * np.float32(1e25)
    blob = enc(x)
    assert vnmse(x, fedhd.decode(blob)) <= 1.5 * expected_vnmse(blob)


# -- bits sent, error per bit ------------------------------------------------------------------


@pytest.mark.parametrize("d", [1 << 16, (1 << 17) + 999])
@pytest.mark.parametrize("bits", [0.5, 1, 1.3, 2, 3, 4, 6, 8])
def test_blob_fits_the_budget(d, bits):
    """8 len(blob) / d <= R + 0.03 for d >= 2**16, header and tables counted; the controller
    spends the budget (within 0.02 bits) on a Gaussian."""
    for x in (gauss(d, 7), input_family(d)["sparse-5"], input_family(d)["student-t2"]):
        blob = enc(x, bits=bits, seed=3)
        rate = 8 * len(blob) / d
        assert rate <= bits + 0.03
    assert 8 * len(enc(gauss(d, 7), bits=bits, seed=3)) / d >= bits - 0.02


def test_worst_case_vnmse_over_the_input_family():
    """vNMSE = E ||x^ - x||^2 / ||x||^2 <= 0.60 / 0.108 / 0.0065 at R = 1 / 2 / 4,
    d = 2**16, for every input of the family and each of 6 rotations (exact expectations
    over the dither, from the steps on the wire).

    The Gaussian is about the worst input on average over rotations. Single rotations of
    sparse inputs cost up to 3% more (measured over 100 rotations at R = 1: 0.580 at worst,
    mean 0.563; without the heavier-tailed second model it was 0.616).
    """
    d = 1 << 16
    family = input_family(d)
    ideal = {1: 0.5514, 2: 0.09764, 4: 0.005591}  # the dithered lattice with R bits of codes
    for R, bound in BOUND.items():
        v = {k: [expected_vnmse(enc(x, bits=R, seed=s)) for s in range(1, 7)]
             for k, x in family.items()}
        worst_single = max(max(e) for e in v.values())
        worst_mean = max(np.mean(e) for e in v.values())
        assert worst_single <= bound, (R, worst_single)
        # within 3% of the ideal on average (header, tables and model cost the rest)
        assert worst_mean <= 1.03 * ideal[R], (R, worst_mean)
        assert np.mean(v["gaussian"]) >= 0.99 * ideal[R]


@pytest.mark.parametrize("name", ["gaussian", "sparse-7", "blocks"])
def test_measured_error_matches_the_step(name):
    """Monte Carlo over 6 dither seeds: the mean measured vNMSE is the step's delta^2 / 12
    (a draw's relative sd is sqrt(4/5 / n) ~ 0.35% at n = 2**16; tolerance 3%)."""
    x = input_family(1 << 16)[name]
    for R in (1, 2, 4):
        ratios = []
        for ds in range(6):
            blob = enc(x, bits=R, seed=4, dither_seed=ds)
            ratios.append(vnmse(x, fedhd.decode(blob)) / expected_vnmse(blob))
        assert abs(np.mean(ratios) - 1) < 0.03, (R, ratios)


def test_water_filling_across_chunks():
    """Chunks of very different norms get different steps (smaller relative steps where the
    norm is large), and the blob still fits and beats one common relative step."""
    d = 8 << 16
    x = gauss(d, 2)
    x[: 4 << 16] *= 1e-3  # half the chunks are 1000x smaller
    blob = enc(x, bits=2)
    _, delta, _ = tables(blob)
    assert delta[:4].min() > 10 * delta[4:].max()
    assert 8 * len(blob) / d <= 2.03
    assert expected_vnmse(blob) < 0.098  # one relative step for all chunks would give ~0.099


# -- unbiasedness ------------------------------------------------------------------------------


_SLOW = pytest.mark.slow


@pytest.mark.parametrize("name, R", [
    ("gaussian", 1), ("sparse-2", 1), ("sparse-7", 2),
    pytest.param("gaussian", 2, marks=_SLOW), pytest.param("sparse-1", 1, marks=_SLOW),
    pytest.param("sparse-1", 2, marks=_SLOW), pytest.param("sparse-2", 2, marks=_SLOW),
    pytest.param("sparse-7", 1, marks=_SLOW),
])
def test_mean_of_n_decodes_shrinks_like_one_over_n(name, R):
    """||mean of N decodes - x||^2 / ||x||^2 <= 2.5 vNMSE / N at N = 1500, d = 1024.

    For an unbiased estimator with independent dithers the left side has mean vNMSE / N and
    relative sd ~ sqrt(2 / 1024) ~ 4.4% (1024 uncorrelated coordinates): we assert the
    stronger <= 1.3 vNMSE / N (7 sd), and >= 0.7 vNMSE / N (the error is what the step says).
    """
    d, N = 1024, 1500
    x = input_family(d)[name]
    codec = fedhd.Codec(NAME, R)
    acc = np.zeros(d, np.float64)
    out = np.empty(d, np.float32)
    v = None
    for k in range(N):
        blob = codec.encode(x, seed=11, dither_seed=1000 + k)
        e = expected_vnmse(blob)
        assert v is None or e == v  # the same step for every dither seed
        v = e
        acc += codec.decode(blob, out=out)
    ratio = vnmse(x, acc / N) / (v / N)
    assert 0.7 <= ratio <= 1.3, ratio


def test_aggregator_decode_after_sum_equals_mean_of_decodes():
    d = (1 << 17) + 123
    blobs, weights = [], [1.0, 0.5, 2.0, 3.0]
    for k in range(len(weights)):
        blobs.append(enc(gauss(d, k), bits=1.7, seed=21, dither_seed=50 + k))
    agg = fedhd.Aggregator(d, seed=21, method=NAME)
    for b, w in zip(blobs, weights):
        agg.add(b, w)
    expect = sum(w * fedhd.decode(b).astype(np.float64) for b, w in zip(blobs, weights))
    expect /= sum(weights)
    got = agg.mean()
    assert np.linalg.norm(got - expect) <= 1e-5 * np.linalg.norm(expect)


# -- hostile blobs -----------------------------------------------------------------------------

SMALL = enc(gauss(700, 5), bits=2, seed=3, dither_seed=4)  # 700 = 512 + 128 + 32 + 28: 4 chunks
SMALL_C = make_layout(700, 16).chunks
WORDS = H.TABLE_OFF + H.table_bytes(SMALL_C)  # blob offset of the coder words


def _reseal(b: bytearray) -> bytes:
    return seal(bytearray(b))


def _expect_decode_error(blob: bytes) -> None:
    t = time.perf_counter()
    with pytest.raises(fedhd.DecodeError):
        fedhd.decode(blob)
    agg = fedhd.Aggregator(fedhd.header(SMALL).d, method=NAME)
    try:
        agg.add(blob)
    except fedhd.DecodeError:
        pass
    assert agg.count == 0
    assert time.perf_counter() - t < 1.0


def test_truncated_extended_and_flipped():
    for cut in range(len(SMALL)):
        _expect_decode_error(SMALL[:cut])
    for extra in (b"\0", b"\0" * 4, b"\xff" * 9):
        _expect_decode_error(SMALL + extra)
        _expect_decode_error(_reseal(bytearray(SMALL + extra)))
    for i in range(HEADER_BYTES - 4, len(SMALL)):  # CRC field and payload: the CRC catches
        b = bytearray(SMALL)
        b[i] ^= 0x40
        _expect_decode_error(bytes(b))


def _field(offset: int, fmt: str, value) -> bytes:
    b = bytearray(SMALL)
    struct.pack_into(fmt, b, offset, value)
    return _reseal(b)


def test_valid_crc_but_inconsistent_sub_header():
    C, T = SMALL_C, H.TABLE_OFF
    _, delta, counts = tables(SMALL)
    W = int(counts.sum())
    lies = [
        _field(HEADER_BYTES, "B", 1),  # the old coder format (two states)
        _field(HEADER_BYTES, "B", 3),  # an unknown coder format
        _field(H.RESERVED_OFF, "<I", 12345),  # reserved bytes
        _field(T, "<f", np.nan), _field(T, "<f", -1.0), _field(T, "<f", np.inf),  # scales
        _field(T, "<f", 0.0),  # a zero chunk that carries a step and codes
        _field(T, "<f", 3e38),  # scale x step overflows the decoded range
        _field(T + 4 * C, "<f", 0.0), _field(T + 4 * C, "<f", 2.0**-9),  # steps
        _field(T + 4 * C, "<f", 2.0**21), _field(T + 4 * C, "<f", np.nan),
        _field(T + 4 * C, "<f", float(delta[0]) * 1.5),  # another model: stream mismatch
        _field(T + 8 * C, "<I", int(counts[0]) + 1),  # lengths that disagree with the blob
        _field(T + 8 * C, "<I", 2**32 - 1),
        _field(T + 8 * C + 4, "<I", int(counts[1]) - 1),
        _field(T + 12 * C, "B", 2),  # model id out of range
        _field(T + 12 * C, "B", 1 - SMALL[T + 12 * C]),  # the other model: stream mismatch
        _field(T + H.table_bytes(C) - 1, "B", 1) if C % 4 else SMALL,  # table padding
        _field(WORDS + 4 * (W - 1), "<I", 0xDEADBEEF),  # last stream word
        _field(WORDS, "<I", 1),  # first chunk's initial state below L
        _field(WORDS + 4, "<I", 0xFFFFFFFF),  # ... and above
    ]
    # swap two chunks' step fields, and shift one word between two streams
    b = bytearray(SMALL)
    struct.pack_into("<ff", b, T + 4 * C, delta[1], delta[0])
    lies.append(_reseal(b))
    b = bytearray(SMALL)
    struct.pack_into("<II", b, T + 8 * C, int(counts[0]) + 1, int(counts[1]) - 1)
    lies.append(_reseal(b))
    for blob in lies:
        if blob != SMALL:
            _expect_decode_error(blob)


def test_the_old_coder_format_is_refused_by_name():
    """Format 1 (two rANS states a chunk) is no longer read: its blobs fail with a message
    that names the format, not as a corrupt stream."""
    assert SMALL[HEADER_BYTES] == H.CODER_FORMAT == 2
    with pytest.raises(fedhd.DecodeError, match="coder format 1"):
        fedhd.decode(_field(HEADER_BYTES, "B", 1))


def test_nonzero_padding_is_rejected():
    z = enc(np.zeros(5000, np.float32))
    b = bytearray(z)
    b[-1] = 1
    with pytest.raises(fedhd.DecodeError, match="padding"):
        fedhd.decode(_reseal(b))


def test_tiny_blob_claiming_a_huge_vector_fails_fast():
    for d, log2_chunk in ((2**31 - 1, 5), (2**31 - 1, 24), (10**8, 16)):
        t = time.perf_counter()
        with pytest.raises(fedhd.DecodeError, match="truncated"):
            fedhd.decode(rewrite_header(SMALL, log2_chunk=log2_chunk, d=d))
        assert time.perf_counter() - t < 0.05


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True)
@given(data=st.data())
def test_fuzz(data):
    """>= 1000 mutations (flips, splices, cuts, garbage words; half of them with a recomputed
    CRC): always DecodeError, or (only when the mutation left a consistent blob) a finite
    vector of the header's length."""
    b = bytearray(SMALL)
    kind = data.draw(st.sampled_from(["flip", "cut", "splice", "words", "tables"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] ^= data.draw(st.integers(1, 255))
    elif kind == "cut":
        i = data.draw(st.integers(0, len(b) - 1))
        del b[i:i + data.draw(st.integers(1, 16))]
    elif kind == "splice":
        i = data.draw(st.integers(0, len(b)))
        b[i:i] = data.draw(st.binary(min_size=1, max_size=24))
    elif kind == "words":  # overwrite coder words with garbage
        i = data.draw(st.integers(WORDS, len(b) - 4))
        b[i:i + 4] = data.draw(st.binary(min_size=4, max_size=4))
    else:  # overwrite a sub-header field
        i = data.draw(st.integers(HEADER_BYTES, WORDS - 1))
        b[i] = data.draw(st.integers(0, 255))
    resealed = data.draw(st.booleans())
    blob = _reseal(b) if resealed and len(b) >= HEADER_BYTES else bytes(b)
    if blob == SMALL:
        return
    try:
        y = fedhd.decode(blob)
    except fedhd.DecodeError:
        return
    # a consistent blob: with a recomputed CRC, a changed budget, seed or chunk scale is
    # still a valid blob (a budget is an upper bound; another rotation or dither; a
    # rescaled chunk), and so is a step changed too little to move the model's integer
    # frequencies, or a chunk exponent that gives this d the same chunks (d = 700 has no
    # full chunk from 2**10 up); any other change must be caught
    assert y.shape == (fedhd.header(blob).d,) and np.isfinite(y).all()
    assert len(blob) == len(SMALL) and resealed, kind
    diff = np.flatnonzero(np.frombuffer(blob, np.uint8) != np.frombuffer(SMALL, np.uint8))
    budget = (diff >= 4) & (diff < 6)
    same_chunks = (diff == 6) & np.array_equal(
        make_layout(700, fedhd.header(blob).log2_chunk).sizes, make_layout(700, 16).sizes)
    seeds_crc_tables = (diff >= 11) & (diff < H.TABLE_OFF + 8 * SMALL_C)
    assert (budget | same_chunks | seeds_crc_tables).all(), (kind, diff)


def test_the_controllers_sample_is_the_rotations_first_coordinates():
    """Large inputs: the rate controller's sample of a chunk (its first n / 8 rotated
    coordinates) comes from H_(n/8) of the sum of D x's eight blocks, not from a full
    rotation. It must be those coordinates, as accurate as the full float32 rotation
    (against a float64 reference), with the chunk's ||H D x||^2 = n ||x||^2."""
    d = (1 << 17) + 4096 + 100  # two sampled chunks, one of 4096 sampled, small ones not
    lay = make_layout(d, 16)
    keys = rng.sign_keys(5, lay.chunks)
    x = gauss(d, 12)
    shift = np.where(lay.sizes >= 1 << 12, 3, 0).astype(np.int64)
    ss, sample, off = E.rotate_sample(x, d, lay.starts, lay.sizes, keys, shift)
    full = np.empty(lay.padded, np.float32)
    ss_full = E.rotate_norms(x, d, lay.starts, lay.sizes, keys, full)
    np.testing.assert_allclose(ss, ss_full, rtol=1e-6)
    for c in range(lay.chunks):
        n, st = int(lay.sizes[c]), int(lay.starts[c])
        m = n >> int(shift[c])
        signed = np.zeros(n)
        real = min(n, d - st)
        signed[:real] = rng.signs(int(keys[c]), n)[:real] * x[st:st + real]
        ref = fwht(signed)[:m]
        err_sample = np.abs(sample[off[c]:off[c] + m] - ref).max()
        err_full = np.abs(full[st:st + m] - ref).max()
        assert err_sample <= 2 * err_full + 1e-6 * np.abs(ref).max(), (c, err_sample, err_full)


def test_decode_rotated_matches_decode():
    x = gauss(3000, 8)
    blob = enc(x, bits=2.5, seed=4)
    from fedhd.backend import CPU
    from fedhd.wire import as_bytes
    h, layout, payload = METHOD.open(as_bytes(blob))
    acc = METHOD.decode_rotated(payload, h, layout, 2.0)
    out = np.empty(3000, np.float32)
    CPU.unrotate(acc, layout, rng.sign_keys(h.seed, layout.chunks), out)
    np.testing.assert_allclose(out, 2 * fedhd.decode(blob), rtol=1e-5, atol=1e-5)


def _stream_corrupted(blob: bytes, chunk: int) -> bytes:
    """The blob with one word in the middle of chunk ``chunk``'s rANS stream flipped, CRC
    recomputed: it parses, and only decoding that stream can tell."""
    _, _, counts = tables(blob)
    C = counts.size
    start = H.TABLE_OFF + H.table_bytes(C) + 4 * (int(counts[:chunk].sum()) + counts[chunk] // 2)
    buf = bytearray(blob)
    buf[start:start + 4] = bytes(b ^ 0x5A for b in buf[start:start + 4])
    return seal(buf)


def test_a_low_memory_round_is_the_same_sum_and_still_refuses_bad_streams():
    """Aggregator(low_memory=True) checks every stream before touching the sum, then adds
    chunk by chunk: the same mean bit for bit, a blob with a bad last-but-one chunk leaves
    the sum as it was, and the norm it measures for max_norm is the default one (the blob
    then goes in with one rounding instead of two: the mean agrees to float32 rounding)."""
    d = 5 * (1 << 16) + 123
    blobs = [enc(gauss(d, k), bits=2, seed=7, dither_seed=k) for k in range(3)]
    bad = _stream_corrupted(enc(gauss(d, 9), bits=2, seed=7, dither_seed=9), 4)
    with pytest.raises(fedhd.DecodeError):
        fedhd.decode(bad)
    means, norms = [], []
    for low in (False, True):
        agg = fedhd.Aggregator(d, seed=7, low_memory=low)
        for k, b in enumerate(blobs[:2]):
            agg.add(b, 1.0 + k)
        before = agg.mean()
        with pytest.raises(fedhd.DecodeError):
            agg.add(bad, 5.0)
        np.testing.assert_array_equal(agg.mean(), before)
        agg.add(blobs[2], 3.0)
        means.append(agg.mean())
        norms.append(agg.add(blobs[0], 1.0, max_norm=1e9))
        means.append(agg.mean())
    np.testing.assert_array_equal(means[2], means[0])
    np.testing.assert_allclose(means[3], means[1], rtol=0, atol=1e-6 * np.abs(means[1]).max())
    assert norms[1] == pytest.approx(norms[0], rel=1e-12)


def test_benchmark_runs_small():
    from fedhd.bench import ec

    assert ec.main(["--log2-d", "16", "--repeats", "1", "--limit", "1e9"]) == 0
