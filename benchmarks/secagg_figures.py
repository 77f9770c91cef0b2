"""Figures of secure aggregation (``strategies.secagg``): wire bits, accuracy, seconds, and
a round with dropouts.

    python -m benchmarks.secagg_figures                    # ~3-4 minutes on 2 shared cores
    python -m benchmarks.secagg_figures --md results/secagg.md --json results/secagg.json

Everything runs in-process through ``LocalGrid`` (messages deflated and inflated as the
transport does; no Ray), on ``benchmarks.digits_task``'s 85,002-parameter MLP except 2b:

1. bits per coordinate on the wire of a masked-input reply at K = 10 and 100 clients per
   round (and of everything a client sends in the round's four stages), measured with
   ``strategies.message_wire_bytes`` like every uplink figure of this repository, against
   the masked-input reply of Flower's own SecAgg+ (``secaggplus_mod``: int64-held values
   mod 2**32 per coordinate), built with Flower's own quantize / mask / mod helpers at its
   ``SecAggPlusWorkflow`` defaults;
2. accuracy after a few rounds, 10 clients, against plain FedAvg;
2b. final accuracy on the simulations task ``mnist1d`` (the 106,378-parameter 1-D CNN) in
   the ``make demo`` setting of ``simulations/default.toml`` (20 clients, 8 per round, 15
   rounds), seeds 0 and 1: plain FedAvg against SecAggFedAvg at b = 2 and 4. The clients
   run the simulations' own train function (``simulations.client_app.train``, which reads
   the task and its settings from the train config of ``simulations.server_app.
   train_config``) behind ``[secagg_mod, compression_mod]``; Fashion-MNIST is left out
   (hours on 2 shared cores; ``task_accuracy("fmnist", ...)`` runs it where cores allow);
3. server and client seconds per round spent in the protocol (clients: the mod's time
   outside the app's training; server: outside the waits for the clients);
4. a round where 20 % of the sampled clients drop after sending their masked input, and one
   where 20 % drop before, checked against the plain integer sum of the clipped, quantized
   updates.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from fedhd import modular
from fedhd.rng import modular_dither_seed
from strategies import compression_mod, message_wire_bytes
from strategies import constants as C
from strategies.secagg import SecAggFedAvg, secagg_mod
from strategies.secagg.params import split_keys
from strategies.transport import as_sent

from .localgrid import LocalGrid, transport

DropRule = Callable[[str, int], bool]
PayloadHook = Callable[[str, int, bytes], bytes]


def secagg_stage(msg: Message) -> str | None:
    """The secure-aggregation stage a message carries, if any."""
    if not msg.has_content():
        return None
    rec = msg.content.config_records.get(C.SECAGG_RECORD)
    stage = None if rec is None else rec.get(C.SECAGG_KEY_STAGE)
    return stage if isinstance(stage, str) else None


class DropoutGrid(LocalGrid):
    """A ``LocalGrid`` whose nodes can drop out of chosen protocol stages and whose
    server -> client protocol bytes can be altered in flight.

    ``drop(stage, node_id)``: True makes that node vanish for that stage's message (no
    reply, as a timeout gives the server). ``tamper(stage, node_id, payload)`` returns the
    payload to deliver instead. ``delivered`` keeps every message as the nodes received it.
    """

    def __init__(self, client_app: ClientApp, num_nodes: int, *, drop: DropRule | None = None,
                 tamper: PayloadHook | None = None, **kwargs: Any):
        super().__init__(client_app, num_nodes, **kwargs)
        self.drop, self.tamper = drop, tamper
        self.delivered: list[Message] = []
        self._gone = 0

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids: list[str] = []
        for msg in messages:
            stage, node = secagg_stage(msg), int(msg.metadata.dst_node_id)
            if stage is not None and self.drop is not None and self.drop(stage, node):
                self._gone += 1
                ids.append(f"dropped-{self._gone}")
                continue
            if stage is not None and self.tamper is not None:
                rec = msg.content.config_records[C.SECAGG_RECORD]
                payload = rec[C.SECAGG_KEY_PAYLOAD]
                assert isinstance(payload, bytes)
                content = RecordDict(dict(msg.content.items()))
                content[C.SECAGG_RECORD] = ConfigRecord({
                    **rec, C.SECAGG_KEY_PAYLOAD: self.tamper(stage, node, payload)})
                msg = Message(content=content, dst_node_id=node,
                              message_type=msg.metadata.message_type,
                              group_id=msg.metadata.group_id)
            self.delivered.append(transport(msg))
            ids.extend(super().push_messages([msg]))
        return ids


def digits_app(mods: list | None = None) -> ClientApp:
    """``benchmarks.digits_task``'s ClientApp, unchanged, with the given mods (default:
    secure aggregation and compression, ``[secagg_mod, compression_mod]``)."""
    import torch

    from . import digits_task as T

    torch.set_num_threads(1)
    app = ClientApp(mods=[secagg_mod, compression_mod] if mods is None else mods)

    @app.train()
    def train_fn(msg: Message, context: Context) -> Message:
        net = T.net_for(msg.content.array_records["arrays"])
        pid = int(context.node_config["partition-id"])
        n = int(context.node_config["num-partitions"])
        x, y = T.partition(pid, n)
        server_round = int(msg.content["config"].get("server-round", 0))  # type: ignore
        loss = T.train(net, x, y, epochs=int(context.run_config.get("local-epochs", 2)),
                       lr=float(context.run_config.get("lr", 0.1)),
                       seed=1000 * server_round + pid)
        return Message(RecordDict({"arrays": ArrayRecord(net.state_dict()),
                                   "metrics": MetricRecord({"train_loss": loss,
                                                            "num-examples": len(y)})}),
                       reply_to=msg)

    return app


def plain_code_sum(grid: DropoutGrid, strategy: SecAggFedAvg, members: Iterable[int],
                   plain_app: ClientApp) -> np.ndarray:
    """sum_k code_k mod 2**m of the given nodes: ``plain_app`` (the same app without mods)
    re-runs on the train messages the nodes received (``grid.delivered``) and each update
    is coded as the mod codes it. The reference of the unmasked sum."""
    st = strategy.secagg.round
    assert st is not None and st.spec is not None
    spec = st.spec
    acc = np.zeros(spec.padded, spec.dtype)
    float_keys, _ = split_keys(st.arrays)
    members = set(members)
    for msg in grid.delivered:
        node = int(msg.metadata.dst_node_id)
        if secagg_stage(msg) != C.SECAGG_STAGE_MASKED_INPUT or node not in members:
            continue
        # the app alone (no mods) on the same message reproduces the update exactly
        content = RecordDict({k: v for k, v in msg.content.items() if k != C.SECAGG_RECORD})
        bare = Message(content=content, dst_node_id=node,
                       message_type=msg.metadata.message_type)
        bare = transport(bare)
        ctx = grid.contexts[node]
        reply = plain_app(bare, ctx)
        new = {k: a.numpy() for k, a in reply.content.array_records["arrays"].items()}
        update = np.concatenate([(new[k].astype(np.float64) - st.arrays[k].astype(np.float64))
                                 .ravel() for k in float_keys]).astype(np.float32)
        acc += modular.encode(update, spec, modular_dither_seed(spec.seed, node)).words
    acc &= spec.dtype.type(spec.mask)
    return acc


def flower_secaggplus_masked_bytes(arrays: ArrayRecord, train_msg: Message) -> int:
    """Wire bytes of the masked-input reply Flower's ``secaggplus_mod`` sends for these
    arrays, at ``SecAggPlusWorkflow``'s defaults (clipping range 8, 2**22 quantization
    levels, modulus 2**32), built with Flower's own helpers as the mod builds it."""
    from flwr.common import ndarray_to_bytes
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_combine,
        parameters_addition,
        parameters_mod,
    )
    from flwr.common.secure_aggregation.quantization import quantize
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    params = [a.numpy() for a in arrays.values()]
    q = factor_combine(1, quantize(params, 8.0, 1 << 22))
    masked = parameters_mod(parameters_addition(
        q, pseudo_rand_gen(bytes(32), 1 << 32, [a.shape for a in q])), 1 << 32)
    content = RecordDict({"fitres.parameters": ArrayRecord(),
                          "fitres.metrics": MetricRecord({"num-examples": 144}),
                          RECORD_KEY_CONFIGS: ConfigRecord(
                              {Key.MASKED_PARAMETERS: [ndarray_to_bytes(a) for a in masked]},
                              False)})
    return message_wire_bytes(as_sent(transport(Message(content, reply_to=train_msg))))


def _quiet() -> None:
    from flwr.common.logger import FLOWER_LOGGER

    FLOWER_LOGGER.setLevel("ERROR")


def _client_seconds(grid: LocalGrid, nodes: Iterable[int]) -> float:
    per = []
    for n in nodes:
        rec = grid.contexts[n].state.metric_records.get(C.SECAGG_TIMING_RECORD)
        if rec is not None:
            per.append(sum(float(v) for v in rec.values() if isinstance(v, (int, float))))
    return float(np.mean(per)) if per else float("nan")


def wire_and_time(num_nodes: int, bits: int, clip_norm: float = 2.0, seed: int = 0,
                  num_shares: int | None = None) -> dict:
    """One round at K = num_nodes: wire bytes and seconds (``num_shares``: SecAgg+ ring)."""
    from .digits_task import init_arrays

    grid = DropoutGrid(digits_app(), num_nodes, seed=seed)
    strategy = SecAggFedAvg(clip_norm=clip_norm, bits=bits, fraction_evaluate=0.0,
                            min_available_nodes=num_nodes, min_train_nodes=num_nodes,
                            num_shares=num_shares)
    arrays = init_arrays(seed)
    t = time.perf_counter()
    result = strategy.start(grid, arrays, num_rounds=1)
    wall = time.perf_counter() - t
    m = result.train_metrics_clientapp[1]
    st = strategy.secagg.round
    assert st is not None and st.spec is not None and st.aggregate is not None
    train_msg = next(msg for msg in grid.delivered
                     if secagg_stage(msg) == C.SECAGG_STAGE_MASKED_INPUT)
    flower = flower_secaggplus_masked_bytes(arrays, train_msg)
    return {
        "K": num_nodes, "b": bits, "m": st.spec.bits, "d": st.d, "padded": st.spec.padded,
        "graph": "complete" if num_shares is None else f"ring of {num_shares}",
        "threshold": st.session.threshold if st.session else 0,
        "masked_reply_bytes": float(m[C.METRIC_UPLINK_BYTES]),  # type: ignore[arg-type]
        "bits_per_coordinate": float(m[C.METRIC_SECAGG_BITS_PER_COORD]),  # type: ignore
        "all_stages_bits_per_coordinate": 8 * float(
            m[C.METRIC_SECAGG_UPLINK_ALL_STAGES]) / st.d,  # type: ignore[arg-type]
        "flower_secaggplus_bytes": flower,
        "flower_secaggplus_bits_per_coordinate": 8 * flower / st.d,
        "server_seconds": float(m[C.METRIC_SECAGG_SERVER_SECONDS]),  # type: ignore
        "client_seconds": _client_seconds(grid, st.aggregate.survivors),
        "round_wall_seconds": wall,
        "wrap_bound": modular.wrap_probability_bound(st.spec, num_nodes),
        "noise_energy_of_mean": num_nodes * modular.noise_energy(st.spec) / num_nodes**2,
    }


def accuracy(num_nodes: int = 10, rounds: int = 5, bits_list: Iterable[int] = (2, 4),
             clip_norm: float = 2.0, seed: int = 0) -> dict:
    """Accuracy per round of FedAvg and SecAggFedAvg at each b."""
    from .digits_task import centralized_evaluate, init_arrays

    common: dict[str, Any] = dict(fraction_evaluate=0.0, min_available_nodes=num_nodes,
                                  min_train_nodes=num_nodes)
    out: dict[str, Any] = {}
    runs: list[tuple[str, Any]] = [("fedavg", FedAvg(**common))]
    runs += [(f"secagg-b{b}", SecAggFedAvg(clip_norm=clip_norm, bits=b, **common))
             for b in bits_list]
    start = np.concatenate([a.numpy().astype(np.float64).ravel()
                            for _, a in sorted(init_arrays(seed).items())])
    ref = start
    for name, strategy in runs:
        grid = DropoutGrid(digits_app(), num_nodes, seed=seed)
        t = time.perf_counter()
        result = strategy.start(grid, init_arrays(seed), num_rounds=rounds,
                                evaluate_fn=centralized_evaluate)
        acc = [float(result.evaluate_metrics_serverapp[r]["accuracy"])
               for r in range(rounds + 1)]
        entry: dict[str, Any] = {"accuracy": acc, "seconds": time.perf_counter() - t}
        final = np.concatenate([a.numpy().astype(np.float64).ravel()
                                for _, a in sorted(result.arrays.items())])
        if name == "fedavg":  # the first run
            ref = final
        entry["distance_to_fedavg"] = float(np.linalg.norm(final - ref)
                                            / np.linalg.norm(ref - start))
        if name != "fedavg":
            tm = result.train_metrics_clientapp
            entry["m"] = int(tm[1][C.METRIC_SECAGG_MODULUS_BITS])
            entry["clipped"] = [int(tm[r][C.METRIC_SECAGG_CLIPPED])
                                for r in range(1, rounds + 1)]
            entry["guard_band"] = [int(tm[r][C.METRIC_SECAGG_GUARD])
                                   for r in range(1, rounds + 1)]
        out[name] = entry
    return out


def sim_app(mods: list | None = None) -> ClientApp:
    """The simulations' ClientApp train function (``simulations.client_app.train``:
    task, shard, optimiser and seed from the train config), unchanged, registered on a
    ClientApp with the given mods (default ``[secagg_mod, compression_mod]``; the sim's
    own app has ``[metering_mod, compression_mod]``)."""
    from simulations import client_app as sim

    app = ClientApp(mods=[secagg_mod, compression_mod] if mods is None else mods)
    app.train()(sim.train)
    return app


class _MeasuredFedAvg(FedAvg):
    """FedAvg that records, per round, the L2 norm of each client's update (reply minus
    the global arrays sent) and the wire bytes of each reply."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.norms: dict[int, list[float]] = {}
        self.reply_bytes: list[int] = []
        self._sent: dict[str, np.ndarray] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Any) -> Iterable[Message]:
        self._sent = {k: a.numpy().astype(np.float64) for k, a in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        norms = []
        for r in replies:
            new = r.content.array_records["arrays"]
            norms.append(math.sqrt(sum(float(((new[k].numpy().astype(np.float64) - g) ** 2)
                                              .sum()) for k, g in self._sent.items())))
            self.reply_bytes.append(message_wire_bytes(as_sent(r)))
        self.norms[server_round] = norms
        return super().aggregate_train(server_round, replies)


def _number(metrics: MetricRecord, key: str) -> float:
    value = metrics[key]
    assert isinstance(value, (int, float)), key
    return float(value)


def _evaluator(task: Any, model: Any, test: Any) -> Callable[[int, ArrayRecord], MetricRecord]:
    """Central evaluation of the global arrays on ``test`` (``evaluate_fn`` of
    ``Strategy.start``), as ``simulations.server_app.run_one`` evaluates."""
    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = task.evaluate(model, test)
        return MetricRecord({"accuracy": acc, "loss": loss})
    return evaluate_fn


def _spread(values: Iterable[float]) -> dict[str, float]:
    v = np.asarray(list(values), dtype=np.float64)
    return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}


def task_accuracy(task: str = "mnist1d", seeds: Iterable[int] = (0, 1),
                  rounds: int | None = None, bits_list: Iterable[int] = (2, 4),
                  clip_norm: float = 8.0) -> dict:
    """Final accuracy of plain FedAvg and SecAggFedAvg at each b on a simulations task, in
    its sweep setting (``make demo``'s for mnist1d; ``rounds`` overrides), one run per seed
    as ``simulations.server_app.run_one`` sets it up: model init ``build_model(task,
    seed)``, ``train_config(cfg, seed)`` (data split, batches, cosine lr), client sampling
    from ``random.seed(seed)``, central evaluation on ``task.test_data`` every round."""
    import torch

    from simulations.config import default_config, for_task
    from simulations.server_app import train_config
    from simulations.tasks import base as tasks

    torch.set_num_threads(1)
    cfg = for_task(task, default_config())
    if rounds is not None:
        cfg = cfg.replace(rounds=rounds)
    seeds = list(seeds)
    t0 = time.perf_counter()
    spec = tasks.load(cfg.task, cfg.task_options)
    spec.prepare()
    d = tasks.num_params(tasks.build_model(spec, 0))
    common: dict[str, Any] = dict(
        fraction_train=cfg.clients_per_round / cfg.clients, fraction_evaluate=0.0,
        min_train_nodes=cfg.clients_per_round, min_available_nodes=cfg.clients)
    names = ["fedavg"] + [f"secagg-b{b}" for b in bits_list]
    runs: dict[str, dict[str, Any]] = {n: {"accuracy": [], "final": [], "seconds": []}
                                       for n in names}
    norms: dict[int, list[float]] = {}
    for seed in seeds:
        test = spec.test_data(cfg.clients, seed=seed)
        evaluate_fn = _evaluator(spec, tasks.build_model(spec, seed), test)
        for name in names:
            strategy: FedAvg
            if name == "fedavg":
                strategy = _MeasuredFedAvg(**common)
            else:
                strategy = SecAggFedAvg(clip_norm=clip_norm, bits=int(name[len("secagg-b"):]),
                                        seed=seed, **common)
            grid = LocalGrid(sim_app(), cfg.clients, seed=seed)
            random.seed(seed)  # FedAvg samples clients with Python's global `random`
            t = time.perf_counter()
            result = strategy.start(grid, ArrayRecord(tasks.build_model(spec, seed)
                                                      .state_dict()),
                                    num_rounds=cfg.rounds,
                                    train_config=train_config(cfg, seed),
                                    evaluate_fn=evaluate_fn)
            entry = runs[name]
            entry["seconds"].append(time.perf_counter() - t)
            acc = [_number(result.evaluate_metrics_serverapp[r], "accuracy")
                   for r in range(cfg.rounds + 1)]
            entry["accuracy"].append(acc)
            entry["final"].append(acc[-1])
            tm = result.train_metrics_clientapp
            if isinstance(strategy, _MeasuredFedAvg):
                entry.setdefault("reply_bytes", []).extend(strategy.reply_bytes)
                for r, n in strategy.norms.items():
                    norms.setdefault(r, []).extend(n)
            else:
                every = range(1, cfg.rounds + 1)
                entry["m"] = int(_number(tm[1], C.METRIC_SECAGG_MODULUS_BITS))
                entry.setdefault("masked_reply_bytes", []).extend(
                    _number(tm[r], C.METRIC_UPLINK_BYTES) for r in every)
                entry.setdefault("clipped", []).append(
                    [int(_number(tm[r], C.METRIC_SECAGG_CLIPPED)) for r in every])
                entry.setdefault("guard_band", []).append(
                    [int(_number(tm[r], C.METRIC_SECAGG_GUARD)) for r in every])
    for entry in runs.values():
        final = np.asarray(entry["final"])
        entry["mean"] = float(final.mean())
        entry["std"] = float(final.std(ddof=1)) if len(final) > 1 else 0.0
        sent = entry["reply_bytes"] if "reply_bytes" in entry else entry["masked_reply_bytes"]
        entry["bits_per_coordinate"] = 8 * float(np.mean(sent)) / d
        entry.pop("reply_bytes", None)
        entry.pop("masked_reply_bytes", None)
        entry.setdefault("m", 32)
    return {
        "task": cfg.task, "d": d, "clients": cfg.clients,
        "clients_per_round": cfg.clients_per_round, "rounds": cfg.rounds,
        "local_epochs": cfg.local_epochs, "optimizer": cfg.optimizer, "lr": cfg.lr,
        "lr_schedule": cfg.lr_schedule, "alpha": cfg.alpha, "seeds": seeds,
        "clip_norm": clip_norm, "runs": runs,
        "fedavg_update_norms": {"round_1": _spread(norms[1]),
                                f"round_{cfg.rounds}": _spread(norms[cfg.rounds])},
        "seconds": time.perf_counter() - t0,
    }


def dropout_round(num_nodes: int = 10, when: str = C.SECAGG_STAGE_UNMASK,
                  fraction: float = 0.2, bits: int = 4, seed: int = 0) -> dict:
    """One round where ``fraction`` of the clients vanish at stage ``when``; checks the
    unmasked sum against the plain sum of the right clients' codes (exact integers)."""
    from .digits_task import init_arrays

    probe = LocalGrid(ClientApp(), num_nodes, seed=seed)
    gone = set(probe.node_ids[: max(1, round(fraction * num_nodes))])
    grid = DropoutGrid(digits_app(), num_nodes, seed=seed,
                       drop=lambda stage, node: stage == when and node in gone)
    strategy = SecAggFedAvg(clip_norm=2.0, bits=bits, fraction_evaluate=0.0,
                            min_available_nodes=num_nodes, min_train_nodes=num_nodes)
    result = strategy.start(grid, init_arrays(seed), num_rounds=1)
    m = result.train_metrics_clientapp[1]
    st = strategy.secagg.round
    assert st is not None and st.aggregate is not None and st.spec is not None
    in_sum = st.aggregate.survivors
    ref = plain_code_sum(grid, strategy, in_sum, digits_app(mods=[]))
    exact = bool(np.array_equal(ref, st.aggregate.words))
    return {
        "K": num_nodes, "dropped_at": when, "dropped": len(gone),
        "in_sum": len(in_sum), "expected_in_sum": num_nodes - (0 if when ==
                                                              C.SECAGG_STAGE_UNMASK
                                                              else len(gone)),
        "exact_integer_sum": exact,
        "metrics": {k: float(v) for k, v in m.items() if k.startswith(C.PREFIX)},  # type: ignore
    }


def run_all(quick: bool = False) -> dict:
    _quiet()
    t = time.perf_counter()
    wire = [wire_and_time(k, b) for k in (10, 100) for b in (2, 4)] if not quick else \
        [wire_and_time(10, 4)]
    if not quick:
        wire.append(wire_and_time(100, 2, num_shares=21))  # SecAgg+'s sparse graph
    acc = accuracy(rounds=3 if quick else 5)
    task = task_accuracy("mnist1d", seeds=(0,) if quick else (0, 1),
                         rounds=3 if quick else None)
    drops = [dropout_round(when=C.SECAGG_STAGE_UNMASK),
             dropout_round(when=C.SECAGG_STAGE_MASKED_INPUT)]
    return {"wire": wire, "accuracy": acc, "task_accuracy": {"mnist1d": task},
            "not_run": {"fmnist": FMNIST_NOT_RUN}, "dropouts": drops,
            "seconds": time.perf_counter() - t}


FMNIST_NOT_RUN = (
    "not run. Its sweep setting (McMahan CNN, d = 1,663,370; 100 clients, 10 per round, "
    "20 rounds of 1 local epoch over ~600 images each) measured here at ~5 s per client "
    "round (3.2 s for a 400-image shard) and 6.6 s per central evaluation, i.e. ~20 "
    "minutes per run and ~2 hours for FedAvg and b = 2, 4 at 2 seeds on 2 shared cores. "
    "task_accuracy(\"fmnist\", ...) runs it where cores allow (clip_norm to be chosen "
    "from its own FedAvg update norms).")


def _task_markdown(res: dict) -> list[str]:
    lines: list[str] = []
    for name, t in res.get("task_accuracy", {}).items():
        seeds = ", ".join(map(str, t["seeds"]))
        lines += ["", f"## Final accuracy on {name}, against plain FedAvg", "",
                  f"simulations task `{name}` (d = {t['d']:,}), in-process through LocalGrid "
                  "with the simulations' ClientApp train function behind "
                  f"`[secagg_mod, compression_mod]`: {t['clients']} clients, "
                  f"{t['clients_per_round']} per round, {t['rounds']} rounds, "
                  f"{t['local_epochs']} local epochs, {t['optimizer']} lr {t['lr']:g} "
                  f"({t['lr_schedule']}), Dirichlet alpha {t['alpha']:g}; seeds {seeds}; "
                  "accuracy on the task's held-out test set.", "",
                  "| run | m | reply sent, bits/coord | final accuracy per seed | "
                  "mean ± std | clients clipped (all rounds and seeds) |",
                  "|---|---:|---:|---|---:|---:|"]
        for run, e in t["runs"].items():
            label = "FedAvg (float32)" if run == "fedavg" else \
                f"SecAggFedAvg b = {run[len('secagg-b'):]}"
            clipped = sum(map(sum, e["clipped"])) if "clipped" in e else "-"
            mean = f"{100 * e['mean']:.1f}" + (f" ± {100 * e['std']:.1f}"
                                               if len(e["final"]) > 1 else "")
            lines.append(f"| {label} | {e['m']} | {e['bits_per_coordinate']:.2f} | "
                         + " / ".join(f"{100 * a:.1f} %" for a in e["final"])
                         + f" | {mean} % | {clipped} |")
        n = t["fedavg_update_norms"]
        spread = "; ".join(f"{k.replace('_', ' ')}: {v['min']:.2f} / {v['median']:.2f} / "
                           f"{v['max']:.2f}" for k, v in n.items())
        lines += ["", f"SecAggFedAvg: clip_norm = {t['clip_norm']:g}, unweighted mean "
                  "(max_weight=None; FedAvg weights by num-examples). FedAvg's client "
                  f"update norms (min / median / max), {spread}. Std over seeds with "
                  f"ddof = 1. {t['seconds']:.0f} s."]
    for name, why in res.get("not_run", {}).items():
        lines += ["", f"**{name}**: {why}"]
    return lines


def to_markdown(res: dict) -> str:
    lines = ["# Secure aggregation figures", "",
             "`python -m benchmarks.secagg_figures` (in-process LocalGrid, "
             "benchmarks.digits_task, d = 85,002; 2 shared cores).", "",
             "## Bits per coordinate on the wire", "",
             "| K | graph (threshold) | b | m | masked-input reply, bits/coord | all 4 stages, "
             "bits/coord | Flower SecAgg+ masked reply, bits/coord | server s/round | "
             "client s/round |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for w in res["wire"]:
        lines.append(f"| {w['K']} | {w['graph']} ({w['threshold']}) | {w['b']} | {w['m']} | "
                     f"{w['bits_per_coordinate']:.2f} | "
                     f"{w['all_stages_bits_per_coordinate']:.2f} | "
                     f"{w['flower_secaggplus_bits_per_coordinate']:.2f} | "
                     f"{w['server_seconds']:.3f} | {w['client_seconds']:.3f} |")
    lines += ["", "## Accuracy of the global model (held-out 20 %), 10 clients", "",
              "| run | m | " + " | ".join(f"round {r}" for r in
                                          range(len(res["accuracy"]["fedavg"]["accuracy"])))
              + " | final model vs FedAvg's, relative distance |",
              "|---|---:|" + "---:|" * (1 + len(res["accuracy"]["fedavg"]["accuracy"]))]
    for name, e in res["accuracy"].items():
        lines.append(f"| {name} | {e.get('m', 32)} | " + " | ".join(
            f"{100 * a:.2f} %" for a in e["accuracy"]) + f" | {e['distance_to_fedavg']:.3f} |")
    lines += ["", "Relative distance: ||final - FedAvg's final|| / ||FedAvg's final - initial||."]
    lines += _task_markdown(res)
    lines += ["", "## Dropouts (20 % of 10 clients)", "",
              "| dropped at | in the sum | expected | unmasked sum == plain integer sum |",
              "|---|---:|---:|---|"]
    for d in res["dropouts"]:
        lines.append(f"| {d['dropped_at']} | {d['in_sum']} | {d['expected_in_sum']} | "
                     f"{d['exact_integer_sum']} |")
    lines += ["", f"Total {res['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--md", type=Path, default=Path("results/secagg.md"))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--quick", action="store_true",
                   help="K = 10 only, 3 rounds (mnist1d: 3 rounds, seed 0)")
    args = p.parse_args(argv)
    res = run_all(args.quick)
    md = to_markdown(res)
    print(md)
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(md)
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=1, default=float))
    assert all(d["exact_integer_sum"] and d["in_sum"] == d["expected_in_sum"]
               for d in res["dropouts"]), "a dropout round did not aggregate exactly"
    assert math.isfinite(res["seconds"])


if __name__ == "__main__":
    main()
