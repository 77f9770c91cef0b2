"""The ClientApp: local training on one shard of the task, update compressed by the mod.

Everything the client needs (task and its options, data split, optimiser settings, run
seed) arrives in the train message's ConfigRecord, so one ClientApp serves every
configuration of a sweep and every task. The client trains and returns full float32
weights; ``strategies.compression_mod`` turns the reply into one compressed blob of the
update before it leaves the node, and :func:`simulations.metering.metering_mod` (outermost)
measures the CPU seconds of the whole call, so that those of compression can be told apart
from local training.
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from strategies import compression_mod

from . import methods, tasks
from .metering import KEY_TRAIN_CPU, metering_mod
from .tasks.base import Data, Task, TrainSettings, scheduled_lr

app = ClientApp(mods=[metering_mod, compression_mod])


def _one_thread() -> None:
    """One torch thread per ClientApp call: the actors already use every core. Set on every
    call: Ray may run an actor's calls on different threads, and the setting is per thread."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


_MODELS: dict[int, torch.nn.Module] = {}


def _get(cfg: ConfigRecord, key: str, default: Any) -> Any:
    return cfg[key] if key in cfg else default


def _task(cfg: ConfigRecord) -> Task:
    options = json.loads(str(_get(cfg, "task-options", "{}")))
    return tasks.load(str(_get(cfg, "task", "mnist1d")), options)


def _model(task: Task, arrays: ArrayRecord) -> torch.nn.Module:
    """This process's model of ``task`` (built once), loaded with ``arrays``."""
    if id(task) not in _MODELS:
        _MODELS[id(task)] = tasks.build_model(task)
    model = _MODELS[id(task)]
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


def _shard(task: Task, cfg: ConfigRecord, context: Context) -> Data:
    return task.client_data(int(context.node_config["partition-id"]),
                            int(context.node_config["num-partitions"]),
                            alpha=float(_get(cfg, "alpha", 0.5)),
                            seed=int(_get(cfg, "data-seed", 0)))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the global weights, train locally, reply with weights and ``num-examples``."""
    cpu = time.process_time()
    _one_thread()
    cfg = msg.content["config"]
    assert isinstance(cfg, ConfigRecord)
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    task = _task(cfg)
    model = _model(task, arrays)
    data = _shard(task, cfg, context)
    pid = int(context.node_config["partition-id"])
    rnd = int(_get(cfg, "server-round", 0))
    seed = int(_get(cfg, "seed", 0))
    lr = scheduled_lr(float(_get(cfg, "lr", 0.005)), str(_get(cfg, "lr-schedule", "constant")),
                      rnd, int(_get(cfg, "rounds", 1)))
    settings = TrainSettings(
        epochs=int(_get(cfg, "local-epochs", 1)), lr=lr,
        batch_size=int(_get(cfg, "batch-size", 32)), seed=(seed * 1_000_003 + rnd * 1009 + pid)
        % 2**63, optimizer=str(_get(cfg, "optimizer", "adam")),
        momentum=float(_get(cfg, "momentum", 0.9)))
    loss = task.train(model, data, settings)
    weights = ArrayRecord(model.state_dict())
    reply = RecordDict({
        "arrays": weights,
        "metrics": MetricRecord({"train_loss": loss, "num-examples": len(data),
                                 KEY_TRAIN_CPU: time.process_time() - cpu}),
    })
    return Message(content=reply, reply_to=msg)


_WARM: set[str] = set()


def _warm_up(cfg: ConfigRecord, context: Context) -> None:
    """Once per process and configuration: load the task and this node's shard, take one
    training step, encode and decode the model with every (method, bits) of the sweep, so
    that one-off costs (data loading, torch and kernel warm-up) stay out of the measured
    rounds."""
    key = json.dumps({k: cfg[k] for k in ("task", "task-options", "warm-up")}, default=str)
    if key in _WARM:
        return
    _one_thread()
    task = _task(cfg)
    model = tasks.build_model(task)
    data = _shard(task, cfg, context)
    few = Data(data.x[:2], data.y[:2])
    task.train(model, few, TrainSettings(epochs=1, lr=1e-9, batch_size=2, seed=0,
                                         optimizer=str(_get(cfg, "optimizer", "adam"))))
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    pairs = [(m, float(b)) for m, _, b in (p.partition(":") for p in
                                         str(cfg["warm-up"]).split(";") if p)]
    methods.warm_up(pairs, flat)
    _WARM.add(key)


#: Prefix of everything fedhd keeps in a node's Context.state (error-feedback residuals,
#: powersgd warm starts, the downlink's public model).
STATE_PREFIX = "fedhd."


def forget_state(context: Context) -> list[str]:
    """Drop what fedhd keeps in this node's state between rounds; the keys dropped."""
    keys = [k for k in list(context.state.keys()) if k.startswith(STATE_PREFIX)]
    for key in keys:
        del context.state[key]
    return keys


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report this node's partition id (the ServerApp orders nodes by it, so that seeded
    client sampling picks the same data shards in every run); warm up first if asked; with
    ``reset`` in the content, forget fedhd's per-node state first (a new run begins: no
    residual or warm start of the previous configuration carries over)."""
    if msg.has_content() and "reset" in msg.content:
        forget_state(context)
    if msg.has_content() and "warm-up" in msg.content:
        cfg = msg.content["warm-up"]
        assert isinstance(cfg, ConfigRecord)
        _warm_up(cfg, context)
    return Message(content=RecordDict({"partition": MetricRecord(
        {"partition-id": int(context.node_config["partition-id"]),
         "num-partitions": int(context.node_config["num-partitions"])})}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global weights on this client's slice of the task's test set."""
    _one_thread()
    cfg = msg.content["config"]
    assert isinstance(cfg, ConfigRecord)
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    task = _task(cfg)
    model = _model(task, arrays)
    pid = int(context.node_config["partition-id"])
    n = int(context.node_config["num-partitions"])
    test = task.test_data(n, seed=int(_get(cfg, "data-seed", 0)))
    part = Data(test.x[pid::n], test.y[pid::n])
    loss, acc = task.evaluate(model, part)
    reply = RecordDict({"metrics": MetricRecord(
        {"eval_loss": loss, "eval_acc": acc, "num-examples": len(part)})})
    return Message(content=reply, reply_to=msg)
