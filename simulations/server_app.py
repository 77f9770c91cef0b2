"""The ServerApp: one Flower run that plays a whole sweep of (run, seed) configurations.

Starting the Simulation Engine (Ray, actors, data loading) costs many seconds, so instead
of one simulation per configuration the ServerApp loops over the sweep: each configuration
gets a fresh model, a fresh strategy (``CompressedFedAvg`` of the requested method and bits,
timed: :class:`~simulations.metering.MeteredFedAvg`) and its own ``strategy.start(...)``
over the same Grid and the same virtual clients. Traffic and CPU seconds are metered by
:mod:`simulations.metering`, turned into simulated time by :mod:`simulations.link`, and
collected as :class:`~simulations.results.RunResult` rows.

``flwr run simulations/flwr_app`` uses :data:`app` (configuration from the run-config);
``python -m simulations`` builds its own ServerApp with :func:`make_server_app`.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
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

from strategies import constants as K

from . import methods, tasks
from .config import RunSpec, SweepConfig, from_mapping
from .link import ClientRound
from .metering import MeteredFedAvg, MeteredGrid, RoundTraffic
from .results import RunResult

# --------------------------------------------------------------------------------------
# Which runs


def plan(cfg: SweepConfig) -> tuple[list[RunSpec], list[str]]:
    """The runs of a sweep (:class:`~simulations.config.RunSpec`, labelled), and notes on
    what was skipped and why.

    First ``methods`` x bits: a fixed-rate method (one rate only, e.g. ``identity`` at 32)
    runs once, at its rate; the others at ``cfg.method_bits[method]`` or else ``cfg.bits``.
    Then the named ``runs``, each with its ``CompressedFedAvg`` options. A method missing
    from ``fedhd.methods()``, a rate it refuses, or options the strategy does not take (an
    unknown keyword, a downlink method that is not registered) skip the run with a note.
    """
    have = set(methods.available())
    specs: list[RunSpec] = []
    notes: list[str] = []
    for method in cfg.methods:
        if method not in have:
            notes.append(f"{method}: not registered in fedhd.methods(), skipped")
            continue
        fixed = methods.traits(method).fixed_bits
        bits_list = [int(fixed)] if fixed is not None else cfg.method_bits.get(method, cfg.bits)
        for bits in bits_list:
            if methods.bits_ok(method, bits):
                specs.append(RunSpec(method, bits))
            else:
                notes.append(f"{method}: {bits} bits not supported, skipped")
    for run in cfg.runs:
        name = run.label or run.to_string()
        if run.method not in have:
            notes.append(f"{name}: method {run.method} not registered in fedhd.methods(), "
                         "skipped")
            continue
        if not methods.bits_ok(run.method, run.bits):
            notes.append(f"{name}: {run.method} does not take {run.bits} bits, skipped")
            continue
        problem = _strategy_problem(run)
        if problem:
            notes.append(f"{name}: CompressedFedAvg({problem}), skipped")
            continue
        specs.append(run)
    named = [s.named(methods.traits(s.method).uncompressed) for s in specs]
    seen: set[str] = set()
    unique = []
    for s in named:
        if s.label in seen:
            notes.append(f"{s.label}: listed twice, run once")
            continue
        seen.add(s.label)
        unique.append(s)
    return unique, notes


def _strategy_problem(run: RunSpec) -> str:
    """Why ``CompressedFedAvg(run.method, run.bits, **run.kwargs)`` cannot be built ('' if
    it can): options of a strategy version that does not have them yet, bad values."""
    try:
        MeteredFedAvg(method=run.method, bits=run.bits, **run.kwargs)
    except (TypeError, ValueError, KeyError) as e:
        return f"{', '.join(f'{k}={v!r}' for k, v in run.kwargs.items())}: {e}"
    return ""


def make_strategy(cfg: SweepConfig, method: str, bits: float, seed: int,
                  options: dict[str, Any] | None = None) -> MeteredFedAvg:
    """``CompressedFedAvg`` (timed): FedAvg whose clients send ``method`` at ``bits``, with
    the run's strategy ``options`` (downlink, error feedback, ...)."""
    return MeteredFedAvg(
        method=method, bits=bits, seed=seed,
        fraction_train=cfg.clients_per_round / cfg.clients, fraction_evaluate=0.0,
        min_train_nodes=cfg.clients_per_round, min_available_nodes=cfg.clients,
        **(options or {}))


def train_config(cfg: SweepConfig, seed: int) -> ConfigRecord:
    """What every client needs to build the task and train, in the train message."""
    return ConfigRecord({
        "task": cfg.task, "task-options": json.dumps(cfg.task_options, sort_keys=True),
        "alpha": cfg.alpha, "data-seed": seed, "seed": seed,
        "local-epochs": cfg.local_epochs, "batch-size": cfg.batch_size,
        "optimizer": cfg.optimizer, "lr": cfg.lr, "lr-schedule": cfg.lr_schedule,
        "rounds": cfg.rounds, "momentum": cfg.momentum,
    })


# --------------------------------------------------------------------------------------
# One configuration, then the sweep


def traffic_row(traffic: RoundTraffic, cfg: SweepConfig, server_seconds: float
                ) -> dict[str, Any]:
    """Per-round figures of the metered traffic, and the round's simulated time."""
    compress = traffic.compress_cpu
    clients = [ClientRound(traffic.downlink.get(n, 0), up, traffic.client_cpu.get(n, 0.0))
               for n, up in traffic.uplink.items()]
    return {
        "clients": len(traffic.uplink),
        "downlink_bytes_round": traffic.downlink_bytes,
        "uplink_bytes_round": traffic.uplink_bytes,
        "client_compress_cpu_s": sum(compress.values()),
        "client_train_cpu_s": sum(traffic.train_cpu.values()),
        "sim_round_s": cfg.link.round_seconds(clients, server_seconds),
    }


def run_one(grid: MeteredGrid, cfg: SweepConfig, method: str, bits: float, seed: int,
            on_round: Callable[[dict[str, Any]], None] | None = None, *,
            spec: RunSpec | None = None) -> RunResult:
    """Train ``cfg.rounds`` rounds of one configuration (``method`` at ``bits``, with the
    strategy options and label of ``spec`` if given); evaluate centrally every round."""
    torch.set_num_threads(1)
    uncompressed = methods.traits(method).uncompressed
    spec = (spec or RunSpec(method, bits)).named(uncompressed)
    task = tasks.load(cfg.task, cfg.task_options)
    test = task.test_data(cfg.clients, seed=seed)
    model = tasks.build_model(task, seed)
    result = RunResult(method, bits, seed, task=cfg.task, num_params=tasks.num_params(model),
                       clients_per_round=cfg.clients_per_round,
                       uncompressed=uncompressed and not spec.options, name=spec.label,
                       options=dict(spec.options))
    strategy = make_strategy(cfg, method, bits, seed, spec.kwargs)
    totals = {"sim_time_s": 0.0}
    t0 = time.perf_counter()

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        traffic = grid.take_round()  # called once per round, after its messages
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = task.evaluate(model, test)
        cpu, wall = strategy.aggregate_seconds.get(server_round, (0.0, 0.0))
        row: dict[str, Any] = {"round": server_round, "label": spec.label, "method": method,
                               "bits": bits, "seed": seed, "accuracy": acc, "loss": loss}
        row.update(traffic_row(traffic, cfg, cpu))
        totals["sim_time_s"] += row["sim_round_s"]
        row.update({"downlink_bytes": grid.downlink, "uplink_bytes": grid.uplink,
                    "total_bytes": grid.downlink + grid.uplink,
                    "server_aggregate_cpu_s": cpu, "server_aggregate_wall_s": wall,
                    "sim_time_s": totals["sim_time_s"]})
        result.rows.append(row)
        if on_round is not None and server_round > 0:
            on_round(row)
        return MetricRecord({"accuracy": acc, "loss": loss})

    grid.reset()
    random.seed(seed)  # FedAvg samples clients with Python's global `random`
    out = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                         num_rounds=cfg.rounds, train_config=train_config(cfg, seed),
                         evaluate_fn=evaluate_fn)
    _add_strategy_metrics(result.rows, out.train_metrics_clientapp)
    result.seconds = time.perf_counter() - t0
    return result


def _add_strategy_metrics(rows: list[dict[str, Any]], train_metrics: dict[int, Any]) -> None:
    """Per round, from CompressedFedAvg's train metrics: the mean training loss, its own
    count of the accepted replies' wire bytes, what the same replies cost as plain float32
    FedAvg arrays (cumulative), the replies dropped or failed, and with a compressed
    downlink what the round's train messages carried (keyframes, delta messages, blob,
    catch-up and keyframe bytes)."""
    plain = 0.0
    for row in rows:
        m = train_metrics.get(row["round"])
        if m is None:
            continue
        accepted = int(m.get(K.METRIC_ACCEPTED, 0))
        plain += float(m.get(K.METRIC_UPLINK_BYTES_UNCOMPRESSED, 0.0)) * accepted
        row.update({
            "train_loss": m.get("train_loss"),
            "strategy_uplink_bytes_round": m.get(K.METRIC_UPLINK_BYTES_TOTAL),
            "fp32_fedavg_uplink_bytes": round(plain),
            "accepted": accepted,
            "dropped": int(m.get(K.METRIC_DROPPED, 0)) + int(m.get(K.METRIC_ERROR_REPLIES, 0)),
        })
        if K.METRIC_DOWN_VERSION in m:
            row.update({column: int(m.get(key, 0)) for column, key in DOWN_METRICS.items()})


#: rounds.csv columns of the compressed downlink <- CompressedFedAvg's train metrics.
DOWN_METRICS = {
    "down_keyframes": K.METRIC_DOWN_KEYFRAMES,
    "down_delta_messages": K.METRIC_DOWN_DELTA_MESSAGES,
    "down_blob_bytes": K.METRIC_DOWN_BLOB_BYTES,
    "down_catchup_bytes": K.METRIC_DOWN_CATCHUP_BYTES,
    "down_keyframe_bytes": K.METRIC_DOWN_KEYFRAME_BYTES,
}


def codec_pairs(specs: list[RunSpec]) -> list[tuple[str, float]]:
    """Every (method, bits) the runs encode with: the uplinks and the downlinks."""
    pairs: list[tuple[str, float]] = []
    for s in specs:
        pairs.append(s.pair)
        down = s.kwargs.get("downlink")
        if down not in (None, False):
            name = K.DEFAULT_METHOD if down is True else str(down)
            bits = s.kwargs.get("downlink_bits")
            if bits is not None:
                pairs.append((name, bits))
    return list(dict.fromkeys(pairs))


def warm_up_content(cfg: SweepConfig, pairs: list[tuple[str, float]]) -> RecordDict:
    """Content of the partition-map query: enough for each client process to warm up
    (load its shard, one training step, every codec once) before anything is measured."""
    config = train_config(cfg, cfg.seeds[0])
    config["warm-up"] = ";".join(f"{m}:{b}" for m, b in pairs)
    return RecordDict({"warm-up": config})


def reset_clients(grid: MeteredGrid, timeout: float = 300.0) -> None:
    """Before each run: every node forgets fedhd's per-node state (error-feedback
    residuals, powersgd warm starts, the downlink's public model), so that a run does not
    depend on the runs before it. One unmetered query message per node."""
    ids = list(grid.inner.get_node_ids())
    messages = [Message(RecordDict({"reset": ConfigRecord({})}), node_id, MessageType.QUERY,
                        group_id="fedhd-reset") for node_id in ids]
    list(grid.inner.send_and_receive(messages, timeout=timeout))


def check_clients(cfg: SweepConfig) -> None:
    """ValueError when the task cannot make ``cfg.clients`` clients."""
    most = tasks.load(cfg.task, cfg.task_options).max_clients()
    if most is not None and cfg.clients > most:
        raise ValueError(f"task {cfg.task} can make at most {most} clients, "
                         f"{cfg.clients} asked (--clients)")


def run_sweep(grid: Grid, cfg: SweepConfig,
              on_round: Callable[[dict[str, Any]], None] | None = None,
              on_run: Callable[[RunResult], None] | None = None) -> list[RunResult]:
    """Every run of :func:`plan` for every seed, seed-major so that a cut-short sweep still
    has every configuration at the first seeds."""
    check_clients(cfg)
    metered = grid if isinstance(grid, MeteredGrid) else MeteredGrid(grid)
    if hasattr(metered.inner, "pull_interval"):  # InMemoryGrid polls every 0.1 s by default
        setattr(metered.inner, "pull_interval", 0.05)  # noqa: B010
    specs, _ = plan(cfg)
    pairs = codec_pairs(specs)
    if not metered.partition_of:
        metered.map_partitions(cfg.clients, content=warm_up_content(cfg, pairs))
    methods.warm_up(pairs, np.linspace(-1.0, 1.0, 1 << 12, dtype=np.float32))
    results = []
    for seed in cfg.seeds:
        for spec in specs:
            reset_clients(metered)
            res = run_one(metered, cfg, spec.method, spec.bits, seed, on_round, spec=spec)
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
