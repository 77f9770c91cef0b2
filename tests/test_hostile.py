"""A hostile client with a validly sealed blob must not move the global model.

The attack: any client can edit a field of its blob and recompute the CRC (CRC-32 is not
authentication). Defences: every decoder bounds its fields (``fedhd.methods.base.
MAX_DECODED``), the Aggregator refuses a contribution that could overflow its float32 sum,
and the strategies' ``max_update_norm`` drops or clips an outsized update.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from flwr.app import Error, Message
from test_strategies import run_round, trainer_from, updates

import fedhd
from fedhd.wire import HEADER_BYTES, seal
from strategies import CompressedFedAvg
from strategies import constants as C

G = {"w": np.zeros((300, 200), np.float32), "b": np.zeros(200, np.float32)}
WEIGHTS = [10, 20, 30, 40]


def _with_first_float(reply: Message, value: float) -> Message:
    """The reply with the first float32 of its blob's payload set to ``value``, resealed."""
    arr = reply.content["arrays"]
    blob = bytearray(arr[C.BLOB_KEY].data)
    struct.pack_into("<f", blob, HEADER_BYTES, value)
    arr[C.BLOB_KEY] = type(arr[C.BLOB_KEY])(dtype=C.BLOB_DTYPE, shape=(len(blob),),
                                            stype=C.BLOB_STYPE, data=seal(blob))
    return reply


def _as_error(reply: Message) -> Message:
    """The reply as a Flower error reply: the server leaves it out."""
    factory = Message
    return factory(error=Error(code=0, reason="left out"), metadata=reply.metadata)


@pytest.mark.parametrize("method", ["hd-dither", "eden", "turboquant", "hd-sr", "drive"])
@pytest.mark.parametrize("value", [3e38, float("inf"), float("nan"), -1.0, 1e30])
def test_a_round_with_one_hostile_reply_equals_the_round_without_it(method, value):
    ups = updates(4, seed=3)
    bits = 1 if method == "drive" else 2
    hostile, _, _, _ = run_round(
        CompressedFedAvg(method, bits, 5), G, trainer_from(ups, WEIGHTS),
        tamper=lambda i, r: _with_first_float(r, value) if i == 3 else r)
    without, _, _, _ = run_round(
        CompressedFedAvg(method, bits, 5), G, trainer_from(ups, WEIGHTS),
        tamper=lambda i, r: _as_error(r) if i == 3 else r)
    for k in G:
        h, w = hostile[k].numpy(), without[k].numpy()
        assert np.isfinite(h).all()
        if method == "hd-sr" and value == -1.0:
            # a lowest level of -1 is a blob hd-sr's encoder can produce: accepted, bounded;
            # what bounds its effect is max_update_norm (below)
            assert np.abs(h).max() < 10
            continue
        np.testing.assert_array_equal(h, w)


def _norm_round(bound, mode, method="identity"):
    ups = updates(4, seed=8)
    ups[3] = {k: 100 * v for k, v in ups[3].items()}  # one outsized update
    s = CompressedFedAvg(method, None, 5, max_update_norm=bound, norm_bound=mode)
    arrays, metrics, _, _ = run_round(s, G, trainer_from(ups, WEIGHTS))
    vec = np.concatenate([arrays[k].numpy().ravel() for k in ("w", "b")]).astype(np.float64)
    flat = [np.concatenate([u[k].ravel() for k in ("w", "b")]).astype(np.float64) for u in ups]
    return vec, metrics, flat


def test_norm_bound_drop():
    honest = max(float(np.linalg.norm(u)) for u in _norm_round(None, "drop")[2][:3])
    vec, metrics, flat = _norm_round(3 * honest, "drop")
    assert metrics[C.METRIC_NORM_DROPPED] == 1 and metrics[C.METRIC_ACCEPTED] == 3
    w = np.asarray(WEIGHTS[:3], float)
    np.testing.assert_allclose(vec, sum(wk * f for wk, f in zip(w, flat[:3])) / w.sum(),
                               rtol=0, atol=1e-6)


def test_norm_bound_clip():
    honest = max(float(np.linalg.norm(u)) for u in _norm_round(None, "clip")[2][:3])
    bound = 3 * honest
    vec, metrics, flat = _norm_round(bound, "clip")
    assert metrics[C.METRIC_NORM_CLIPPED] == 1 and metrics[C.METRIC_ACCEPTED] == 4
    flat[3] = flat[3] * bound / np.linalg.norm(flat[3])
    w = np.asarray(WEIGHTS, float)
    np.testing.assert_allclose(vec, sum(wk * f for wk, f in zip(w, flat)) / w.sum(),
                               rtol=0, atol=1e-6)
    off, m_off, _ = _norm_round(None, "clip")
    assert C.METRIC_NORM_CLIPPED in m_off and m_off[C.METRIC_NORM_CLIPPED] == 0
    assert np.abs(off - vec).max() > 0.1 * np.abs(off).max()  # the bound did change the model


@pytest.mark.parametrize("method", ["hd-dither-ec", "qsgd", "turboquant", "hd-dither", "eden"])
def test_update_norm_is_the_decoded_norm_and_stated_norms_are_the_inputs(method):
    """update_norm measures the decoded vector (rotated domain: padding included, so at
    least the decoded norm); where a blob states per-chunk norms they are the input's."""
    from fedhd.methods import get
    from fedhd.wire import as_bytes

    x = np.random.default_rng(2).standard_normal(70_001).astype(np.float32)
    blob = fedhd.encode(x, bits=2, seed=1, method=method)
    decoded = float(np.linalg.norm(fedhd.decode(blob).astype(np.float64)))
    assert decoded <= fedhd.update_norm(blob) <= decoded * (1 + 1e-3)
    m = get(method)
    h, layout, payload = m.open(as_bytes(blob))
    stated = m.stated_norm(payload, h, layout)
    if method in ("hd-dither-ec", "qsgd", "turboquant"):
        assert stated == pytest.approx(float(np.linalg.norm(x)), rel=1e-6)


def test_codes_chosen_to_exceed_the_stated_norm_do_not_pass_the_bound():
    """qsgd states ||x_c|| but its codes can decode to sqrt(n) times more: the bound
    measures the decoded update, so such a blob is refused (or clipped)."""
    x = np.random.default_rng(3).standard_normal(4096).astype(np.float32)
    blob = bytearray(fedhd.encode(x, bits=4, seed=1, method="qsgd", log2_chunk=10))
    C = 4
    blob[HEADER_BYTES + 4 * C:] = bytes([0xEE]) * (len(blob) - HEADER_BYTES - 4 * C)  # +1 levels
    blob = seal(blob)
    norm = float(np.linalg.norm(x))
    agg = fedhd.Aggregator(4096, method="qsgd")
    with pytest.raises(fedhd.NormExceeded):
        agg.add(blob, 1.0, max_norm=2 * norm)
    assert agg.count == 0
    got = agg.add(blob, 1.0, max_norm=2 * norm, clip=True)
    assert got > 5 * norm
    assert np.linalg.norm(agg.mean()) == pytest.approx(2 * norm, rel=1e-5)


def test_aggregator_refuses_a_sum_that_could_overflow_and_keeps_it():
    x = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    agg = fedhd.Aggregator(4096, seed=1)
    agg.add(fedhd.encode(x, bits=2, seed=1, method="hd-dither"), 1.0)
    before = agg.mean()
    big = fedhd.encode(x * np.float32(1e24), bits=2, seed=1, method="hd-dither")
    with pytest.raises(fedhd.DecodeError, match="overflow"):
        agg.add(big, 1e12)  # each value decodes fine; weight * 4096 of them does not
    np.testing.assert_array_equal(agg.mean(), before)
    assert agg.count == 1 and np.isfinite(before).all()


def test_encoders_refuse_inputs_whose_blob_would_be_refused():
    x = np.full(1024, 1e36, np.float32)
    for method in ("hd-dither", "eden", "hd-sr"):
        with pytest.raises(ValueError, match="too large"):
            fedhd.encode(x, bits=2, seed=1, method=method)


def test_an_outsized_weight_is_refused_and_the_round_goes_on():
    """num-examples is the client's word too: above 2**53 the reply is dropped."""
    ups = updates(4, seed=3)
    arrays, metrics, _, _ = run_round(CompressedFedAvg("hd-dither", 2, 5), G,
                                      trainer_from(ups, [10, 20, 30, 4e38]))
    assert metrics[C.METRIC_DROPPED] == 1 and metrics[C.METRIC_ACCEPTED] == 3
    assert all(np.isfinite(arrays[k].numpy()).all() for k in G)
    agg = fedhd.Aggregator(100)
    for bad in (1e300, float("inf"), 0.0, -1.0):
        with pytest.raises(ValueError, match="weight"):
            agg.add_dense(np.ones(100), bad)
    with pytest.raises(ValueError, match="max_norm"):
        agg.add_dense(np.ones(100), 1.0, max_norm=-1.0, clip=True)
    agg.add_dense(np.ones(100), 1.0)
    with pytest.raises(ValueError, match="float32 vector of length 100"):
        agg.mean(out=np.zeros(100, np.float64))  # a buffer that does not fit is an error
    assert agg.count == 1 and (agg.mean() == 1.0).all()
