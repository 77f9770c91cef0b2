"""The compressed downlink: every node that trains holds the server's public model P bit for
bit; nodes that missed rounds catch up by deltas or a keyframe, whichever is smaller; a
node that lost its state says so and gets a keyframe; updates are measured against P."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from benchmarks.localgrid import LocalGrid
from strategies import CompressedFedAvg, compression_mod, message_wire_bytes
from strategies import constants as C
from strategies.downlink import (
    OutOfSync,
    PublicModel,
    from_bfloat16_bits,
    model_hash,
    receive,
    to_bfloat16_bits,
)

D_W, D_B = (40, 50), (50,)


def initial() -> ArrayRecord:
    rng = np.random.default_rng(0)
    return ArrayRecord({"w": Array(rng.standard_normal(D_W).astype(np.float32)),
                        "b": Array(np.zeros(D_B, np.float32)),
                        "steps": Array(np.array(0, np.int64))})


def vector(record: ArrayRecord) -> np.ndarray:
    return np.concatenate([record["w"].numpy().ravel(), record["b"].numpy().ravel()])


def float_vector(record: ArrayRecord) -> np.ndarray:
    """Every float array of the record, in its order, as one float32 vector (what P is)."""
    return np.concatenate([a.numpy().ravel() for a in record.values()
                           if a.numpy().dtype.kind == "f"]).astype(np.float32)


def make_app(seen: list[tuple[int, int, str]]) -> ClientApp:
    """A numpy 'trainer': new = received + a fixed pseudo-gradient step; it records the hash
    of the float model it was given (what the app sees, after the mod)."""
    app = ClientApp(mods=[compression_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content["arrays"]
        rnd = int(msg.content["config"]["server-round"])
        seen.append((msg.metadata.dst_node_id, rnd, model_hash(float_vector(arrays))))
        rng = np.random.default_rng(1000 * rnd + int(context.node_config["partition-id"]))
        new = ArrayRecord({
            "w": Array((arrays["w"].numpy() + 0.01 * rng.standard_normal(D_W))
                       .astype(np.float32)),
            "b": Array((arrays["b"].numpy() + 0.01).astype(np.float32)),
            "steps": Array(np.asarray(arrays["steps"].numpy() + 1)),
        })
        return Message(RecordDict({"arrays": new, "metrics": MetricRecord(
            {"num-examples": 10})}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        seen.append((msg.metadata.dst_node_id, -1,
                     model_hash(float_vector(msg.content["arrays"]))))
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 10,
                                                            "loss": 1.0})}), reply_to=msg)

    return app


class Recording(CompressedFedAvg):
    """Records the server's P hash each time it addresses messages."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.hashes: dict[int, str] = {}
        self.metrics: list[MetricRecord] = []

    def configure_train(self, server_round, arrays, config, grid):
        out = list(super().configure_train(server_round, arrays, config, grid))
        self.hashes[server_round] = self.compressor.downlink.hash
        return out

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        self.metrics.append(metrics)
        return arrays, metrics


def run(num_rounds=12, nodes=10, fraction=0.3, wipe=None, **kw):
    seen: list[tuple[int, int, str]] = []
    grid = LocalGrid(make_app(seen), nodes, seed=3)
    s = Recording("hd-dither", 2, 1, fraction_train=fraction, fraction_evaluate=0.0,
                  min_available_nodes=1, min_train_nodes=1, downlink="hd-dither",
                  downlink_bits=2, **kw)
    if wipe is not None:  # wipe one node's state after round ``wipe[1]``
        node = grid.node_ids[wipe[0]]
        inner = s.aggregate_train

        def aggregate_and_wipe(server_round, replies):
            out = inner(server_round, replies)
            if server_round == wipe[1]:
                grid.contexts[node].state = RecordDict()
            return out
        s.aggregate_train = aggregate_and_wipe  # type: ignore[method-assign]
    result = s.start(grid, initial(), num_rounds=num_rounds)
    return s, seen, result, grid


def test_every_node_trains_on_the_servers_public_model_bit_for_bit():
    s, seen, _, _ = run()
    trained = [(n, r, h) for n, r, h in seen if r > 0]
    assert len(trained) == 12 * 3
    for _, rnd, h in trained:
        assert h == s.hashes[rnd]
    m = s.metrics
    assert all(x[C.METRIC_ERROR_REPLIES] == 0 for x in m)
    assert sum(x[C.METRIC_DOWN_KEYFRAMES] for x in m) <= 10  # one per node at most
    assert sum(x[C.METRIC_DOWN_DELTA_MESSAGES] for x in m) >= 12 * 3 - 10
    assert m[-1][C.METRIC_DOWN_CATCHUP_BYTES] >= 0


def test_a_node_with_wiped_state_says_so_then_gets_a_keyframe():
    s, seen, _, grid = run(num_rounds=10, nodes=3, fraction=1.0, wipe=(1, 3))
    m = s.metrics
    assert [x[C.METRIC_ERROR_REPLIES] for x in m] == [0, 0, 0, 1] + [0] * 6
    assert m[0][C.METRIC_DOWN_KEYFRAMES] == 3 and m[4][C.METRIC_DOWN_KEYFRAMES] == 1
    assert all(x[C.METRIC_DOWN_KEYFRAMES] == 0 for x in m[1:4] + m[5:])
    node = grid.node_ids[1]
    rounds = sorted(r for n, r, _ in seen if n == node)
    assert rounds == [1, 2, 3, 5, 6, 7, 8, 9, 10]  # round 4 refused, training goes on
    for _, r, h in seen:
        assert h == s.hashes[r]


def test_the_uplink_update_is_measured_against_the_public_model():
    """With an exact uplink (identity), the updates are measured against the P the nodes
    hold and move the server's own model G: G_2 = G_1 + mean(update), exactly, so what the
    downlink's compression left out of P_1 is not lost (EF21-P)."""
    seen: list = []
    grid = LocalGrid(make_app(seen), 2, seed=1)
    s = CompressedFedAvg("identity", None, 1, fraction_evaluate=0.0, downlink="hd-dither",
                         downlink_bits=1)
    res = s.start(grid, initial(), num_rounds=2)
    g1 = s.compressor.downlink._global  # G_1, the model P_1 (round 2's messages) follows
    assert not np.array_equal(g1, s.compressor.downlink.vector)  # P_1 != G_1: lossy
    rng = [np.random.default_rng(2000 + i) for i in range(2)]
    steps = [np.concatenate([0.01 * r.standard_normal(D_W).ravel(), np.full(50, 0.01)])
             for r in rng]
    expect = (g1.astype(np.float64) + np.mean(steps, axis=0)).astype(np.float32)
    np.testing.assert_allclose(vector(res.arrays), expect, rtol=0, atol=1e-6)  # float32 ulps
    assert res.arrays["steps"].numpy() == 2


def _model(version_arrays, d=4000):
    return ArrayRecord({"x": Array(version_arrays.astype(np.float32))})


@pytest.mark.parametrize("bits,expect_keyframe", [(2, False), (8, True)])
def test_a_node_skipping_ten_rounds_gets_the_smaller_of_deltas_and_keyframe(bits,
                                                                            expect_keyframe):
    rng = np.random.default_rng(5)
    pm = PublicModel("hd-dither", bits, 9, None, max_deltas=16)
    g = rng.standard_normal(4000).astype(np.float32)
    pm.advance(_model(g))
    node_state = RecordDict()
    msg = Message(RecordDict({"arrays": _model(g), "config": ConfigRecord()}), 7, "train")
    (first,), sent = pm.address([msg], _model(g), "arrays", "config")
    receive(first.content["arrays"], first.content["config"], node_state)
    meta = node_state[C.STATE_PUBLIC_META]
    ack = ConfigRecord({C.KEY_DOWN_VERSION: meta["version"], C.KEY_DOWN_HASH: meta["hash"]})
    pm.acknowledge([Message(RecordDict({C.DOWN_ACK_RECORD: ack}), reply_to=first)], sent)
    assert pm.acked == {7: 0}
    for _ in range(10):
        g = g + 0.1 * rng.standard_normal(4000).astype(np.float32)
        pm.advance(_model(g))
    msg = Message(RecordDict({"arrays": _model(g), "config": ConfigRecord()}), 7, "train")
    (out,), stats = pm.address([msg], _model(g), "arrays", "config")
    blobs = [k for k in out.content["arrays"] if k.startswith(C.DOWN_BLOB_PREFIX)]
    delta_bytes = sum(len(b) for _, b in pm.deltas)
    assert (delta_bytes >= 4 * 4000) == expect_keyframe
    assert stats.keyframes == int(expect_keyframe) and len(blobs) == (0 if expect_keyframe
                                                                     else 10)
    full = receive(out.content["arrays"], out.content["config"], node_state)
    np.testing.assert_array_equal(full["x"].numpy(), pm.vector)
    if not expect_keyframe:
        assert stats.catchup_bytes == delta_bytes - len(pm.deltas[-1][1])
        # error feedback: P tracks G to within one delta's error, not ten
        assert np.linalg.norm(pm.vector - g) < 0.5 * np.linalg.norm(0.1 * np.ones(4000))


def test_deltas_older_than_max_deltas_become_keyframes():
    pm = PublicModel("hd-dither", 2, 9, None, max_deltas=3)
    g = np.ones(4000, np.float32)
    pm.advance(_model(g))
    pm.acked[7] = 0
    for k in range(5):
        pm.advance(_model(g + k + 1))
    assert len(pm.deltas) == 3 and pm._catch_up(0, 16000) is None
    assert [v for v, _ in pm._catch_up(2, 16000)] == [3, 4, 5]


def test_a_stale_or_corrupted_copy_is_refused_and_dropped():
    pm = PublicModel("hd-dither", 2, 9, None)
    g = np.ones(4000, np.float32)
    pm.advance(_model(g))
    state = RecordDict()
    cfg = ConfigRecord
    (m0,), _ = pm.address([Message(RecordDict({"arrays": _model(g), "config": cfg()}), 1,
                                   "train")], _model(g), "arrays", "config")
    receive(m0.content["arrays"], m0.content["config"], state)
    pm.acked[1] = 0
    pm.advance(_model(g * 2))
    (m1,), _ = pm.address([Message(RecordDict({"arrays": _model(g), "config": cfg()}), 1,
                                   "train")], _model(g), "arrays", "config")
    bad = RecordDict({C.STATE_PUBLIC: ArrayRecord({"x": Array(np.zeros(4000, np.float32))}),
                      C.STATE_PUBLIC_META: state[C.STATE_PUBLIC_META]})
    with pytest.raises(OutOfSync, match="hash"):
        receive(m1.content["arrays"], m1.content["config"], bad)
    assert C.STATE_PUBLIC not in bad  # dropped: the next message must be a keyframe
    with pytest.raises(OutOfSync, match="no public model"):
        receive(m1.content["arrays"], m1.content["config"], RecordDict())
    full = receive(m1.content["arrays"], m1.content["config"], state)
    assert hashlib.sha256(full["x"].numpy().tobytes()).hexdigest() == pm.hash


def test_downlink_bytes_are_in_the_messages_as_sent():
    """The train messages of a delta round are a fraction of the plain broadcast's bytes,
    and the blob bytes the metrics report are inside them."""
    grid_msgs = []

    class Capture(LocalGrid):
        def push_messages(self, messages):
            messages = list(messages)
            if messages:
                grid_msgs.append(messages)
            return super().push_messages(messages)

    seen: list = []
    grid = Capture(make_app(seen), 4, seed=3)
    s2 = Recording("hd-dither", 2, 1, fraction_evaluate=0.0, downlink="hd-dither",
                   downlink_bits=2)
    s2.start(grid, initial(), num_rounds=3)
    first = sum(message_wire_bytes(m) for m in grid_msgs[0])  # keyframes
    last = sum(message_wire_bytes(m) for m in grid_msgs[-1])  # deltas
    blob = s2.metrics[-1][C.METRIC_DOWN_BLOB_BYTES]
    assert 4 * blob < last < 0.5 * first
    assert s2.metrics[0][C.METRIC_DOWN_KEYFRAMES] == 4


def test_the_wrapper_compresses_the_downlink_too():
    """CompressedStrategy around FedAvgM: same downlink path, nodes stay on P (FedAvgM
    returns the int64 array as float64: a new structure, so one more keyframe round)."""
    from flwr.serverapp.strategy import FedAvgM

    from strategies import CompressedStrategy

    seen: list[tuple[int, int, str]] = []
    grid = LocalGrid(make_app(seen), 4, seed=2)
    s = CompressedStrategy(FedAvgM(fraction_train=0.5, fraction_evaluate=0.0,
                                   min_available_nodes=1, min_train_nodes=1),
                           "hd-dither", 2, 1, downlink="hd-dither", downlink_bits=2)
    hashes = {}
    inner = s.configure_train

    def configure_and_record(server_round, arrays, config, g):
        out = list(inner(server_round, arrays, config, g))
        hashes[server_round] = s.compressor.downlink.hash
        return out
    s.configure_train = configure_and_record  # type: ignore[method-assign]
    result = s.start(grid, initial(), num_rounds=5)
    assert len(seen) == 10 and all(h == hashes[r] for _, r, h in seen)
    m = result.train_metrics_clientapp
    assert m[1][C.METRIC_DOWN_KEYFRAMES] == 2 and m[2][C.METRIC_DOWN_KEYFRAMES] == 2
    # after the new structure: one keyframe for each of the 2 other nodes, at most
    assert sum(m[r][C.METRIC_DOWN_KEYFRAMES] for r in (3, 4, 5)) <= 2
    assert all(m[r][C.METRIC_ERROR_REPLIES] == 0 for r in m)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_server_model_keeps_what_the_downlink_left_out(precision):
    """EF21-P through the strategy: G_T = G_0 + sum of mean updates exactly (an identity
    uplink), and P stays within about one delta's error of G. The residual r = G - P obeys
    E||r'||^2 = w E||s + r||^2 (w = hd-dither's vNMSE at 2 bits, ~0.16; s the round's step),
    so ||r|| settles near sqrt(w / (1 - w)) ||s|| ~ 0.43 ||s||; without the feedback it
    would grow like sqrt(w T) ||s|| (~2.2 ||s|| after T = 30 rounds). Bound: 1.0 ||s||.
    A bfloat16 P adds its rounding (rms 2^-8 |x| / sqrt(3), ~0.1 ||s|| here) to r: the
    same bound holds, and G is still exact."""
    seen: list = []
    grid = LocalGrid(make_app(seen), 2, seed=1)
    s = CompressedFedAvg("identity", None, 1, fraction_evaluate=0.0, downlink="hd-dither",
                         downlink_bits=2, downlink_precision=precision)
    rounds = 30
    res = s.start(grid, initial(), num_rounds=rounds)
    expect = vector(initial()).astype(np.float64)
    steps = []
    for rnd in range(1, rounds + 1):
        rng = [np.random.default_rng(1000 * rnd + i) for i in range(2)]
        steps.append(np.mean([np.concatenate([0.01 * r.standard_normal(D_W).ravel(),
                                              np.full(50, 0.01)]) for r in rng], axis=0))
        expect += steps[-1]
    np.testing.assert_allclose(vector(res.arrays), expect, rtol=0, atol=5e-5)
    pm = s.compressor.downlink
    step = float(np.mean([np.linalg.norm(x) for x in steps]))
    assert np.linalg.norm(pm.vector - pm._global) < 1.0 * step


def test_bfloat16_bits_round_to_nearest_even_as_torch_does():
    import torch
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.standard_normal(10_000) * 10.0 ** rng.integers(-30, 30, 10_000),
                        [0.0, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 3.0e38, -1e-40]]
                       ).astype(np.float32)
    ours = from_bfloat16_bits(to_bfloat16_bits(x))
    ref = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))
    assert np.all(np.isfinite(ours))


def test_a_bfloat16_public_model_keeps_nodes_in_sync_with_half_size_keyframes():
    """Nodes hold P bit for bit, P lies on the bfloat16 grid, and a keyframe's float arrays
    cost 2 bytes per coordinate (the metric and the messages as sent)."""
    s, seen, _, _ = run(downlink_precision="bfloat16")
    trained = [(r, h) for _, r, h in seen if r > 0]
    assert len(trained) == 12 * 3 and all(h == s.hashes[r] for r, h in trained)
    p = s.compressor.downlink.vector
    np.testing.assert_array_equal(from_bfloat16_bits(to_bfloat16_bits(p)), p)
    d = p.size
    m = s.metrics
    assert all(x[C.METRIC_ERROR_REPLIES] == 0 for x in m)
    assert m[0][C.METRIC_DOWN_KEYFRAMES] == 3
    assert m[0][C.METRIC_DOWN_KEYFRAME_BYTES] == 3 * 2 * d
    pm = PublicModel("hd-dither", 2, 9, None, precision="bfloat16")
    g = initial()
    pm.advance(g)
    (msg,), _ = pm.address([Message(RecordDict({"arrays": g, "config": ConfigRecord()}), 1,
                                    "train")], g, "arrays", "config")
    plain = Message(RecordDict({"arrays": g, "config": ConfigRecord()}), 1, "train")
    saved = message_wire_bytes(plain) - message_wire_bytes(msg)
    assert 2 * d - 200 < saved <= 2 * d  # the config keys cost a few bytes back
    with pytest.raises(ValueError, match="precision"):
        PublicModel("hd-dither", 2, 9, None, precision="float16")
