"""One contract, run on every registered method (as TFF's tensor_encoding does per stage)."""

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_peers import fwht

import fedhd
from fedhd.methods import get
from fedhd.wire import HEADER_BYTES, rewrite_header, seal

METHODS = fedhd.methods()
D = 1000


def _x(d=D, seed=0):
    return np.random.default_rng(seed).standard_normal(d).astype(np.float32)


def _blob(method, d=D):
    return fedhd.encode(_x(d), bits=get(method).default_bits, seed=5, method=method,
                        dither_seed=6)


@pytest.mark.parametrize("method", METHODS)
def test_round_trip_shape_and_determinism(method):
    blob = _blob(method)
    assert blob == _blob(method)
    y = fedhd.decode(blob)
    assert y.dtype == np.float32 and y.shape == (D,) and np.isfinite(y).all()
    h = fedhd.header(blob)
    assert h.d == D and h.seed == 5 and fedhd.methods()[0] is not None


@pytest.mark.parametrize("method", METHODS)
def test_aggregator_equals_mean_of_decodes(method):
    """Decode-after-sum is the same linear map as decoding each blob: equal to float32
    rounding (relative 1e-5 of the vector norm)."""
    m = get(method)
    blobs = [fedhd.encode(_x(seed=k), bits=m.default_bits, seed=9, method=method,
                          dither_seed=100 + k) for k in range(5)]
    weights = [1.0, 2.0, 3.0, 4.0, 5.0]
    agg = fedhd.Aggregator(D, seed=9, method=method)
    for b, w in zip(blobs, weights):
        agg.add(b, w)
    expect = sum(w * fedhd.decode(b).astype(np.float64) for b, w in zip(blobs, weights))
    expect /= sum(weights)
    got = agg.mean()
    assert np.linalg.norm(got - expect) <= 1e-5 * np.linalg.norm(expect) + 1e-7


@pytest.mark.parametrize("method", ["hd-dither", "hd-dither-ec", "qsgd"])
def test_a_released_mean_is_the_same_mean_and_empties_the_aggregator(method):
    """mean(release=True) gives the same bits as mean() (for a rotated method in the sum's
    own memory) and leaves the aggregator ready for a new round."""
    d = 70_001  # several chunks, the last one partial
    m = get(method)
    blobs = [fedhd.encode(_x(d, seed=k), bits=m.default_bits, seed=9, method=method,
                          dither_seed=k) for k in range(3)]
    agg = fedhd.Aggregator(d, seed=9)
    for k, b in enumerate(blobs):
        agg.add(b, 1.0 + k)
    kept = agg.mean()
    np.testing.assert_array_equal(agg.mean(), kept)  # mean() leaves the sum alone
    with pytest.raises(ValueError, match="release"):
        agg.mean(out=np.empty(d, np.float32), release=True)
    released = agg.mean(release=True)
    np.testing.assert_array_equal(released, kept)
    assert agg.count == 0 and agg.total_weight == 0
    with pytest.raises(ValueError, match="nothing"):
        agg.mean()
    agg.add(blobs[0], 1.0)  # a new round
    np.testing.assert_array_equal(agg.mean(), fedhd.decode(blobs[0]))


def test_unrotate_keeps_its_input_and_may_write_over_it():
    from fedhd import rng
    from fedhd.kernels import transform_pack as K
    from fedhd.layout import make_layout

    d = 70_001
    lay = make_layout(d, 12)
    keys = rng.sign_keys(3, lay.chunks)
    acc = np.random.default_rng(1).standard_normal(lay.padded).astype(np.float32)
    before = acc.copy()
    out = np.empty(d, np.float32)
    K.unrotate(acc, d, lay.starts, lay.sizes, keys, out)
    np.testing.assert_array_equal(acc, before)
    ref = np.empty(d, np.float32)  # the textbook transform, chunk by chunk
    for c in range(lay.chunks):
        a, n = lay.starts[c], lay.sizes[c]
        y = fwht(before[a:a + n])
        real = min(n, d - a)
        ref[a:a + real] = (rng.signs(int(keys[c]), n)[:real] * y[:real])
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    K.unrotate(acc, d, lay.starts, lay.sizes, keys, acc[:d])  # in place
    np.testing.assert_array_equal(acc[:d], out)
    # with a weight, each value is divided exactly as ``finish`` divides, bit for bit
    mean = np.empty(d, np.float32)
    K.unrotate(before, d, lay.starts, lay.sizes, keys, mean, 7.3)
    K.finish(out, 7.3, out)
    np.testing.assert_array_equal(mean, out)


@pytest.mark.parametrize("method", METHODS)
def test_aggregator_rejects_mismatched_blobs_and_keeps_sum(method):
    m = get(method)
    agg = fedhd.Aggregator(D, seed=9, method=method)
    good = fedhd.encode(_x(), bits=m.default_bits, seed=9, method=method)
    agg.add(good, 1.0)
    before = agg.mean()
    bad = [good[:-1], b"garbage", fedhd.encode(_x(D + 1), bits=m.default_bits, seed=9,
                                                  method=method)]
    if m.commutes_with_sum:
        bad.append(fedhd.encode(_x(), bits=m.default_bits, seed=10, method=method))
    for b in bad:
        with pytest.raises(fedhd.DecodeError):
            agg.add(b, 1.0)
    np.testing.assert_array_equal(agg.mean(), before)
    assert agg.count == 1


@pytest.mark.parametrize("method", METHODS)
def test_truncated_and_extended_blobs(method):
    blob = _blob(method)
    for cut in sorted({0, 1, 2, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + 1,
                       len(blob) // 2, len(blob) - 1}):
        with pytest.raises(fedhd.DecodeError):
            fedhd.decode(blob[:cut])
    for extra in (b"\0", b"\xff" * 7):
        with pytest.raises(fedhd.DecodeError):
            fedhd.decode(blob + extra)


@pytest.mark.parametrize("method", METHODS)
def test_consistent_crc_but_lying_header(method):
    """Blobs whose CRC is valid but whose header lies about d or bits."""
    blob = _blob(method)
    lies: list[dict] = [{"d": D * 1000}, {"d": 2**31 - 1}, {"d": D + 64}]
    if get(method).integer_bits:  # a budget (float bits) is only an upper bound
        lies.append({"bits": 7})
    if get(method).commutes_with_sum:  # a different chunk layout changes the payload size
        lies.append({"log2_chunk": 6})
    for lie in lies:
        t = time.perf_counter()
        with pytest.raises(fedhd.DecodeError):
            fedhd.decode(rewrite_header(blob, **lie))
        assert time.perf_counter() - t < 1.0


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_blobs_raise_decode_error(method, data):
    """Random byte flips, splices and garbage: DecodeError (or, if the CRC and every field
    happen to stay consistent, a finite vector of the header's length) within 1 s."""
    blob = bytearray(_blob(method, 300))
    kind = data.draw(st.sampled_from(["flip", "splice", "garbage", "resealed-flip"]))
    if kind in ("flip", "resealed-flip"):
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] ^= data.draw(st.integers(1, 255))
        if kind == "resealed-flip" and len(blob) >= HEADER_BYTES:
            blob = bytearray(seal(blob))
    elif kind == "splice":
        i = data.draw(st.integers(0, len(blob)))
        blob[i:i] = data.draw(st.binary(min_size=1, max_size=40))
    else:
        blob = bytearray(data.draw(st.binary(min_size=0, max_size=200)))
        if data.draw(st.booleans()):
            blob[:2] = b"FH"
    t = time.perf_counter()
    try:
        y = fedhd.decode(bytes(blob))
    except fedhd.DecodeError:
        pass
    else:
        assert y.shape == (fedhd.header(bytes(blob)).d,)
    assert time.perf_counter() - t < 1.0


def test_decode_rejects_non_bytes():
    for bad in (None, 3, "FH", [1, 2]):
        with pytest.raises(fedhd.DecodeError):
            fedhd.decode(bad)
