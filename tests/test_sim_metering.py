"""simulations.metering and simulations.link: per-round bytes of both directions checked
against the real messages (strategies.message_wire_bytes), CPU seconds, link arithmetic."""

from __future__ import annotations

import time

import pytest
import torch
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from simulations import config as C
from simulations.link import BROADBAND, MOBILE, ClientRound, Link
from simulations.metering import (
    KEY_CALL_CPU,
    KEY_TRAIN_CPU,
    MeteredGrid,
    RoundTraffic,
    metering_mod,
)
from simulations.server_app import run_one, traffic_row, warm_up_content
from strategies import message_wire_bytes

# ---------------------------------------------------------------------------- link model


def test_link_arithmetic():
    link = Link(downlink_mbps=8.0, uplink_mbps=1.0, latency_ms=50.0)
    assert link.download_seconds(1_000_000) == pytest.approx(0.05 + 1.0)
    assert link.upload_seconds(1_000_000) == pytest.approx(0.05 + 8.0)
    a = ClientRound(download_bytes=1_000_000, upload_bytes=125_000, compute_seconds=2.0)
    assert link.client_seconds(a) == pytest.approx(1.05 + 2.0 + 1.05)
    b = ClientRound(download_bytes=1_000_000, upload_bytes=250_000, compute_seconds=0.5)
    assert link.client_seconds(b) == pytest.approx(1.05 + 0.5 + 2.05)
    # the slowest client sets the round, then the server's aggregation
    assert link.round_seconds([a, b], server_seconds=0.25) == pytest.approx(4.1 + 0.25)
    assert link.round_seconds([], server_seconds=0.25) == 0.25
    slow = Link(8.0, 1.0, 50.0, compute_scale=3.0)
    assert slow.client_seconds(a) == pytest.approx(1.05 + 6.0 + 1.05)
    assert (MOBILE.downlink_mbps, MOBILE.uplink_mbps, MOBILE.latency_ms) == (36.0, 11.0, 40.0)
    assert BROADBAND.uplink_mbps > MOBILE.uplink_mbps
    with pytest.raises(ValueError):
        Link(downlink_mbps=0.0)
    with pytest.raises(ValueError):
        C.default_config().replace(latency_ms=-1.0)


def test_traffic_row_times_the_slowest_client():
    cfg = C.default_config().replace(downlink_mbps=8.0, uplink_mbps=1.0, latency_ms=0.0)
    traffic = RoundTraffic(downlink={1: 1_000_000, 2: 1_000_000},
                           uplink={1: 125_000, 2: 500_000},
                           client_cpu={1: 3.0, 2: 0.5}, train_cpu={1: 2.5, 2: 0.25})
    row = traffic_row(traffic, cfg, server_seconds=0.1)
    assert row["downlink_bytes_round"] == 2_000_000 and row["uplink_bytes_round"] == 625_000
    assert row["clients"] == 2
    assert row["client_compress_cpu_s"] == pytest.approx(0.5 + 0.25)
    assert row["client_train_cpu_s"] == pytest.approx(2.75)
    # client 1: 1 + 3 + 1 = 5 s; client 2: 1 + 0.5 + 4 = 5.5 s
    assert row["sim_round_s"] == pytest.approx(5.5 + 0.1)


# ---------------------------------------------------------------------------- client mod


def test_metering_mod_measures_the_whole_call():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # as a node

    def call_next(msg, context):
        t = time.process_time()
        while time.process_time() - t < 0.05:  # 50 ms of CPU "compression" outside training
            pass
        return Message(RecordDict({"metrics": MetricRecord({KEY_TRAIN_CPU: 0.01,
                                                            "num-examples": 1})}),
                       reply_to=msg)

    msg = Message(RecordDict(), dst_node_id=1, message_type="train")
    msg.metadata.__dict__["_message_id"] = "1"
    reply = metering_mod(msg, None, call_next)
    metrics = reply.content["metrics"]
    assert metrics[KEY_CALL_CPU] >= 0.05
    traffic = RoundTraffic(client_cpu={1: float(metrics[KEY_CALL_CPU])}, train_cpu={1: 0.01})
    assert traffic.compress_cpu[1] == pytest.approx(float(metrics[KEY_CALL_CPU]) - 0.01)


# ---------------------------------------------------------------------------- bytes


class SpyGrid(Grid):
    """Forwards to a LocalGrid and keeps every train exchange that crossed it: per call, the
    round, the wire bytes of each message as it went out (the strategy reuses and updates
    one ConfigRecord from round to round) and the replies."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[tuple[int, list[int], list[Message]]] = []

    def set_run(self, run):
        self.inner.set_run(run)

    @property
    def run(self):
        return self.inner.run

    def create_message(self, *args, **kwargs):
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self):
        return self.inner.get_node_ids()

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        if messages and all(m.metadata.message_type == MessageType.TRAIN for m in messages):
            (r,) = {int(m.content["config"]["server-round"]) for m in messages}
            self.calls.append((r, [message_wire_bytes(m) for m in messages], replies))
        return replies  # queries (the partition map) are not metered and not recorded


@pytest.fixture(scope="module")
def metered_run():
    from benchmarks.localgrid import LocalGrid
    from simulations.client_app import app

    torch.set_num_threads(1)
    cfg = C.default_config().replace(task="digits", clients=4, fraction=0.5, rounds=2,
                                     local_epochs=1, methods=["hd-dither"], bits=[2],
                                     method_bits={}, seeds=[0])
    spy = SpyGrid(LocalGrid(app, num_nodes=cfg.clients, seed=3))
    grid = MeteredGrid(spy)
    grid.map_partitions(cfg.clients, content=warm_up_content(cfg, [("hd-dither", 2)]))
    result = run_one(grid, cfg, "hd-dither", 2, seed=0)
    return cfg, spy, result


def test_per_round_bytes_of_both_directions_match_the_messages(metered_run):
    cfg, spy, result = metered_run
    assert [r for r, _, _ in spy.calls] == [1, 2]
    for row, (r, sent, replies) in zip(result.rows[1:], spy.calls):
        assert row["round"] == r
        assert len(sent) == len(replies) == cfg.clients_per_round == row["clients"]
        assert row["downlink_bytes_round"] == sum(sent)
        assert row["uplink_bytes_round"] == sum(message_wire_bytes(m) for m in replies)
        assert row["uplink_bytes_round"] == row["strategy_uplink_bytes_round"]
        # the global model goes down as float32, the update comes up at ~2 bits/coord
        assert row["downlink_bytes_round"] > 10 * row["uplink_bytes_round"]
    last = result.rows[-1]
    assert last["downlink_bytes"] == sum(sum(sent) for _, sent, _ in spy.calls)
    assert last["uplink_bytes"] == sum(message_wire_bytes(m) for _, _, rs in spy.calls
                                       for m in rs)


def test_instrumentation_is_measured_and_taken_out_of_the_replies(metered_run):
    _, spy, result = metered_run
    for reply in (m for _, _, replies in spy.calls for m in replies):
        metrics = reply.content["metrics"]
        assert KEY_CALL_CPU not in metrics and KEY_TRAIN_CPU not in metrics
        assert "num-examples" in metrics
    for row in result.rows[1:]:
        assert 0 < row["client_compress_cpu_s"] < row["client_train_cpu_s"] + 1.0
        assert row["server_aggregate_cpu_s"] > 0 and row["server_aggregate_wall_s"] > 0
        assert row["sim_round_s"] > 2 * MOBILE.latency_ms / 1e3


# ---------------------------------------------------------------------------- compressed downlink


@pytest.fixture(scope="module")
def downlink_run():
    from benchmarks.localgrid import LocalGrid
    from simulations.client_app import app
    from simulations.server_app import reset_clients

    torch.set_num_threads(1)
    cfg = C.default_config().replace(task="digits", clients=4, fraction=0.5, rounds=3,
                                     local_epochs=1, methods=["hd-dither"], bits=[2],
                                     method_bits={}, seeds=[0])
    spec = C.RunSpec("hd-dither", 2, (("downlink", "hd-dither"), ("downlink-bits", 2)),
                     "both ways")
    spy = SpyGrid(LocalGrid(app, num_nodes=cfg.clients, seed=3))
    grid = MeteredGrid(spy)
    grid.map_partitions(cfg.clients, content=warm_up_content(cfg, [("hd-dither", 2)]))
    reset_clients(grid)
    result = run_one(grid, cfg, "hd-dither", 2, seed=0, spec=spec)
    return cfg, spy, result


def test_compressed_downlink_is_metered_as_sent(downlink_run):
    """The downlink column counts the compressed messages as transported, and the per-round
    keyframe and catch-up figures come from CompressedFedAvg's metrics."""
    cfg, spy, result = downlink_run
    assert result.label == "both ways" and not result.uncompressed
    assert result.options == {"downlink": "hd-dither", "downlink-bits": 2}
    rows = result.rows[1:]
    assert [r for r, _, _ in spy.calls] == [1, 2, 3]
    for row, (_, sent, _) in zip(rows, spy.calls):
        assert row["label"] == "both ways"
        assert row["downlink_bytes_round"] == sum(sent)
        assert row["down_keyframes"] + row["down_delta_messages"] == cfg.clients_per_round
    assert rows[0]["down_keyframes"] == cfg.clients_per_round  # first contact: keyframes
    keyframe = 4 * result.num_params
    for row, (_, sent, _) in zip(rows, spy.calls):
        # a keyframe message holds the float32 model; a delta message ~2 bits a coordinate
        big = [n for n in sent if n > keyframe]
        assert len(big) == row["down_keyframes"]
        assert all(n < keyframe / 4 for n in sent if n <= keyframe)
        assert row["down_keyframe_bytes"] == row["down_keyframes"] * keyframe
    assert any(row["down_delta_messages"] for row in rows)


def test_reset_forgets_fedhd_state_only():
    from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

    from simulations.client_app import forget_state

    state = RecordDict({"fedhd.ef.residual": ArrayRecord(), "fedhd.public.meta":
                        ConfigRecord({"version": 1}), "mine": ConfigRecord({"x": 1})})
    context = Context(run_id=1, node_id=1, node_config={}, state=state, run_config={})
    assert sorted(forget_state(context)) == ["fedhd.ef.residual", "fedhd.public.meta"]
    assert list(context.state.keys()) == ["mine"]
