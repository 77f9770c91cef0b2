"""The ServerApp: one Flower run that plays a whole sweep of (method, bits, seed) configs.

Starting the Simulation Engine (Ray, actors, data generation) costs many seconds, so instead
of one simulation per configuration the ServerApp loops over the sweep: each configuration
gets a fresh model, a fresh strategy (``CompressedFedAvg`` of the requested method and bits)
and its own ``strategy.start(...)`` over the same Grid and the same virtual clients.

Traffic is measured on the wire by :class:`MeteredGrid`: every Message that passes through
the Grid is sized as Flower transports it (each deflated object of the message tree in its
``PushObjectRequest``), so uplink bytes include the headers, scales and record envelopes,
not only the payload.

``flwr run simulations/flwr_app`` uses :data:`app` (configuration from the run-config);
``python -m simulations`` builds its own ServerApp with :func:`make_server_app`.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from strategies import CompressedFedAvg, message_wire_bytes
from strategies import constants as C

from . import task as T
from .config import SweepConfig, from_mapping


def wire_bytes(msg: Message, cache: dict[str, int] | None = None) -> int:
    """Bytes of ``msg`` as its sender pushes it: one ``PushObjectRequest`` per object of the
    message tree (``strategies.message_wire_bytes``), with the ``delivered_at`` stamp the
    SuperLink adds on delivery left out."""
    metadata = copy.copy(msg.metadata)
    metadata.__dict__["_delivered_at"] = ""
    body: dict[str, Any] = ({"error": msg.error} if msg.has_error()
                            else {"content": msg.content})
    sent: Message = Message(metadata=metadata, **body)  # type: ignore[call-overload]
    return message_wire_bytes(sent, cache)


class MeteredGrid(Grid):
    """A Grid that forwards everything to ``inner`` and counts the bytes of every message.

    ``downlink`` counts the messages the ServerApp sends, ``uplink`` the replies it gets
    (error replies included); both in bytes, cumulative until :meth:`reset`.
    """

    def __init__(self, inner: Grid):
        self.inner = inner
        self.uplink = 0
        self.downlink = 0
        self.partition_of: dict[int, int] = {}  # node id -> partition id

    def map_partitions(self, expected: int, timeout: float = 300.0) -> None:
        """Ask every node for its partition id (one unmetered query message each), so that
        :meth:`get_node_ids` lists the nodes in partition order. Node ids are random in
        each simulation; the order makes seeded sampling pick the same shards every run."""
        deadline = time.monotonic() + timeout
        while len(ids := list(self.inner.get_node_ids())) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ids)} of {expected} nodes connected")
            time.sleep(0.5)
        messages = [Message(RecordDict(), node_id, MessageType.QUERY,
                            group_id="fedhd-partition-map") for node_id in ids]
        for reply in self.inner.send_and_receive(messages, timeout=timeout):
            if not reply.has_error() and "partition" in reply.content:
                record = reply.content["partition"]
                pid = record.get("partition-id") if isinstance(record, MetricRecord) else None
                if isinstance(pid, int):
                    self.partition_of[reply.metadata.src_node_id] = pid

    def reset(self) -> None:
        self.uplink = self.downlink = 0

    def set_run(self, run: Any) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Any:
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Node ids in partition order (see :meth:`map_partitions`), then by id."""
        unknown = 1 << 62
        return sorted(self.inner.get_node_ids(),
                      key=lambda n: (self.partition_of.get(n, unknown), n))

    def _count(self, messages: list[Message], uplink: bool) -> None:
        cache: dict[str, int] = {}  # the global arrays go to every node: deflate them once
        n = sum(wire_bytes(m, cache) for m in messages)
        if uplink:
            self.uplink += n
        else:
            self.downlink += n

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self._count(messages, uplink=False)
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.inner.pull_messages(message_ids))
        self._count(replies, uplink=True)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        self._count(messages, uplink=False)
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        self._count(replies, uplink=True)
        return replies


# --------------------------------------------------------------------------------------
# Which (method, bits) to run


def available_methods() -> list[str]:
    import fedhd

    return list(fedhd.methods())


def _bits_ok(method: str, bits: int) -> bool:
    import fedhd

    try:
        fedhd.Codec(method, bits)
    except (ValueError, TypeError):
        return False
    return True


def plan(cfg: SweepConfig) -> tuple[list[tuple[str, int]], list[str]]:
    """The (method, bits) pairs of a sweep, and notes on what was skipped and why."""
    have = set(available_methods())
    pairs: list[tuple[str, int]] = []
    notes: list[str] = []
    for method in cfg.methods:
        if method not in have:
            notes.append(f"{method}: not registered in fedhd.methods(), skipped")
            continue
        bits_list = [32] if method == "identity" else cfg.method_bits.get(method, cfg.bits)
        for bits in bits_list:
            if _bits_ok(method, bits):
                pairs.append((method, bits))
            else:
                notes.append(f"{method}: {bits} bits not supported, skipped")
    return pairs, notes


def make_strategy(cfg: SweepConfig, method: str, bits: int, seed: int) -> FedAvg:
    """``CompressedFedAvg``: FedAvg whose clients send ``method`` at ``bits`` bits/coord."""
    return CompressedFedAvg(
        method=method, bits=bits, seed=seed,
        fraction_train=cfg.clients_per_round / cfg.clients, fraction_evaluate=0.0,
        min_train_nodes=cfg.clients_per_round, min_available_nodes=cfg.clients)


# --------------------------------------------------------------------------------------
# One configuration, then the sweep


@dataclass
class RunResult:
    """Per-round records of one (method, bits, seed) run."""

    method: str
    bits: int
    seed: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float | None = None  # CPU of the whole process tree since the sweep began


def train_config(cfg: SweepConfig, seed: int) -> ConfigRecord:
    return ConfigRecord({
        "task": cfg.task, "num-samples": cfg.num_samples, "alpha": cfg.alpha,
        "data-seed": seed, "seed": seed, "local-epochs": cfg.local_epochs,
        "batch-size": cfg.batch_size, "optimizer": cfg.optimizer, "lr": cfg.lr,
        "lr-schedule": cfg.lr_schedule, "rounds": cfg.rounds, "momentum": cfg.momentum,
    })


def run_one(grid: MeteredGrid, cfg: SweepConfig, method: str, bits: int, seed: int,
            on_round: Callable[[dict[str, Any]], None] | None = None) -> RunResult:
    """Train ``cfg.rounds`` rounds of one configuration; evaluate centrally every round."""
    torch.set_num_threads(1)
    data = T.load_data(cfg.task, cfg.num_samples)
    model = T.make_model(cfg.task, seed)
    result = RunResult(method, bits, seed)
    t0 = time.perf_counter()

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = T.evaluate(model, data.x_test, data.y_test)
        row = {"round": server_round, "method": method, "bits": bits, "seed": seed,
               "accuracy": acc, "loss": loss, "uplink_bytes": grid.uplink,
               "downlink_bytes": grid.downlink}
        result.rows.append(row)
        if on_round is not None and server_round > 0:
            on_round(row)
        return MetricRecord({"accuracy": acc, "loss": loss})

    grid.reset()
    random.seed(seed)  # FedAvg samples clients with Python's global `random`
    strategy = make_strategy(cfg, method, bits, seed)
    out = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                         num_rounds=cfg.rounds, train_config=train_config(cfg, seed),
                         evaluate_fn=evaluate_fn)
    _add_strategy_metrics(result.rows, out.train_metrics_clientapp)
    result.seconds = time.perf_counter() - t0
    return result


def _add_strategy_metrics(rows: list[dict[str, Any]], train_metrics: dict[int, Any]) -> None:
    """Per round, from CompressedFedAvg's train metrics: the mean training loss, the wire
    bytes of the accepted replies, what the same replies cost as plain float32 FedAvg arrays
    (cumulative), and the replies dropped or failed."""
    plain = 0.0
    for row in rows:
        m = train_metrics.get(row["round"])
        if m is None:
            continue
        accepted = int(m.get(C.METRIC_ACCEPTED, 0))
        plain += float(m.get(C.METRIC_UPLINK_BYTES_UNCOMPRESSED, 0.0)) * accepted
        row.update({
            "train_loss": m.get("train_loss"),
            "uplink_bytes_round": m.get(C.METRIC_UPLINK_BYTES_TOTAL),
            "fp32_fedavg_uplink_bytes": round(plain),
            "accepted": accepted,
            "dropped": int(m.get(C.METRIC_DROPPED, 0)) + int(m.get(C.METRIC_ERROR_REPLIES, 0)),
        })


def run_sweep(grid: Grid, cfg: SweepConfig,
              on_round: Callable[[dict[str, Any]], None] | None = None,
              on_run: Callable[[RunResult], None] | None = None) -> list[RunResult]:
    """Every (method, bits) of :func:`plan` for every seed, seed-major so that a cut-short
    sweep still has every method at the first seeds."""
    metered = grid if isinstance(grid, MeteredGrid) else MeteredGrid(grid)
    if hasattr(metered.inner, "pull_interval"):  # InMemoryGrid polls every 0.1 s by default
        setattr(metered.inner, "pull_interval", 0.05)  # noqa: B010
    if not metered.partition_of:
        metered.map_partitions(cfg.clients)
    pairs, _ = plan(cfg)
    results = []
    for seed in cfg.seeds:
        for method, bits in pairs:
            res = run_one(metered, cfg, method, bits, seed, on_round)
            results.append(res)
            if on_run is not None:
                on_run(res)
    return results


# --------------------------------------------------------------------------------------
# ServerApps


def make_server_app(cfg: SweepConfig, on_run: Callable[[RunResult], None],
                    on_round: Callable[[dict[str, Any]], None] | None = None) -> ServerApp:
    """A ServerApp that runs the sweep of ``cfg`` and hands each run's result to ``on_run``."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_sweep(grid, cfg, on_round=on_round, on_run=on_run)

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``flwr run`` entry point: sweep per the run-config, then write the outputs."""
    from . import report
    from .config import default_config

    cfg = from_mapping(dict(context.run_config), default_config())
    nodes = _wait_for_nodes(grid, cfg.clients)
    if nodes != cfg.clients:  # the federation decides how many SuperNodes there are
        print(f"[fedhd] {nodes} SuperNodes connected; using clients={nodes}")
        cfg = cfg.replace(clients=nodes)
    _, notes = plan(cfg)
    for note in notes:
        print(f"[fedhd] {note}")
    t0 = time.perf_counter()
    results = run_sweep(grid, cfg)
    summary = report.write_all(results, cfg, seconds=time.perf_counter() - t0, notes=notes)
    print(report.console(summary, str(Path(cfg.out).resolve())))


def _wait_for_nodes(grid: Grid, expected: int, timeout: float = 60.0) -> int:
    """Number of connected nodes once ``expected`` are there, or after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while (n := len(list(grid.get_node_ids()))) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    if n < 2:
        raise RuntimeError(f"only {n} SuperNode(s) connected; FedAvg needs at least 2")
    return n
