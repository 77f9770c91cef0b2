"""fedhd.modular: the summable fixed-width code of secure aggregation (no Flower)."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from fedhd import DecodeError, modular, rng
from fedhd.modular import ModularSpec


def _vec(kind: str, d: int, seed: int = 0) -> np.ndarray:
    r = np.random.default_rng(seed)
    if kind == "gaussian":
        return r.standard_normal(d).astype(np.float32)
    if kind == "sparse":
        x = np.zeros(d, np.float32)
        x[[3, 500]] = [1.0, -2.0]
        return x
    return np.ones(d, np.float32)


def test_rng_streams_of_the_modular_code_are_pinned():
    assert rng.permutation(7, 10).tolist() == [2, 4, 0, 8, 7, 6, 1, 9, 5, 3]
    np.testing.assert_array_equal(rng.modular_dithers(7, 3), [
        0.3495837639912788, 0.04397467844698377, 0.6654166388281033])
    assert rng.modular_dither_seed(123, 456) == 1300562546668658427
    assert int(rng.stream_keys(7, rng.STREAM_PERMUTATION, 1)[0]) == 6856662477086364699
    assert len({rng.STREAM_PERMUTATION, rng.STREAM_MODULAR_DITHER, rng.STREAM_SIGNS,
                rng.STREAM_DITHER, rng.STREAM_METHOD, rng.STREAM_PILOT}) == 6


@pytest.mark.parametrize("bits", [2, 3, 5, 7, 8, 9, 11, 13, 16, 17, 24, 31, 32])
def test_pack_unpack_round_trip_at_every_width(bits):
    n = 777
    words = np.random.default_rng(bits).integers(0, 2**bits, n, dtype=np.uint64)
    words = words.astype(modular.word_dtype(bits))
    data = modular.pack(words, bits)
    assert len(data) == modular.packed_bytes(n, bits) == math.ceil(n * bits / 8)
    np.testing.assert_array_equal(modular.unpack(data, bits, n), words)


def test_unpack_refuses_wrong_lengths_and_padding_bits():
    data = modular.pack(np.arange(5, dtype=np.uint16), 11)  # 55 bits -> 7 bytes, 1 pad bit
    with pytest.raises(DecodeError, match="take 7 bytes"):
        modular.unpack(data[:-1], 11, 5)
    with pytest.raises(DecodeError, match="take 7 bytes"):
        modular.unpack(data + b"\0", 11, 5)
    with pytest.raises(DecodeError, match="padding"):
        modular.unpack(data[:-1] + bytes([data[-1] | 0x80]), 11, 5)


def test_spec_bytes_round_trip_and_every_bad_field_is_a_decode_error():
    spec = modular.spec_for(85_002, 2.0, 4, 10, seed=5)
    assert ModularSpec.from_bytes(spec.to_bytes()) == spec
    assert spec.padded % spec.n == 0 and spec.padded <= 1.02 * spec.d
    good = spec.to_bytes()
    fmt = struct.Struct("<2sBBBIQddd")
    fields = list(fmt.unpack(good))
    bad = {0: b"XX", 1: 9, 2: 1, 3: 40, 4: 0, 6: -1.0, 7: float("nan"), 8: 0.0}
    for i, value in bad.items():
        f = list(fields)
        f[i] = value
        with pytest.raises(DecodeError):
            ModularSpec.from_bytes(fmt.pack(*f))
    with pytest.raises(DecodeError, match="41 bytes"):
        ModularSpec.from_bytes(good[:-1])
    with pytest.raises(DecodeError, match="2\\*\\*52"):  # step far too small for the clip
        f = list(fields)
        f[6] = 1e-300
        ModularSpec.from_bytes(fmt.pack(*f))


@pytest.mark.parametrize("kind", ["gaussian", "sparse", "constant"])
def test_exactly_unbiased_for_clipped_inputs(kind):
    """The mean of N = 400 decodes (one summed code, N dither seeds, one rotation) against
    x: with an unbiased code, ||mean - x||^2 = (d step^2 / 12) / N times a chi-square of
    ~d degrees of freedom over d (d = 1000: sd 0.045), so the ratio lies in [0.75, 1.25]
    with margin; a bias of even 2 % of ||x|| would make it ~6."""
    d, N = 1000, 400
    x = _vec(kind, d)
    x *= 0.9 / np.linalg.norm(x)  # inside the clip norm
    spec = modular.spec_for(d, 1.0, 3, N, seed=11)
    acc = np.zeros(spec.padded, spec.dtype)
    for s in range(N):
        enc = modular.encode(x, spec, 1000 + s)
        assert not enc.clipped
        acc += enc.words
    mean = modular.decode_sum(acc, spec, range(1000, 1000 + N)) / N
    ratio = float(np.sum((mean - x) ** 2)) / (modular.noise_energy(spec) / N)
    assert 0.75 < ratio < 1.25, ratio
    assert modular.guard_count(acc, spec.bits) == 0


def test_one_clients_error_is_d_step_squared_over_12():
    """Mean over 20 dither seeds of ||x_hat - x||^2 / (d step^2 / 12): each term is a
    chi-square-like average of d = 4096 uniform errors (sd ~ 0.02), the mean sd ~ 0.005."""
    d = 4096
    x = _vec("gaussian", d)
    spec = modular.spec_for(d, float(np.linalg.norm(x)) * 1.2, 4, 1, seed=3)
    r = [float(np.sum((modular.decode_sum(modular.encode(x, spec, s).words, spec, [s]) - x)
                      ** 2)) / modular.noise_energy(spec) for s in range(20)]
    assert abs(np.mean(r) - 1) < 0.03, r


def test_clipping_and_weights_are_applied_and_reported():
    d, N = 2000, 200
    x = _vec("gaussian", d, 1) * 10  # norm ~ 447
    spec = modular.spec_for(d, 5.0, 4, N, seed=2)
    acc = np.zeros(spec.padded, spec.dtype)
    for s in range(N):
        enc = modular.encode(x, spec, s, weight=0.5)
        assert enc.clipped
        acc += enc.words
    mean = modular.decode_sum(acc, spec, range(N)) / N
    target = 0.5 * x * 5.0 / np.linalg.norm(x.astype(np.float64))
    assert np.sum((mean - target) ** 2) < 2 * modular.noise_energy(spec) / N
    small = modular.encode(x / 1000, spec, 0)
    assert not small.clipped


def test_a_chunk_that_holds_far_more_than_its_share_is_clipped_and_reported():
    d = 8192
    x = np.zeros(d, np.float32)
    x[0] = 1.9  # inside C = 2, but one chunk holds all the energy (C_c = 1.06)
    spec = modular.spec_for(d, 2.0, 4, 1, seed=0, log2_chunk=10)
    assert modular.encode(x, spec, 0).clipped
    assert not modular.encode(_vec("gaussian", d) / 200, spec, 0).clipped


def test_the_sum_does_not_wrap_with_headroom_and_a_wrap_is_visible_without():
    """K identical updates at the clip norm (the worst case: all aligned). Headroom 2:
    the bound says no wrap, the decoded sum is K x within the noise, nothing in the guard
    band. Headroom 0: the aligned sum spans +-2 K sigma per coordinate against a range of
    +-K sigma... it wraps, the decode is far off, and the guard band shows it."""
    d, K = 4096, 8
    x = _vec("gaussian", d, 4)
    x *= 2.0 / np.linalg.norm(x)
    for headroom, wraps in ((2, False), (0, True)):
        spec = modular.spec_for(d, 2.0, 3, K, seed=9, headroom=headroom)
        acc = np.zeros(spec.padded, spec.dtype)
        for s in range(K):
            acc += modular.encode(x, spec, s).words
        err = float(np.sum((modular.decode_sum(acc, spec, range(K)) - K * x) ** 2))
        if wraps:
            assert modular.guard_count(acc, spec.bits) > 0
            assert err > 100 * K * modular.noise_energy(spec)
        else:
            assert modular.wrap_probability_bound(spec, K) < 1e-6
            assert modular.guard_count(acc, spec.bits) == 0
            assert err < 2 * K * modular.noise_energy(spec)


def test_modulus_bits_and_the_bound_as_stated():
    assert modular.modulus_bits(4, 10, 2) == 4 + 4 + 2
    assert modular.modulus_bits(2, 100, 2) == 2 + 7 + 2
    for K in (10, 100):
        for b in (2, 4, 8):
            assert modular.wrap_probability_bound(modular.spec_for(85_002, 2.0, b, K, 1), K) \
                < 1e-12


def test_encode_refuses_bad_inputs():
    spec = modular.spec_for(100, 1.0, 4, 2, seed=0)
    with pytest.raises(ValueError, match="coordinates"):
        modular.encode(np.zeros(99, np.float32), spec, 0)
    with pytest.raises(ValueError, match="NaN"):
        modular.encode(np.full(100, np.nan, np.float32), spec, 0)
    with pytest.raises(ValueError, match="weight"):
        modular.encode(np.zeros(100, np.float32), spec, 0, weight=1.5)
    with pytest.raises(DecodeError):
        modular.decode_sum(np.zeros(3, spec.dtype), spec, [0])
