"""Secure aggregation on Flower's Message API, in-process (LocalGrid, no Ray): the drop-in
mod + strategy, exact sums, weights, dropouts, tampering, and what the server receives."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SType
from flwr.serverapp.strategy import FedAvg
from scipy import stats

from benchmarks.localgrid import transport
from benchmarks.secagg_figures import DropoutGrid, secagg_stage
from fedhd import modular
from fedhd.rng import modular_dither_seed
from strategies import CompressedFedAvg, compression_mod
from strategies import constants as C
from strategies.secagg import SecAggFedAvg, SecAggStrategy, secagg_mod
from strategies.secagg.protocol import HEAD_BYTES

D = 20_000
K = 10


@pytest.fixture(autouse=True)
def _quiet():
    from flwr.common.logger import FLOWER_LOGGER

    level = FLOWER_LOGGER.level
    FLOWER_LOGGER.setLevel("ERROR")
    yield
    FLOWER_LOGGER.setLevel(level)


def _updates(seed=0, scale=0.01):
    r = np.random.default_rng(seed)
    return [(scale * r.standard_normal(D)).astype(np.float32) for _ in range(K)]


UPS = _updates()
G = np.random.default_rng(99).standard_normal(D).astype(np.float32)


def make_app(ups=UPS, weights=None, mods=None) -> ClientApp:
    """A user's ClientApp: the update of partition i is ups[i]; 'count' is an int."""
    app = ClientApp(mods=[secagg_mod, compression_mod] if mods is None else mods)

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        i = int(ctx.node_config["partition-id"])
        w = msg.content["arrays"]["w"].numpy()
        arrays = ArrayRecord({"w": Array((w + ups[i]).astype(np.float32)),
                              "count": Array(np.array(10 + i, np.int64))})
        n = 10 if weights is None else weights[i]
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(
            {"num-examples": n, "train_loss": 0.1 * i})}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, ctx: Context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1, "acc": 0.5})}),
                       reply_to=msg)

    return app


def global_arrays() -> ArrayRecord:
    return ArrayRecord({"w": Array(G.copy()), "count": Array(np.array(0, np.int64))})


def strategy(**kw) -> SecAggFedAvg:
    kw.setdefault("clip_norm", 3.0)
    return SecAggFedAvg(fraction_evaluate=0.0, min_available_nodes=K, min_train_nodes=K, **kw)


def run(strat, grid=None, rounds=1, **grid_kw):
    replies: list[Message] = []

    def hook(m: Message) -> Message:
        replies.append(transport(m))
        return m

    grid = grid or DropoutGrid(make_app(), K, reply_hook=hook, **grid_kw)
    result = strat.start(grid, global_arrays(), num_rounds=rounds)
    return result, grid, replies


def codes_of(strat, nodes, ups=UPS, grid=None, weights=None, max_weight=None):
    """sum of each node's clipped, quantized update, recomputed by the test (mod 2**m)."""
    st = strat.secagg.round
    spec = st.spec
    index = {n: i for i, n in enumerate(grid.node_ids)}
    acc = np.zeros(spec.padded, spec.dtype)
    for n in nodes:
        i = index[n]
        new = (G + ups[i]).astype(np.float32)
        update = (new.astype(np.float64) - G.astype(np.float64)).astype(np.float32)
        w = 1.0
        if max_weight:
            w = round((1 << 20) * min(weights[i], max_weight) / max_weight) / (1 << 20)
        acc += modular.encode(update, spec, modular_dither_seed(spec.seed, n), w).words
    return acc & spec.dtype.type(spec.mask)


def clipped_mean(ups, clip, weights=None, max_weight=None):
    tot, wsum = np.zeros(D), 0.0
    for i, u in enumerate(ups):
        u = u.astype(np.float64)
        u = u * min(1.0, clip / np.linalg.norm(u))
        w = 1.0 if not max_weight else min(weights[i], max_weight) / max_weight
        tot += w * u
        wsum += w
    return tot / wsum, wsum


# --- the round ---------------------------------------------------------------------------

def test_secure_round_sums_exactly_and_averages_within_the_stated_error():
    strat = strategy(bits=4)
    result, grid, _ = run(strat)
    st = strat.secagg.round
    agg = st.aggregate
    assert agg.survivors == sorted(grid.node_ids)
    # the unmasked integer sum IS the plain sum of the clipped, quantized updates
    np.testing.assert_array_equal(agg.words, codes_of(strat, grid.node_ids, grid=grid))
    mean, _ = clipped_mean(UPS, 3.0)
    w = result.arrays["w"].numpy().astype(np.float64)
    err = float(np.sum((w - G - mean) ** 2))
    expected = K * modular.noise_energy(st.spec) / K**2  # d step^2 / 12 per client
    assert 0.8 < err / expected < 1.2, err / expected  # chi-square, ~d dof: sd ~ 1 %
    assert result.arrays["count"].numpy() == np.rint(np.mean(10 + np.arange(K)))  # ints
    m = result.train_metrics_clientapp[1]
    assert m[C.METRIC_SECAGG_SURVIVORS] == K and m[C.METRIC_SECAGG_ABORTED] == 0
    assert m[C.METRIC_SECAGG_MODULUS_BITS] == 4 + 4 + 2 == st.spec.bits
    assert m[C.METRIC_SECAGG_CLIPPED] == 0 and m[C.METRIC_SECAGG_GUARD] == 0
    assert 10 < m[C.METRIC_SECAGG_BITS_PER_COORD] < 11  # m = 10, + padding and envelope


def test_weighted_mean_clients_prescale_and_only_the_total_weight_is_learned():
    weights = [5 * (i + 1) for i in range(K)]  # 5..50: 45 and 50 are capped at 40
    grid = DropoutGrid(make_app(weights=weights), K)
    strat = strategy(bits=6, max_weight=40)
    result, _, _ = run(strat, grid=grid)
    st = strat.secagg.round
    np.testing.assert_array_equal(st.aggregate.words, codes_of(
        strat, grid.node_ids, grid=grid, weights=weights, max_weight=40))
    mean, wsum = clipped_mean(UPS, 3.0, weights, 40)
    w = result.arrays["w"].numpy().astype(np.float64)
    expected = K * modular.noise_energy(st.spec) / wsum**2
    assert 0.8 < float(np.sum((w - G - mean) ** 2)) / expected < 1.2
    unweighted, _ = clipped_mean(UPS, 3.0)
    assert np.sum((w - G - unweighted) ** 2) > 10 * expected  # the weights did matter
    assert result.train_metrics_clientapp[1][C.METRIC_SECAGG_WEIGHT_CAPPED] == 2


def test_the_server_never_receives_a_plaintext_update():
    strat = strategy(bits=4)
    _, grid, replies = run(strat)
    spec = strat.secagg.round.spec
    codes = {n: codes_of(strat, [n], grid=grid) for n in grid.node_ids}
    masked_seen = 0
    for reply in replies:
        assert not reply.has_error()
        assert not reply.content.metric_records  # client metrics stay home by default
        for record in reply.content.array_records.values():
            for key, array in record.items():
                assert array.stype != SType.NUMPY, key  # no float (or any numpy) array
                assert key == C.SECAGG_MASKED_KEY
                data = bytes(array.data)
                words = modular.unpack(data[HEAD_BYTES + 15:HEAD_BYTES + 15 +
                                            modular.packed_bytes(spec.padded, spec.bits)],
                                       spec.bits, spec.padded)
                own = codes[int(reply.metadata.src_node_id)]
                assert np.mean(words == own) < 0.01  # 1/1024 expected by chance
                # chi-square of the word values (1024 bins, ~20 per bin), 99.9 % level
                counts = np.bincount(words.astype(np.int64), minlength=1 << spec.bits)
                assert stats.chisquare(counts).pvalue > 1e-3
                masked_seen += 1
        for rec in reply.content.config_records.values():  # stage records: bytes only
            assert set(rec.keys()) <= {C.SECAGG_KEY_STAGE, C.SECAGG_KEY_PAYLOAD}
    assert masked_seen == K


@pytest.mark.parametrize(("stage", "in_sum"), [(C.SECAGG_STAGE_SETUP, 8),
                                               (C.SECAGG_STAGE_SHARE_KEYS, 8),
                                               (C.SECAGG_STAGE_MASKED_INPUT, 8),
                                               (C.SECAGG_STAGE_UNMASK, 10)])
def test_20_percent_dropouts_at_each_stage_still_aggregate_the_rest_exactly(stage, in_sum):
    probe = DropoutGrid(ClientApp(), K)
    gone = set(probe.node_ids[3:5])
    strat = strategy(bits=4)
    result, grid, _ = run(strat, drop=lambda s, n: s == stage and n in gone)
    agg = strat.secagg.round.aggregate
    members = [n for n in grid.node_ids if in_sum == K or n not in gone]
    assert agg.survivors == sorted(members)
    np.testing.assert_array_equal(agg.words, codes_of(strat, members, grid=grid))
    m = result.train_metrics_clientapp[1]
    key = {C.SECAGG_STAGE_SETUP: C.METRIC_SECAGG_DROPPED_SETUP,
           C.SECAGG_STAGE_SHARE_KEYS: C.METRIC_SECAGG_DROPPED_SHARE_KEYS,
           C.SECAGG_STAGE_MASKED_INPUT: C.METRIC_SECAGG_DROPPED_MASKED_INPUT,
           C.SECAGG_STAGE_UNMASK: C.METRIC_SECAGG_DROPPED_UNMASK}[stage]
    assert m[key] == 2 and m[C.METRIC_SECAGG_SURVIVORS] == in_sum
    index = {n: i for i, n in enumerate(grid.node_ids)}
    mean, _ = clipped_mean([UPS[index[n]] for n in members], 3.0)
    w = result.arrays["w"].numpy().astype(np.float64)
    assert np.sum((w - G - mean) ** 2) < 2 * modular.noise_energy(
        strat.secagg.round.spec) / in_sum


def test_too_many_dropouts_refuse_the_round_with_a_clear_error(caplog):
    probe = DropoutGrid(ClientApp(), K)
    gone = set(probe.node_ids[:4])  # 6 of 10 left, threshold 7
    strat = strategy(bits=4)
    result, _, _ = run(strat, drop=lambda s, n: s == C.SECAGG_STAGE_MASKED_INPUT and n in gone)
    m = result.train_metrics_clientapp[1]
    assert m[C.METRIC_SECAGG_ABORTED] == 1 and m[C.METRIC_SECAGG_SURVIVORS] == 0
    assert "6 of 10 clients left, below the threshold 7" in strat.secagg.round.abort_reason
    assert C.METRIC_SECAGG_DROPPED_UNMASK not in m  # that stage never ran
    assert len(result.arrays) == 0  # no aggregate: the model is not updated


def test_a_message_tampered_in_flight_is_refused_and_the_round_goes_on():
    victim = DropoutGrid(ClientApp(), K).node_ids[2]

    def tamper(stage, node, payload):
        if stage == C.SECAGG_STAGE_MASKED_INPUT and node == victim:
            return payload[:-3] + bytes([payload[-3] ^ 1]) + payload[-2:]
        return payload

    strat = strategy(bits=4)
    _, grid, replies = run(strat, tamper=tamper)
    bad = [r for r in replies if r.has_error()]
    assert [int(r.metadata.src_node_id) for r in bad] == [victim]
    assert "authentication failed" in bad[0].error.reason
    members = [n for n in grid.node_ids if n != victim]
    agg = strat.secagg.round.aggregate
    assert agg.survivors == sorted(members) and agg.dropped == [victim]
    np.testing.assert_array_equal(agg.words, codes_of(strat, members, grid=grid))


def test_replayed_stage_messages_are_refused_by_the_mod():
    strat = strategy(bits=4)
    _, grid, _ = run(strat)
    node = grid.node_ids[0]
    ctx = grid.contexts[node]
    sent = {secagg_stage(m): m for m in grid.delivered if m.metadata.dst_node_id == node}
    for stage in (C.SECAGG_STAGE_SHARE_KEYS, C.SECAGG_STAGE_MASKED_INPUT,
                  C.SECAGG_STAGE_UNMASK):
        reply = grid.client_app(sent[stage], ctx)  # the session is over: all refused
        assert reply.has_error() and "refused" in reply.error.reason
    # within a session: a second masked-input request would mask a second input
    strat2 = strategy(bits=4)
    grid2 = DropoutGrid(make_app(), K, drop=lambda s, n: s == C.SECAGG_STAGE_UNMASK)
    strat2.start(grid2, global_arrays(), num_rounds=1)  # aborted at unmask: sessions open
    node = grid2.node_ids[0]
    again = next(m for m in grid2.delivered if m.metadata.dst_node_id == node
                 and secagg_stage(m) == C.SECAGG_STAGE_MASKED_INPUT)
    reply = grid2.client_app(again, grid2.contexts[node])
    assert reply.has_error() and "expected 'shared'" in reply.error.reason
    setup = next(m for m in grid2.delivered if m.metadata.dst_node_id == node
                 and secagg_stage(m) == C.SECAGG_STAGE_SETUP)
    reply = grid2.client_app(setup, grid2.contexts[node])
    assert reply.has_error() and "replayed" in reply.error.reason
    # a SETUP of another run's session of the same round cannot reset the open session
    other = next(m for m in grid.delivered if m.metadata.dst_node_id == grid.node_ids[0]
                 and secagg_stage(m) == C.SECAGG_STAGE_SETUP)
    other.metadata.__dict__["_dst_node_id"] = node
    reply = grid2.client_app(other, grid2.contexts[node])
    assert reply.has_error() and "another session" in reply.error.reason
    reply = grid2.client_app(again, grid2.contexts[node])  # the open session is intact
    assert reply.has_error() and "expected 'shared'" in reply.error.reason


# --- drop-in and composition -----------------------------------------------------------------

def test_the_same_client_app_serves_compressed_fedavg_and_evaluate_messages():
    grid = DropoutGrid(make_app(), K)
    strat = CompressedFedAvg("hd-dither", 4, fraction_evaluate=1.0, min_available_nodes=K,
                             min_train_nodes=K)
    result = strat.start(grid, global_arrays(), num_rounds=1)
    assert result.train_metrics_clientapp[1][C.METRIC_COMPRESSED] == K
    assert result.evaluate_metrics_clientapp[1]["acc"] == pytest.approx(0.5)
    mean, _ = clipped_mean(UPS, 1e9)
    w = result.arrays["w"].numpy().astype(np.float64)
    assert np.sum((w - G - mean) ** 2) < 0.05 * np.sum(mean**2)


def test_the_wrapper_equals_secagg_fedavg_and_refuses_compressed_strategies():
    a = strategy(bits=4)
    ra, _, _ = run(a)
    b = SecAggStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=K,
                              min_train_nodes=K), clip_norm=3.0, bits=4)
    rb, _, _ = run(b)
    # keys and masks differ between the runs; the codes and hence the result do not
    np.testing.assert_array_equal(ra.arrays["w"].numpy(), rb.arrays["w"].numpy())
    with pytest.raises(TypeError, match="cannot be masked and summed"):
        SecAggStrategy(CompressedFedAvg("hd-dither", 2), clip_norm=1.0)


def test_client_metrics_travel_only_when_asked_and_adaptive_clipping_moves_the_norm():
    strat = strategy(bits=4, clip_norm=0.05, client_metrics=True, target_unclipped=0.5)
    result, _, replies = run(strat, rounds=2)
    m1, m2 = result.train_metrics_clientapp[1], result.train_metrics_clientapp[2]
    assert m1[C.METRIC_SECAGG_CLIPPED] == K  # ||u|| ~ 1.4 > 0.05: everyone clipped
    assert m2[C.METRIC_SECAGG_CLIP_NORM] == pytest.approx(0.05 * np.exp(0.2 * 0.5))
    assert m1["train_loss"] == pytest.approx(np.mean(0.1 * np.arange(K)))
    assert any(r.content.metric_records for r in replies)


def test_configuration_errors_are_raised_early():
    for bad in (dict(clip_norm=0.0), dict(clip_norm=1.0, bits=0), dict(clip_norm=1.0,
                threshold=1), dict(clip_norm=1.0, num_shares=4),
                dict(clip_norm=1.0, max_weight=-1.0)):
        with pytest.raises(ValueError):
            SecAggFedAvg(**bad)


def test_messages_without_the_secagg_record_pass_through_the_mod():
    seen = []

    def app_fn(msg, ctx):
        seen.append(msg.metadata.message_type)
        return Message(RecordDict({"metrics": MetricRecord({"x": 1})}), reply_to=msg)

    for mtype in ("train", "evaluate", "query"):
        msg = transport(Message(RecordDict({"config": ConfigRecord({"a": 1})}), 5, mtype))
        reply = secagg_mod(msg, Context(1, 5, {}, RecordDict(), {}), app_fn)
        assert not reply.has_error()
    assert seen == ["train", "evaluate", "query"]
