"""Error feedback for the biased methods: scaled-sign and powersgd (their formats, the rank
rule, the warm start) and the client-side residual of ``compression_mod`` (the identity
sum of decodes = sum of updates - final residual, resets, the server's switch), through a
Flower round on the in-process grid."""

from __future__ import annotations

import itertools
import math
import os
import struct

import numpy as np
import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

import fedhd
from benchmarks.localgrid import LocalGrid, transport
from fedhd import rng
from fedhd.layout import make_layout
from fedhd.methods import get
from fedhd.methods.base import MAX_DECODED
from fedhd.methods.powersgd import PowerSGDContext, plan, rank_for
from fedhd.methods.scaled_sign import real_sizes
from fedhd.wire import HEADER_BYTES, seal
from strategies import CompressedFedAvg, CompressedStrategy, compression_mod
from strategies import constants as C
from strategies.round import OPTIONS, RoundCompressor
from strategies.settings import PreconditionError, Settings


def gaussian(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def resealed(blob: bytes, offset: int, fmt: str, value) -> bytes:
    b = bytearray(blob)
    struct.pack_into(fmt, b, offset, value)
    return seal(b)


# --- scaled-sign ---------------------------------------------------------------------------


def test_scaled_sign_round_trip_and_scale():
    """x_hat = s_c sign(x) with s_c = ||x_c||_1 / n_c, the projection of x_c on its signs:
    <x_c - x_hat_c, sign(x_c)> = 0. 1 bit a coordinate + 4 bytes a chunk."""
    d = 5000
    x = gaussian(d, 1) * np.repeat([0.1, 1.0, 10.0, 3.0, 0.5], d // 5).astype(np.float32)
    blob = fedhd.encode(x, bits=1, method="scaled-sign", seed=3, dither_seed=4, log2_chunk=10)
    lay = make_layout(d, 10)
    assert len(blob) == HEADER_BYTES + 4 * lay.chunks + lay.padded // 8
    assert 8 * len(blob) / d < 1.11  # header, 8 scales, 24 padded coordinates
    y = fedhd.decode(blob)
    for c in range(lay.chunks):
        sl = slice(int(lay.starts[c]), int(lay.starts[c] + real_sizes(lay)[c]))
        s = np.float32(np.abs(x[sl].astype(np.float64)).mean())
        np.testing.assert_array_equal(y[sl], s * np.sign(x[sl]))
        assert abs(float((x[sl] - y[sl]).astype(np.float64) @ np.sign(x[sl]))) < 1e-3 * s * (
            sl.stop - sl.start)
    assert get("scaled-sign").unbiased is False and not get("scaled-sign").commutes_with_sum
    assert fedhd.update_norm(blob) == pytest.approx(float(np.linalg.norm(y)), rel=1e-6)


def test_scaled_sign_zeros_take_the_documented_coin():
    d = 4096
    x = np.zeros(d, np.float32)
    x[::2] = 1.0  # the odd coordinates are exact zeros
    blob = fedhd.encode(x, bits=1, method="scaled-sign", dither_seed=77)
    y = fedhd.decode(blob)
    g = np.arange(1, d, 2, dtype=np.uint64)
    coin = (rng.splitmix(rng.rounding_key(77), g) & np.uint64(1)).astype(bool)
    np.testing.assert_array_equal(y[1::2] > 0, coin)
    assert 0.45 < coin.mean() < 0.55  # a fair coin, not all one side
    np.testing.assert_array_equal(y[::2], 0.5)  # ||x||_1 / n = 0.5
    zero = fedhd.decode(fedhd.encode(np.zeros(d, np.float32), bits=1, method="scaled-sign"))
    np.testing.assert_array_equal(zero, 0)


def test_scaled_sign_refuses_bad_fields_and_oversized_inputs():
    blob = fedhd.encode(gaussian(1000), bits=1, method="scaled-sign", seed=1)
    for v in (float("nan"), float("inf"), -1.0, 3e38):
        with pytest.raises(fedhd.DecodeError):
            fedhd.decode(resealed(blob, HEADER_BYTES, "<f", v))
    b = bytearray(blob)
    b[-1] |= 0x80  # a padding bit (1000 = 31 * 32 + 8: 24 padded coordinates)
    with pytest.raises(fedhd.DecodeError, match="padding"):
        fedhd.decode(seal(b))
    with pytest.raises(fedhd.DecodeError):  # scaled-sign is 1 bit only
        fedhd.decode(resealed(blob, 4, "<H", 32))
    with pytest.raises(ValueError, match="too large"):
        fedhd.encode(np.full(64, 1e30, np.float32), bits=1, method="scaled-sign")
    with pytest.raises(ValueError):
        fedhd.encode(np.array([1, np.inf], np.float32), bits=1, method="scaled-sign")


# --- powersgd ------------------------------------------------------------------------------


def low_rank(rows: int, cols: int, r: int, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    return (g.standard_normal((rows, r)) @ g.standard_normal((r, cols))).astype(np.float32)


def test_powersgd_rank_rule():
    """r = max(1, floor(R rows cols / (32 (rows + cols)))), raw when r (rows + cols) >=
    rows cols; the factors cost at most R bits per matrix coordinate once r >= 1 fits."""
    assert rank_for(2, 300, 200) == 7  # floor(2 * 60000 / 16000)
    assert rank_for(1, 300, 200) == 3
    assert rank_for(0.0625, 300, 200) == 1  # rank 1 at least
    assert rank_for(8, 4, 4) == 1 and rank_for(32, 4, 4) == 0  # 2 * 8 = 16: raw
    assert rank_for(2, 1, 1000) == 0 and rank_for(2, 1000, 1) == 0  # vectors go raw
    for R in (0.5, 1, 2, 4, 8):
        for rows, cols in [(300, 200), (64, 576), (1000, 10), (128, 128)]:
            r = rank_for(R, rows, cols)
            assert r >= 1 and r * (rows + cols) < rows * cols
            if R * rows * cols >= 32 * (rows + cols):  # rank 1 fits the budget
                assert 32 * r * (rows + cols) <= R * rows * cols
                assert 32 * (r + 1) * (rows + cols) > R * rows * cols or r + 1 >= min(rows,
                                                                                      cols)


def test_powersgd_blob_size_and_views():
    shapes = [(300, 200), (200,), (), (16, 3, 3, 3), (10, 1)]
    d = sum(math.prod(s) for s in shapes)
    x = gaussian(d, 2)
    R = 2.0
    views = plan(d, round(R * 16), shapes)
    assert [(v.offset, v.rows, v.cols, v.tensor) for v in views] == [
        (0, 300, 200, 0), (60201, 16, 27, 3)]  # the vector, the scalar and (10, 1) go raw
    blob = fedhd.encode(x, bits=R, method="powersgd", context=PowerSGDContext(shapes))
    raw = d - 60000 - 432
    factors = sum(v.rank * (v.rows + v.cols) for v in views)
    assert len(blob) == HEADER_BYTES + 4 + 12 * len(views) + 4 * raw + 4 * factors
    y = fedhd.decode(blob)
    np.testing.assert_array_equal(y[60000:60201], x[60000:60201])  # vectors exactly
    np.testing.assert_array_equal(y[-10:], x[-10:])
    # no shapes: one near-square matrix, the last d - rows * cols coordinates raw
    (v,) = plan(1000, 32, None)
    assert (v.offset, v.rows, v.cols, v.rank) == (0, 31, 32, 1)
    y = fedhd.decode(fedhd.encode(gaussian(1000), bits=2, method="powersgd"))
    np.testing.assert_array_equal(y[992:], gaussian(1000)[992:])


def test_powersgd_reconstructs_a_rank_r_matrix_exactly():
    rows, cols, r = 120, 90, 4
    R = 32 * r * (rows + cols) / (rows * cols) + 0.1  # exactly rank r
    assert rank_for(R, rows, cols) == r
    M = low_rank(rows, cols, r)
    b = gaussian(33, 5)
    x = np.concatenate([b, M.ravel()])
    ctx = PowerSGDContext([(33,), (rows, cols)])
    y = fedhd.decode(fedhd.encode(x, bits=R, method="powersgd", context=ctx, dither_seed=9))
    np.testing.assert_array_equal(y[:33], b)
    scale = float(np.abs(M).max())
    np.testing.assert_allclose(y[33:].reshape(rows, cols), M, rtol=0, atol=2e-5 * scale)
    assert ctx.warm_start[0] is None and ctx.warm_start[1].shape == (cols, r)
    # a matrix of lower rank than r (dependent columns set to 0) is exact too
    M1 = low_rank(rows, cols, 2, seed=3)
    y = fedhd.decode(fedhd.encode(M1.ravel(), bits=R, method="powersgd",
                                  context=PowerSGDContext([(rows, cols)])))
    np.testing.assert_allclose(y.reshape(rows, cols), M1, rtol=0,
                               atol=2e-5 * float(np.abs(M1).max()))


def test_powersgd_warm_start_improves_over_rounds():
    """One power iteration a round from the last Q: the error of a fixed matrix with a
    decaying spectrum falls, round after round, to within 0.5% of the best rank-r error
    (the truncated SVD; sigma_5 / sigma_4 = 0.86 here, so a dozen rounds)."""
    rows, cols = 80, 60
    g = np.random.default_rng(4)
    M = (g.standard_normal((rows, cols)) * 0.8 ** np.arange(cols)).astype(np.float32)
    R = 4.0
    r = rank_for(R, rows, cols)
    s = np.linalg.svd(M.astype(np.float64), compute_uv=False)
    best = math.sqrt(float((s[r:] ** 2).sum())) / float(np.linalg.norm(s))
    ctx = PowerSGDContext([M.shape])
    errs = []
    for _ in range(12):
        y = fedhd.decode(fedhd.encode(M.ravel(), bits=R, method="powersgd", context=ctx,
                                      dither_seed=1))
        errs.append(float(np.linalg.norm(y - M.ravel()) / np.linalg.norm(M)))
    assert errs[0] > 1.1 * best
    assert all(b <= a * (1 + 1e-6) for a, b in itertools.pairwise(errs))
    assert errs[-1] < 1.005 * best
    # without the warm start every round is the first one
    cold = fedhd.decode(fedhd.encode(M.ravel(), bits=R, method="powersgd", dither_seed=1,
                                     context=PowerSGDContext([M.shape])))
    assert float(np.linalg.norm(cold - M.ravel()) / np.linalg.norm(M)) == pytest.approx(errs[0])


def test_powersgd_warm_start_that_does_not_fit_is_ignored():
    M = gaussian(50 * 40, 6)
    r = rank_for(4, 50, 40)
    fresh = fedhd.encode(M, bits=4, method="powersgd", dither_seed=2,
                         context=PowerSGDContext([(50, 40)]))
    for bad in (np.ones((40, r + 1), np.float32), np.ones((39, r), np.float32),
                np.full((40, r), np.nan, np.float32), np.zeros((40, r), np.float32), "x"):
        ctx = PowerSGDContext([(50, 40)], [bad])  # type: ignore[list-item]
        assert fedhd.encode(M, bits=4, method="powersgd", dither_seed=2, context=ctx) == fresh
    with pytest.raises(ValueError, match="shapes hold"):
        fedhd.encode(M, bits=4, method="powersgd", context=PowerSGDContext([(50, 41)]))
    with pytest.raises(TypeError):
        fedhd.encode(M, bits=4, method="powersgd", context={"shapes": [(50, 40)]})
    with pytest.raises(TypeError):
        fedhd.encode(M, bits=4, method="topk", context=PowerSGDContext([(50, 40)]))


def test_powersgd_refuses_malformed_blobs():
    shapes = [(40, 30), (7,)]
    x = gaussian(1207, 8)
    blob = fedhd.encode(x, bits=4, method="powersgd", context=PowerSGDContext(shapes))
    H = HEADER_BYTES
    view = H + 4
    raw = H + 4 + 12
    fac = raw + 4 * 7
    bad = [
        resealed(blob, H, "<I", 2),             # a second view that is not there
        resealed(blob, H, "<I", 10**9),         # more views than bytes
        resealed(blob, view, "<I", 8),          # the view then runs past d
        resealed(blob, view + 4, "<I", 1),      # a 1-row "matrix"
        resealed(blob, view + 8, "<I", 2**32 - 1),  # wider than the vector
        resealed(blob, raw, "<f", float("nan")),
        resealed(blob, raw, "<f", 1e30),        # beyond MAX_DECODED
        resealed(blob, fac, "<f", float("inf")),
        resealed(blob, fac, "<f", 3e38),        # r max|P| max|Q| beyond MAX_DECODED
        resealed(blob, 4, "<H", 16 * 8),        # another rank: another length
        blob[:-1], blob + b"\0", blob[: H + 2],
    ]
    for b in bad:
        with pytest.raises(fedhd.DecodeError):
            fedhd.decode(b)
    # two views that overlap
    two = fedhd.encode(gaussian(2 * 1200, 1), bits=4, method="powersgd",
                       context=PowerSGDContext([(40, 30), (40, 30)]))
    with pytest.raises(fedhd.DecodeError, match="disjoint"):
        fedhd.decode(resealed(two, H + 4 + 12, "<I", 1199))
    assert MAX_DECODED < 1e30


# --- error feedback in the mod -------------------------------------------------------------

SHAPES = {"w": (30, 20), "b": (20,)}
D = 620


def arrays_of(vec: np.ndarray) -> dict[str, np.ndarray]:
    return {"w": vec[:600].reshape(30, 20).copy(), "b": vec[600:].copy(),
            "steps": np.array(3, np.int64)}


def vec_of(arrays) -> np.ndarray:
    return np.concatenate([np.asarray(arrays["w"]).ravel(), np.asarray(arrays["b"]).ravel()])


def train_message(model_vec: np.ndarray, method: str, bits: float, seed: int = 5,
                  ef: bool | None = None) -> Message:
    cfg = {C.KEY_METHOD: method, C.KEY_BITS: float(bits), C.KEY_SEED: seed}
    if ef is not None:
        cfg[C.KEY_ERROR_FEEDBACK] = ef
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(v) for k, v in arrays_of(model_vec).items()}),
        "config": ConfigRecord(cfg)})
    LocalGrid(ClientApp(), 1)  # sets Flower's task identity, as a SuperNode would
    return transport(Message(content, 17, "train"))


def app_adding(update: np.ndarray):
    def fn(msg: Message, ctx: Context) -> Message:
        a = msg.content["arrays"]
        new = arrays_of(vec_of({k: a[k].numpy() for k in ("w", "b")}) + update)
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in new.items()}),
                                   "metrics": MetricRecord({"num-examples": 4})}),
                       reply_to=msg)
    return fn


def mod_round(ctx: Context, update: np.ndarray, method="topk", bits=1.0, ef=None,
              model_vec=None) -> bytes:
    model_vec = np.zeros(D, np.float32) if model_vec is None else model_vec
    reply = compression_mod(train_message(model_vec, method, bits, ef=ef), ctx,
                            app_adding(update))
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    return bytes(reply.content["arrays"][C.BLOB_KEY].data)


def residual_of(ctx: Context) -> np.ndarray:
    rec = ctx.state[C.STATE_RESIDUAL]
    assert list(rec.keys()) == ["w", "b"] and rec["w"].numpy().shape == (30, 20)
    return vec_of({k: rec[k].numpy() for k in ("w", "b")}).astype(np.float64)


@pytest.mark.parametrize("method,bits", [("topk", 1.0), ("scaled-sign", 1), ("powersgd", 2.0)])
def test_residual_is_what_compression_left_out(method, bits):
    """e_t = sum_{s < t} (u_s - decode(blob_s)) after every round, and over T rounds
    sum decode = sum u - e_T, to float32 rounding."""
    ctx = Context(1, 17, {}, RecordDict(), {})
    g = np.random.default_rng(11)
    total_u = np.zeros(D)
    total_dec = np.zeros(D)
    for _ in range(12):
        u = (0.1 * g.standard_normal(D)).astype(np.float32)
        blob = mod_round(ctx, u, method, bits)
        total_u += u
        total_dec += fedhd.decode(blob)
        e = residual_of(ctx)
        np.testing.assert_allclose(e, total_u - total_dec, rtol=0, atol=1e-5)
    assert float(np.linalg.norm(e)) > 0.01  # something was left out, and is carried


def test_error_feedback_follows_the_server_and_the_bias():
    g = np.random.default_rng(2)
    u = (0.1 * g.standard_normal(D)).astype(np.float32)
    plain = fedhd.encode(u, bits=1.0, method="topk", seed=5,
                         dither_seed=rng.client_dither_seed(5, 17))
    # biased method, key absent: on
    ctx = Context(1, 17, {}, RecordDict(), {})
    assert mod_round(ctx, u) == plain and C.STATE_RESIDUAL in ctx.state
    assert mod_round(ctx, u) == fedhd.encode(  # u + e_1, e_1 = u - decode(plain)
        u + (u - fedhd.decode(plain)), bits=1.0, method="topk", seed=5,
        dither_seed=rng.client_dither_seed(5, 17)) != plain
    # the server turns it off: plain blobs, and the stored residual is dropped
    assert mod_round(ctx, u, ef=False) == plain and C.STATE_RESIDUAL not in ctx.state
    assert mod_round(ctx, u, ef=False) == plain
    # unbiased method: off unless the server asks
    ctx = Context(1, 17, {}, RecordDict(), {})
    mod_round(ctx, u, "hd-dither", 2)
    assert C.STATE_RESIDUAL not in ctx.state
    mod_round(ctx, u, "hd-dither", 2, ef=True)
    assert C.STATE_RESIDUAL in ctx.state
    # a malformed switch is a failed precondition
    msg = train_message(np.zeros(D, np.float32), "topk", 1.0)
    msg.content["config"][C.KEY_ERROR_FEEDBACK] = "yes"
    reply = compression_mod(msg, ctx, app_adding(u))
    assert reply.has_error() and reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION


@pytest.mark.parametrize("stored", [
    None,                                                                        # restarted
    ArrayRecord({"w": Array(np.ones((30, 20), np.float32))}),                  # keys differ
    ArrayRecord({"w": Array(np.ones((20, 30), np.float32)),
                 "b": Array(np.ones(20, np.float32))}),                          # shape differs
    ArrayRecord({"b": Array(np.ones(20, np.float32)),
                 "w": Array(np.ones((30, 20), np.float32))}),                    # order differs
    ArrayRecord({"w": Array(np.ones((30, 20), np.float64)),
                 "b": Array(np.ones(20, np.float64))}),                          # dtype differs
    ArrayRecord({"w": Array(np.full((30, 20), np.nan, np.float32)),
                 "b": Array(np.ones(20, np.float32))}),                          # not finite
    ConfigRecord({"x": 1}),                                                      # not arrays
])
def test_residual_resets_when_absent_or_mismatched(stored):
    """A restarted node (no state) or a new model (other keys or shapes): start from 0."""
    u = (0.1 * np.random.default_rng(3).standard_normal(D)).astype(np.float32)
    fresh = Context(1, 17, {}, RecordDict(), {})
    expect = mod_round(fresh, u)
    ctx = Context(1, 17, {}, RecordDict(), {})
    if stored is not None:
        ctx.state[C.STATE_RESIDUAL] = stored
    assert mod_round(ctx, u) == expect
    np.testing.assert_allclose(residual_of(ctx), residual_of(fresh), rtol=0, atol=0)


def test_a_residual_that_cannot_be_sent_is_dropped():
    """u + e beyond what a blob may carry (or beyond float32): an error reply, and the
    residual is gone, so the next round starts from zero instead of failing again."""
    u = (0.1 * np.random.default_rng(3).standard_normal(D)).astype(np.float32)
    for big in (1e30, 3.4e38):
        ctx = Context(1, 17, {}, RecordDict(), {})
        ctx.state[C.STATE_RESIDUAL] = ArrayRecord({
            "w": Array(np.full((30, 20), big, np.float32)), "b": Array(np.ones(20, np.float32))})
        uu = u.copy()
        uu[0] = big  # with 3.4e38: u + e overflows, the residual is reset, u alone is too big
        reply = compression_mod(train_message(np.zeros(D, np.float32), "topk", 1.0), ctx,
                                app_adding(uu))
        assert reply.has_error() and reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
        assert C.STATE_RESIDUAL not in ctx.state
        assert mod_round(ctx, u) == mod_round(Context(1, 17, {}, RecordDict(), {}), u)


def test_powersgd_warm_start_lives_in_the_state():
    """The Q of every matrix array is kept under its key; with the same update each round
    (error feedback off, to see the warm start alone) the error falls."""
    g = np.random.default_rng(5)
    w = (g.standard_normal((30, 20)) * 0.7 ** np.arange(20)).astype(np.float32)
    u = np.concatenate([w.ravel(), np.full(20, 0.5, np.float32)])
    ctx = Context(1, 17, {}, RecordDict(), {})
    errs = []
    for _ in range(4):
        y = fedhd.decode(mod_round(ctx, u, "powersgd", 4.0, ef=False))
        np.testing.assert_array_equal(y[600:], 0.5)  # the bias vector, exactly
        errs.append(float(np.linalg.norm(y - u)))
        q = ctx.state[C.STATE_POWERSGD_Q]
        assert list(q.keys()) == ["w"] and q["w"].numpy().shape == (20, rank_for(4, 30, 20))
    assert errs[-1] < 0.9 * errs[0]
    ctx.state[C.STATE_POWERSGD_Q] = ArrayRecord({"w": Array(np.ones((7, 2), np.float32))})
    first = Context(1, 17, {}, RecordDict(), {})
    assert mod_round(ctx, u, "powersgd", 4.0, ef=False) == mod_round(first, u, "powersgd",
                                                                      4.0, ef=False)


# --- the server's switch -------------------------------------------------------------------


def test_settings_and_strategy_option():
    assert "error_feedback" in OPTIONS
    cfg = CompressedFedAvg(method="topk", bits=2, error_feedback=True).compressor.train_config(1)
    assert cfg[C.KEY_ERROR_FEEDBACK] is True
    for method, default in [("topk", True), ("scaled-sign", True), ("powersgd", True),
                            ("turboquant", True), ("fp16", True), ("hd-dither", False),
                            ("qsgd", False), ("eden", False)]:
        bits = get(method).default_bits
        assert RoundCompressor(method, bits).train_config(1)[C.KEY_ERROR_FEEDBACK] is default
        s = Settings.from_config(ConfigRecord({C.KEY_METHOD: method, C.KEY_BITS: float(bits),
                                               C.KEY_SEED: 1}))
        assert s.uses_error_feedback is default
    off = CompressedStrategy(CompressedFedAvg(), method="scaled-sign", error_feedback=False)
    assert off.compressor.train_config(2)[C.KEY_ERROR_FEEDBACK] is False
    round_trip = Settings.from_config(ConfigRecord(RoundCompressor(
        "hd-dither", 2, error_feedback=True).train_config(3)))
    assert round_trip.uses_error_feedback is True
    with pytest.raises(TypeError):
        CompressedFedAvg(method="topk", error_feedback="yes")
    with pytest.raises(PreconditionError):
        Settings.from_config(ConfigRecord({C.KEY_METHOD: "topk", C.KEY_BITS: 2.0,
                                           C.KEY_SEED: 1, C.KEY_ERROR_FEEDBACK: 1}))


# --- a Flower round on the in-process grid -------------------------------------------------

NODES = 4
GRADS = [(0.05 * np.random.default_rng(100 + i).standard_normal(D)
          * np.linspace(0.1, 2.0, D)).astype(np.float32) for i in range(NODES)]


def grid_app() -> ClientApp:
    """Every node adds its own fixed pseudo-gradient to the model it receives."""
    app = ClientApp(mods=[compression_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        a = msg.content["arrays"]
        step = GRADS[int(context.node_config["partition-id"])]
        new = arrays_of(vec_of({k: a[k].numpy() for k in ("w", "b")}) + step)
        new["steps"] = np.asarray(a["steps"].numpy() + 1)
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in new.items()}),
                                   "metrics": MetricRecord({"num-examples": 10})}),
                       reply_to=msg)

    return app


def run_grid(rounds: int, **kw):
    grid = LocalGrid(grid_app(), NODES, seed=1)
    init = arrays_of(np.zeros(D, np.float32))
    s = CompressedFedAvg("topk", 2.0, 3, fraction_train=1.0, fraction_evaluate=0.0,
                         min_available_nodes=NODES, min_train_nodes=NODES, **kw)
    result = s.start(grid, ArrayRecord({k: Array(v) for k, v in init.items()}),
                     num_rounds=rounds)
    out = vec_of({k: result.arrays[k].numpy() for k in ("w", "b")}).astype(np.float64)
    return out, grid


def test_flower_rounds_with_topk_and_error_feedback():
    """global_T = T mean(g) - mean(e_T) (every node every round, equal weights): nothing the
    top-k dropped is lost (the residual stays bounded); without error feedback the error
    grows with every round (top-k at 2 bits keeps 23 of the 620 coordinates a round)."""
    T = 40
    target = T * np.mean(GRADS, axis=0).astype(np.float64)
    model, grid = run_grid(T, error_feedback=True)
    residuals = [residual_of(grid.contexts[n]) for n in grid.node_ids]
    np.testing.assert_allclose(model, target - np.mean(residuals, axis=0), rtol=0, atol=2e-5)
    assert np.linalg.norm(np.mean(residuals, axis=0)) > 0.01
    plain, grid_off = run_grid(T, error_feedback=False)
    assert all(C.STATE_RESIDUAL not in grid_off.contexts[n].state for n in grid_off.node_ids)
    err_ef = np.linalg.norm(model - target)
    err_plain = np.linalg.norm(plain - target)
    assert err_ef < 0.4 * err_plain, (err_ef, err_plain)
