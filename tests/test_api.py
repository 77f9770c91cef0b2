import subprocess
import sys

import numpy as np
import pytest

import fedhd


def hd_encode(x, *args, **kw):
    """``fedhd.encode`` with hd-dither unless a method is named (these tests are about it)."""
    if len(args) < 3:
        kw.setdefault("method", "hd-dither")
    return fedhd.encode(x, *args, **kw)


def _x(d=3000, seed=0):
    return np.random.default_rng(seed).standard_normal(d).astype(np.float32)


def test_methods_lists_the_core_methods():
    assert {"identity", "hd-dither"} <= set(fedhd.methods())


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_round_trip_dtypes_and_length(dtype):
    x = _x().astype(dtype)
    y = fedhd.decode(hd_encode(x, bits=4, seed=3))
    assert y.dtype == np.float32 and y.shape == x.shape
    err = np.sum((y - x.astype(np.float32)) ** 2) / np.sum(x.astype(np.float32) ** 2)
    assert err < 3 * 0.0106  # 3 x C_4: a single draw of a chi-square-like error


def test_identity_is_exact():
    x = _x()
    np.testing.assert_array_equal(fedhd.decode(hd_encode(x, method="identity")), x)


def test_same_arguments_same_bytes_in_another_process():
    x = _x(5000)
    here = hd_encode(x, bits=2, seed=7).hex()
    code = (
        "import numpy as np, fedhd;"
        "x = np.random.default_rng(0).standard_normal(5000).astype(np.float32);"
        "print(fedhd.encode(x, bits=2, seed=7, method=\"hd-dither\").hex())"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert here == there


def test_numpy_and_torch_give_identical_bytes():
    torch = pytest.importorskip("torch")
    x = _x(4000)
    for bits in (1, 2, 5):
        assert hd_encode(x, bits=bits, seed=2) == hd_encode(torch.from_numpy(x),
                                                                  bits=bits, seed=2)
    assert hd_encode(x, method="identity") == hd_encode(torch.from_numpy(x),
                                                              method="identity")


def test_seeds_change_bytes():
    x = _x()
    assert hd_encode(x, seed=1) != hd_encode(x, seed=2)
    assert hd_encode(x, seed=1, dither_seed=5) != hd_encode(x, seed=1, dither_seed=6)


def test_zero_vector_round_trips_to_zero():
    for d in (1, 33, 5000):
        y = fedhd.decode(hd_encode(np.zeros(d, np.float32), bits=2))
        assert np.all(y == 0)


def test_codec_reuses_output_buffer():
    codec = fedhd.Codec("hd-dither", 3)
    x = _x()
    out = np.empty_like(x)
    y = codec.decode(codec.encode(x, seed=1), out=out)
    assert y is out


@pytest.mark.parametrize(
    "bad, exc",
    [
        (np.array([1.0, np.nan], np.float32), ValueError),
        (np.array([1.0, np.inf], np.float32), ValueError),
        (np.array([1.0, -np.inf]), ValueError),
        (np.arange(10), TypeError),
        (np.ones((3, 3), np.float32), ValueError),
        (np.zeros(0, np.float32), ValueError),
        ([1.0, 2.0], TypeError),
        (np.array([1 + 1j, 2]), TypeError),
    ],
)
def test_bad_input_raises_typed_errors(bad, exc):
    with pytest.raises(exc):
        hd_encode(bad, bits=2)


@pytest.mark.parametrize("bits", [0, 9, 2.5, -1, "2", None if False else 1.5])
def test_bad_bits(bits):
    with pytest.raises((ValueError, TypeError)):
        hd_encode(_x(100), bits=bits)


def test_bad_method_and_seed():
    with pytest.raises(ValueError, match="unknown method"):
        hd_encode(_x(100), method="nope")
    with pytest.raises(ValueError):
        hd_encode(_x(100), seed=-1)
    with pytest.raises(ValueError):
        hd_encode(_x(100), seed=2**64)
    with pytest.raises(TypeError):
        hd_encode(_x(100), seed=1.5)


def test_torch_non_float_rejected():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError):
        hd_encode(torch.arange(10), bits=2)


def test_flatten_unflatten_exact_for_state_dict():
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4))
    sd = model.state_dict()
    vec, spec = fedhd.flatten(sd)
    assert vec.dtype == np.float32 and vec.shape == (spec.size,)
    back = fedhd.unflatten(vec, spec)
    assert list(back) == list(sd)
    for k, v in sd.items():
        assert back[k].shape == tuple(v.shape)
        assert back[k].dtype == v.numpy().dtype
        np.testing.assert_array_equal(back[k], v.numpy())  # non-float (int64 counter) exact


def test_flatten_list_and_half_precision():
    arrays = [np.ones((2, 3), np.float16), np.array([1, 2, 3], np.int32), np.zeros(4)]
    vec, spec = fedhd.flatten(arrays)
    back = fedhd.unflatten(vec, spec)
    assert [a.dtype for a in back] == [np.float16, np.int32, np.float64]
    np.testing.assert_array_equal(back[1], [1, 2, 3])
    with pytest.raises(ValueError):
        fedhd.unflatten(vec[:-1], spec)
