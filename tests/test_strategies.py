"""Unit tests of the Flower integration on constructed Messages (no Ray, no network)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import numpy as np
import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx

import fedhd
from benchmarks.localgrid import LocalGrid, transport
from fedhd.rng import client_dither_seed as dither_seed
from fedhd.wire import HEADER_BYTES, seal
from strategies import CompressedFedAvg, CompressedStrategy, compression_mod, message_wire_bytes
from strategies import constants as C
from strategies.transport import message_wire_bytes_reference

SHAPES = {"w": (300, 200), "b": (200,), "count": (), "mask": (10,)}
FLOAT_KEYS = ["w", "b"]
D = 300 * 200 + 200


def model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "w": rng.standard_normal((300, 200)).astype(np.float32),
        "b": rng.standard_normal(200).astype(np.float32),
        "count": np.array(7, np.int64),
        "mask": rng.random(10) < 0.5,
    }


def record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})


def numpy_of(rec: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in rec.items()}


Trainer = Callable[[int, dict[str, np.ndarray]], tuple[dict[str, np.ndarray], int]]


def app_fn(trainer: Trainer, index: dict[int, int]):
    """A ClientApp train function: arrays = trainer(client index, received arrays)."""

    def fn(msg: Message, context: Context) -> Message:
        received = numpy_of(msg.content["arrays"])
        new, n = trainer(index[msg.metadata.dst_node_id], received)
        content = RecordDict({
            "arrays": record(new),
            "metrics": MetricRecord({"train_loss": 0.5 + index[msg.metadata.dst_node_id],
                                     "num-examples": n}),
        })
        return Message(content, reply_to=msg)

    return fn


def run_round(strategy, global_arrays, trainer: Trainer, num_nodes: int = 4, *,
              compress: bool | list[bool] = True, tamper=None, server_round: int = 1):
    """configure_train -> transport -> (mod ->) app -> transport -> aggregate_train."""
    grid = LocalGrid(ClientApp(), num_nodes)
    index = {nid: i for i, nid in enumerate(grid.node_ids)}
    flags = compress if isinstance(compress, list) else [compress] * num_nodes
    messages = list(strategy.configure_train(server_round, record(global_arrays),
                                             ConfigRecord({"lr": 0.1}), grid))
    fn = app_fn(trainer, index)
    replies = []
    for msg in messages:
        received = transport(msg)
        i = index[received.metadata.dst_node_id]
        ctx = Context(1, received.metadata.dst_node_id, {}, RecordDict(), {})
        reply = compression_mod(received, ctx, fn) if flags[i] else fn(received, ctx)
        if tamper is not None:
            reply = tamper(i, reply)
        replies.append(transport(reply))
    replies.sort(key=lambda m: index[m.metadata.src_node_id])
    arrays, metrics = strategy.aggregate_train(server_round, replies)
    return arrays, metrics, replies, grid


def updates(num: int, seed: int = 1, scale: float = 0.01) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"w": (scale * rng.standard_normal((300, 200))).astype(np.float32),
             "b": (scale * rng.standard_normal(200)).astype(np.float32)} for _ in range(num)]


def trainer_from(ups, weights=None, counts=None) -> Trainer:
    def trainer(i, received):
        new = {k: v.copy() for k, v in received.items()}
        for k, u in ups[i].items():
            new[k] = (received[k] + u).astype(received[k].dtype)
        if counts is not None:
            new["count"] = np.array(counts[i], np.int64)
        return new, (weights[i] if weights is not None else 10)
    return trainer


def fedavg_reference(global_arrays, trainer, num_nodes=4, **kw):
    arrays, metrics, _, _ = run_round(FedAvg(), global_arrays, trainer, num_nodes,
                                      compress=False, **kw)
    return numpy_of(arrays), metrics


# --- the mod -------------------------------------------------------------------------------

def _instruction(content: RecordDict, message_type: str = MessageType.TRAIN) -> Message:
    grid = LocalGrid(ClientApp(), 1)
    return transport(Message(content, grid.node_ids[0], message_type))


def _echo_plus(delta: float = 0.5):
    def fn(msg: Message, ctx: Context) -> Message:
        arrays = numpy_of(msg.content["arrays"])
        arrays = {k: (v + delta).astype(v.dtype) if v.dtype.kind == "f" else v
                  for k, v in arrays.items()}
        return Message(RecordDict({"arrays": record(arrays), "metrics": MetricRecord(
            {"num-examples": 3, "acc": 0.25})}), reply_to=msg)
    return fn


def _train_content(arrays, seed=123, method="hd-dither", bits=2.0) -> RecordDict:
    return RecordDict({"arrays": record(arrays), "config": ConfigRecord({
        C.KEY_METHOD: method, C.KEY_BITS: bits, C.KEY_SEED: seed, "server-round": 1})})


def test_mod_passes_evaluate_and_unconfigured_train_through():
    arrays = model(np.random.default_rng(0))
    seen = []

    def fn(msg, ctx):
        seen.append(msg)
        return _echo_plus()(msg, ctx)

    ctx = Context(1, 5, {}, RecordDict(), {})
    ev = _instruction(_train_content(arrays), MessageType.EVALUATE)
    out = compression_mod(ev, ctx, fn)
    assert seen[-1] is ev and set(out.content["arrays"].keys()) == set(SHAPES)
    plain = _instruction(RecordDict({"arrays": record(arrays), "config": ConfigRecord()}))
    out = compression_mod(plain, ctx, fn)
    assert C.REPLY_RECORD not in out.content
    np.testing.assert_array_equal(out.content["arrays"]["w"].numpy(), arrays["w"] + 0.5)


def test_mod_compresses_one_blob_and_keeps_the_rest():
    arrays = model(np.random.default_rng(0))
    msg = _instruction(_train_content(arrays, seed=987654321987654321))
    reply = compression_mod(msg, Context(1, 5, {}, RecordDict(), {}), _echo_plus())
    assert not reply.has_error()
    assert list(reply.content.keys()) == ["arrays", "metrics", C.REPLY_RECORD]
    out = reply.content["arrays"]
    assert set(out.keys()) == {C.BLOB_KEY, "count", "mask"}
    np.testing.assert_array_equal(out["count"].numpy(), arrays["count"])
    np.testing.assert_array_equal(out["mask"].numpy(), arrays["mask"])
    assert dict(reply.content["metrics"]) == {"num-examples": 3, "acc": 0.25}
    assert reply.content[C.REPLY_RECORD][C.KEY_FLOAT_KEYS] == FLOAT_KEYS
    blob = out[C.BLOB_KEY]
    assert blob.stype == C.BLOB_STYPE and blob.shape == (len(blob.data),)
    h = fedhd.header(blob.data)
    assert (h.d, h.bits, h.seed) == (D, 2, 987654321987654321)
    assert h.dither_seed == dither_seed(987654321987654321, msg.metadata.dst_node_id)
    decoded = fedhd.decode(blob.data)
    assert abs(decoded.mean() - 0.5) < 0.02  # the update, not the model
    assert len(blob.data) < 0.3 * D  # ~2 bits per coordinate


def test_dither_seed_follows_the_partition_id_when_there_is_one():
    """Simulations redraw node ids every run; partition ids stay, and so must the dither."""
    arrays = model(np.random.default_rng(0))
    seeds = {}
    for node_id, pid in [(5, 0), (6, 0), (5, 1)]:
        msg = _instruction(_train_content(arrays, seed=42))
        ctx = Context(1, node_id, {"partition-id": pid, "num-partitions": 2}, RecordDict(),
                      {})
        reply = compression_mod(msg, ctx, _echo_plus())
        seeds[node_id, pid] = fedhd.header(reply.content["arrays"][C.BLOB_KEY].data).dither_seed
    assert seeds[5, 0] == seeds[6, 0] == dither_seed(42, 5, 0)
    assert seeds[5, 1] == dither_seed(42, 6, 1) != seeds[5, 0]
    assert dither_seed(42, 0) != dither_seed(42, 0, 0)  # the two kinds never coincide


@pytest.mark.parametrize("case", ["two-arrayrecords", "keys", "shape", "nan", "method", "bits",
                                  "seed", "stype"])
def test_mod_failed_precondition_is_an_error_reply(case):
    arrays = model(np.random.default_rng(0))
    content = _train_content(arrays)
    if case == "method":
        content["config"][C.KEY_METHOD] = "no-such-method"
    if case == "bits":
        content["config"][C.KEY_BITS] = 99.0
    if case == "seed":
        content["config"][C.KEY_SEED] = "7"
    msg = _instruction(content)

    def fn(m, ctx):
        reply = _echo_plus()(m, ctx)
        arr = reply.content["arrays"]
        if case == "two-arrayrecords":
            reply.content["more"] = ArrayRecord({"x": Array(np.zeros(2))})
        elif case == "keys":
            del arr["b"]
        elif case == "shape":
            arr["b"] = Array(np.zeros(201, np.float32))
        elif case == "nan":
            arr["b"] = Array(np.full(200, np.nan, np.float32))
        elif case == "stype":
            arr["b"] = Array("float32", (200,), "custom", b"\0" * 800)
        return reply

    reply = compression_mod(msg, Context(1, 5, {}, RecordDict(), {}), fn)
    assert reply.has_error()
    assert reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert "compression_mod" in reply.error.reason
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id


def test_mod_returns_app_errors_unchanged():
    from flwr.app import Error

    msg = _instruction(_train_content(model(np.random.default_rng(0))))
    err = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason="boom"), reply_to=msg)
    assert compression_mod(msg, Context(1, 5, {}, RecordDict(), {}), lambda m, c: err) is err


# --- CompressedFedAvg ----------------------------------------------------------------------

def test_configure_train_sends_method_bits_and_round_seed():
    s = CompressedFedAvg(method="hd-dither", bits=2, seed=42, fraction_evaluate=0.5)
    assert isinstance(s, FedAvg) and s.fraction_evaluate == 0.5
    user_config = ConfigRecord({"lr": 0.1})
    grid = LocalGrid(ClientApp(), 3)
    msgs = list(s.configure_train(7, record(model(np.random.default_rng(0))), user_config, grid))
    assert len(msgs) == 3
    cfg = msgs[0].content["config"]
    assert cfg[C.KEY_METHOD] == "hd-dither" and cfg[C.KEY_BITS] == 2.0
    assert cfg[C.KEY_SEED] == fedhd.derive_seed(42, 7) and cfg["lr"] == 0.1
    assert C.KEY_METHOD not in user_config  # the caller's config is left alone


def test_constructor_validates():
    with pytest.raises(ValueError):
        CompressedFedAvg(method="nope")
    with pytest.raises(ValueError):
        CompressedFedAvg(method="hd-dither", bits=0)
    with pytest.raises(ValueError):
        CompressedFedAvg(seed=-1)
    assert CompressedFedAvg().method == C.DEFAULT_METHOD


def test_identity_round_equals_fedavg():
    g = model(np.random.default_rng(0))
    ups = updates(4)
    trainer = trainer_from(ups, weights=[10, 20, 30, 45])
    ref, ref_metrics = fedavg_reference(g, trainer)
    arrays, metrics, _, _ = run_round(CompressedFedAvg(method="identity"), g, trainer)
    out = numpy_of(arrays)
    for k in FLOAT_KEYS:
        np.testing.assert_allclose(out[k], ref[k], rtol=0, atol=1e-6)
        assert out[k].dtype == np.float32
    assert metrics["train_loss"] == pytest.approx(ref_metrics["train_loss"])
    assert metrics[C.METRIC_ACCEPTED] == 4 and metrics[C.METRIC_COMPRESSED] == 4
    assert metrics[C.METRIC_DROPPED] == 0


def test_hd_dither_mean_is_close_to_the_true_mean():
    g = model(np.random.default_rng(0))
    n = 8
    ups = updates(n, seed=3)
    weights = [5, 10, 15, 20, 25, 30, 35, 40]
    arrays, metrics, _, _ = run_round(CompressedFedAvg(method="hd-dither", bits=2, seed=9), g,
                                      trainer_from(ups, weights), n)
    out = numpy_of(arrays)
    w = np.asarray(weights, float) / sum(weights)
    est = np.concatenate([(out[k].astype(np.float64) - g[k]).ravel() for k in FLOAT_KEYS])
    vecs = [np.concatenate([u[k].ravel() for k in FLOAT_KEYS]).astype(np.float64) for u in ups]
    true = sum(wk * v for wk, v in zip(w, vecs, strict=True))
    err = float(np.sum((est - true) ** 2))
    # independent unbiased client errors: E err = sum_k w_k^2 vNMSE ||u_k||^2, vNMSE ~ 0.17 at
    # 2 bits; the sum over 60k coordinates concentrates, so 0.2 is a tight ceiling
    bound = 0.2 * sum(wk**2 * float(v @ v) for wk, v in zip(w, vecs, strict=True))
    assert 0.25 * bound < err < bound
    assert 1.9 < metrics[C.METRIC_BLOB_BITS_PER_COORD] < 2.2


def _corrupt(kind: str, reply: Message, round_seed: int) -> Message:
    arr = reply.content["arrays"]
    blob = bytearray(arr[C.BLOB_KEY].data)
    if kind == "garbage":
        blob = bytearray(np.random.default_rng(0).integers(0, 256, len(blob), np.uint8).tobytes())
    elif kind == "truncated":
        blob = blob[: len(blob) // 2]
    elif kind == "flipped":
        blob[-5] ^= 0xFF
    elif kind in ("wrong-seed", "wrong-length"):
        # re-encode validly (correct CRC) with the wrong seed or length
        x = np.ones(D if kind == "wrong-seed" else D - 1, np.float32)
        seed = round_seed + 1 if kind == "wrong-seed" else round_seed
        blob = bytearray(fedhd.encode(x, bits=2, seed=seed))
    elif kind in ("nan-scale", "nan-payload"):
        # a NaN first scale (hd-dither) or value (identity) with a recomputed CRC
        struct.pack_into("<f", blob, HEADER_BYTES, float("nan"))
        blob = bytearray(seal(blob))
    elif kind == "wrong-bits":
        blob = bytearray(fedhd.encode(np.ones(D, np.float32), bits=3, seed=round_seed))
    elif kind == "no-weight":
        reply.content["metrics"] = MetricRecord({"train_loss": 1.0})
        return reply
    elif kind == "nan-weight":
        reply.content["metrics"] = MetricRecord({"num-examples": float("nan")})
        return reply
    elif kind == "wrong-keys":
        reply.content[C.REPLY_RECORD][C.KEY_FLOAT_KEYS] = ["b", "w"]
        return reply
    arr[C.BLOB_KEY] = Array("uint8", (len(blob),), C.BLOB_STYPE, bytes(blob))
    return reply


def test_gpu_aggregation_equals_host_aggregation(monkeypatch):
    """``device="cuda"``: the decode-after-sum runs on the GPU (numba's simulator without
    one) and gives the host's aggregate."""
    import warnings

    from fedhd.backend import cuda as gpu
    from fedhd.kernels.cuda import MAX_LOG2_CHUNK

    calls = []
    lookup = gpu.lookup_rotated
    monkeypatch.setattr(gpu, "lookup_rotated", lambda *a: calls.append(1) or lookup(*a))

    g = {"w": np.zeros((20, 30), np.float32), "b": np.ones(30, np.float32)}
    rng = np.random.default_rng(4)
    ups = [{k: (0.01 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in g.items()}
           for _ in range(3)]
    trainer = trainer_from(ups, weights=[10, 20, 30])
    lc = min(9, MAX_LOG2_CHUNK)
    with warnings.catch_warnings():  # the simulator's uint64 arithmetic warns on wrap
        warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
        on_gpu, _, _, _ = run_round(CompressedFedAvg("hd-dither", 2, 3, log2_chunk=lc,
                                                     device="cuda"), g, trainer, 3)
    on_host, _, _, _ = run_round(CompressedFedAvg("hd-dither", 2, 3, log2_chunk=lc), g,
                                 trainer, 3)
    assert len(calls) == 3  # every client's blob was summed on the device
    for k in g:
        np.testing.assert_allclose(on_gpu[k].numpy(), on_host[k].numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "flipped", "wrong-seed",
                                  "wrong-length", "nan-scale", "nan-payload", "wrong-bits",
                                  "no-weight",
                                  "nan-weight", "wrong-keys"])
def test_bad_reply_is_dropped_and_counted(kind):
    g = model(np.random.default_rng(0))
    ups = updates(4)
    weights = [10, 20, 30, 40]
    # identity makes the expected result exact; hd-dither where its own fields are attacked
    hd = kind in ("nan-scale", "wrong-bits")
    s = CompressedFedAvg(method="hd-dither" if hd else "identity", seed=5)
    round_seed = fedhd.derive_seed(5, 1)

    def tamper(i, reply):
        return _corrupt(kind, reply, round_seed) if i == 1 else reply

    arrays, metrics, _, _ = run_round(s, g, trainer_from(ups, weights), tamper=tamper)
    assert metrics[C.METRIC_DROPPED] == 1 and metrics[C.METRIC_ACCEPTED] == 3
    # the result is the weighted mean of the three good replies
    good = [0, 2, 3]
    w = np.asarray([weights[i] for i in good], float)
    for k in FLOAT_KEYS:
        total = sum(wi * ups[i][k].astype(np.float64) for wi, i in zip(w, good, strict=True))
        want = g[k] + total / w.sum()
        # hd-dither: within a few noise std (~0.4 * 0.01 / sqrt(3) per coordinate)
        np.testing.assert_allclose(numpy_of(arrays)[k], want, atol=0.02 if hd else 1e-6)


def test_all_replies_bad_gives_no_arrays_but_metrics():
    g = model(np.random.default_rng(0))
    arrays, metrics, _, _ = run_round(
        CompressedFedAvg(), g, trainer_from(updates(3)), 3,
        tamper=lambda i, r: _corrupt("garbage", r, 0))
    assert arrays is None
    assert metrics[C.METRIC_DROPPED] == 3 and metrics[C.METRIC_ACCEPTED] == 0


def test_error_replies_are_counted():
    g = model(np.random.default_rng(0))
    ups = updates(4)
    ups[2]["b"][:] = np.nan  # the mod refuses to encode NaN: a Flower error reply
    arrays, metrics, replies, _ = run_round(CompressedFedAvg(), g, trainer_from(ups))
    assert replies[2].has_error()
    assert metrics[C.METRIC_ERROR_REPLIES] == 1 and metrics[C.METRIC_ACCEPTED] == 3
    assert arrays is not None


def test_uncompressed_replies_in_a_compressed_round():
    g = model(np.random.default_rng(0))
    ups = updates(4)
    trainer = trainer_from(ups, weights=[10, 20, 30, 40])
    ref, _ = fedavg_reference(g, trainer)
    arrays, metrics, _, _ = run_round(CompressedFedAvg(method="identity"), g, trainer,
                                      compress=[True, False, True, False])
    for k in FLOAT_KEYS:
        np.testing.assert_allclose(numpy_of(arrays)[k], ref[k], atol=1e-6)
    assert metrics[C.METRIC_COMPRESSED] == 2 and metrics[C.METRIC_ACCEPTED] == 4


def test_non_float_arrays_travel_exactly():
    g = model(np.random.default_rng(0))
    arrays, _, replies, _ = run_round(
        CompressedFedAvg(), g, trainer_from(updates(4), counts=[9, 9, 9, 9]))
    for r in replies:
        assert r.content["arrays"]["count"].numpy() == 9
        np.testing.assert_array_equal(r.content["arrays"]["mask"].numpy(), g["mask"])
    out = numpy_of(arrays)
    assert out["count"].dtype == np.int64 and out["count"] == 9
    assert out["mask"].dtype == bool
    np.testing.assert_array_equal(out["mask"], g["mask"])


# --- wire accounting ------------------------------------------------------------------------

def test_wire_bytes_match_the_push_requests():
    g = model(np.random.default_rng(0))
    _, metrics, replies, _ = run_round(CompressedFedAvg(), g, trainer_from(updates(2)), 2)
    sizes = [message_wire_bytes(r) for r in replies]
    assert sizes == [message_wire_bytes_reference(r) for r in replies]
    assert metrics[C.METRIC_UPLINK_BYTES] == pytest.approx(np.mean(sizes), abs=64)
    assert metrics[C.METRIC_UPLINK_BYTES_TOTAL] == pytest.approx(sum(sizes), abs=128)


def test_wire_ratio_on_an_85k_model_at_2_bits():
    torch = pytest.importorskip("torch")
    from benchmarks.digits_task import Net

    torch.manual_seed(0)
    net = Net()
    g = {k: v.numpy() for k, v in net.state_dict().items()}
    n_float = sum(v.size for v in g.values() if v.dtype.kind == "f")
    assert 80_000 < n_float < 90_000

    def trainer(i, received):
        rng = np.random.default_rng(i)
        return {k: (v + 0.01 * rng.standard_normal(v.shape)).astype(v.dtype)
                if v.dtype.kind == "f" else v for k, v in received.items()}, 100

    ratios = {}
    for bits in (2, 4):
        _, metrics, _, _ = run_round(CompressedFedAvg(bits=bits), g, trainer, 2)
        _, _, plain_replies, _ = run_round(FedAvg(), g, trainer, 2, compress=False)
        plain = np.mean([message_wire_bytes(r) for r in plain_replies])
        assert metrics[C.METRIC_UPLINK_BYTES_UNCOMPRESSED] == pytest.approx(plain, abs=16)
        ratios[bits] = plain / metrics[C.METRIC_UPLINK_BYTES]
        assert metrics[C.METRIC_COMPRESSION_RATIO] == pytest.approx(ratios[bits], rel=1e-3)
    assert ratios[2] >= 14, ratios
    assert ratios[4] >= 7, ratios


# --- the wrapper ----------------------------------------------------------------------------

@pytest.mark.parametrize("inner", [
    lambda: FedAdam(eta=0.05, eta_l=0.05),
    lambda: FedAvgM(server_learning_rate=0.5, server_momentum=0.9),
    lambda: FedProx(proximal_mu=0.1),
])
def test_wrapper_identity_equals_inner_strategy(inner):
    g = model(np.random.default_rng(0))
    ref_strategy, wrapped = inner(), CompressedStrategy(inner(), method="identity")
    for rnd in (1, 2):  # two rounds: server-side optimizer state carries over
        ups = updates(4, seed=rnd)
        trainer = trainer_from(ups, weights=[10, 20, 30, 40])
        ref, ref_metrics, _, _ = run_round(ref_strategy, g, trainer, compress=False,
                                           server_round=rnd)
        out, metrics, _, _ = run_round(wrapped, g, trainer, server_round=rnd)
        for k in FLOAT_KEYS:
            np.testing.assert_allclose(numpy_of(out)[k], numpy_of(ref)[k], atol=1e-6)
        assert metrics["train_loss"] == pytest.approx(ref_metrics["train_loss"])
        assert metrics[C.METRIC_ACCEPTED] == 4
        g = {**g, **{k: numpy_of(ref)[k] for k in FLOAT_KEYS}}


def test_wrapper_keeps_inner_config_and_compresses():
    g = model(np.random.default_rng(0))
    s = CompressedStrategy(FedProx(proximal_mu=0.1), method="hd-dither", bits=2, seed=1)
    grid = LocalGrid(ClientApp(), 2)
    msgs = list(s.configure_train(1, record(g), ConfigRecord(), grid))
    cfg = msgs[0].content["config"]
    assert cfg["proximal-mu"] == 0.1 and cfg[C.KEY_SEED] == fedhd.derive_seed(1, 1)
    arrays, metrics, _, _ = run_round(
        CompressedStrategy(FedAdam(), bits=2), g, trainer_from(updates(4)))
    assert arrays is not None and metrics[C.METRIC_COMPRESSION_RATIO] > 10


# --- exact arrays (BatchNorm statistics) -----------------------------------------------------

def test_exact_patterns_travel_uncompressed_and_average_like_fedavg():
    g = model(np.random.default_rng(0))
    ups = updates(4)
    trainer = trainer_from(ups, weights=[10, 20, 30, 40])
    ref, _ = fedavg_reference(g, trainer)
    s = CompressedFedAvg(bits=2, exact=["b"])
    arrays, _, replies, _ = run_round(s, g, trainer)
    for r in replies:
        assert set(r.content["arrays"].keys()) == {C.BLOB_KEY, "b", "count", "mask"}
        assert r.content[C.REPLY_RECORD][C.KEY_FLOAT_KEYS] == ["w"]
        assert fedhd.header(r.content["arrays"][C.BLOB_KEY].data).d == 300 * 200
    np.testing.assert_allclose(numpy_of(arrays)["b"], ref["b"], atol=1e-6)
    assert np.abs(numpy_of(arrays)["w"] - ref["w"]).max() < 0.02


def test_batchnorm_model_with_exact_running_stats():
    pytest.importorskip("torch")
    from benchmarks.digits_task import centralized_evaluate, init_arrays, make_client_app

    def run(strategy):
        grid = LocalGrid(make_client_app(compress=True), 2)
        return strategy.start(grid, init_arrays(batchnorm=True), num_rounds=1,
                              evaluate_fn=centralized_evaluate)

    ref = run(FedAvg(fraction_evaluate=0.0))
    res = run(CompressedFedAvg(bits=2, exact=C.BATCHNORM_STATS, fraction_evaluate=0.0))
    out, want = res.arrays, ref.arrays
    for key in ("bn1.running_mean", "bn1.running_var"):
        np.testing.assert_allclose(out[key].numpy(), want[key].numpy(), atol=1e-6)
    assert out["bn1.num_batches_tracked"].numpy() == want["bn1.num_batches_tracked"].numpy()
    assert np.isfinite(res.evaluate_metrics_serverapp[1]["loss"])
