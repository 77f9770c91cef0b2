"""The ClientApp: local training on one Dirichlet shard, update compressed by the mod.

Everything the client needs (task, data split, optimiser settings, run seed) arrives in the
train message's ConfigRecord, so one ClientApp serves every configuration of a sweep. The
client trains and returns full float32 weights; ``strategies.compression_mod`` turns the
reply into one compressed blob of the update before it leaves the node.
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from strategies import compression_mod

from . import task as T

app = ClientApp(mods=[compression_mod])

def _one_thread() -> None:
    """One torch thread per ClientApp call: the actors already use every core. Set on every
    call: Ray may run an actor's calls on different threads, and the setting is per thread."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


_MODELS: dict[str, torch.nn.Module] = {}


def _model(task: str, arrays: ArrayRecord) -> torch.nn.Module:
    """This process's model of ``task`` (built once), loaded with ``arrays``."""
    if task not in _MODELS:
        _MODELS[task] = T.make_model(task)
    model = _MODELS[task]
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


def _get(cfg: ConfigRecord, key: str, default: Any) -> Any:
    return cfg[key] if key in cfg else default


def _shard(cfg: ConfigRecord, context: Context) -> tuple[Any, Any]:
    pid = int(context.node_config["partition-id"])
    n = int(context.node_config["num-partitions"])
    return T.client_data(str(_get(cfg, "task", "mnist1d")), int(_get(cfg, "num-samples", 5000)),
                         pid, n, float(_get(cfg, "alpha", 0.5)), int(_get(cfg, "data-seed", 0)))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the global weights, train locally, reply with weights and ``num-examples``."""
    _one_thread()
    cfg = msg.content["config"]
    assert isinstance(cfg, ConfigRecord)
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    model = _model(str(_get(cfg, "task", "mnist1d")), arrays)
    x, y = _shard(cfg, context)
    pid = int(context.node_config["partition-id"])
    rnd = int(_get(cfg, "server-round", 0))
    seed = int(_get(cfg, "seed", 0))
    lr = T.scheduled_lr(float(_get(cfg, "lr", 0.005)), str(_get(cfg, "lr-schedule", "constant")),
                        rnd, int(_get(cfg, "rounds", 1)))
    loss = T.train(model, x, y, epochs=int(_get(cfg, "local-epochs", 1)),
                   lr=lr, batch_size=int(_get(cfg, "batch-size", 32)),
                   optimizer=str(_get(cfg, "optimizer", "adam")),
                   momentum=float(_get(cfg, "momentum", 0.9)),
                   seed=(seed * 1_000_003 + rnd * 1009 + pid) % 2**63)
    reply = RecordDict({
        "arrays": ArrayRecord(model.state_dict()),
        "metrics": MetricRecord({"train_loss": loss, "num-examples": len(y)}),
    })
    return Message(content=reply, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report this node's partition id (the ServerApp orders nodes by it, so that seeded
    client sampling picks the same data shards in every run)."""
    return Message(content=RecordDict({"partition": MetricRecord(
        {"partition-id": int(context.node_config["partition-id"]),
         "num-partitions": int(context.node_config["num-partitions"])})}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global weights on this client's slice of the test set."""
    _one_thread()
    cfg = msg.content["config"]
    assert isinstance(cfg, ConfigRecord)
    task = str(_get(cfg, "task", "mnist1d"))
    arrays = msg.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    model = _model(task, arrays)
    data = T.load_data(task, int(_get(cfg, "num-samples", 5000)))
    pid = int(context.node_config["partition-id"])
    n = int(context.node_config["num-partitions"])
    xs, ys = data.x_test[pid::n], data.y_test[pid::n]
    loss, acc = T.evaluate(model, xs, ys)
    reply = RecordDict({"metrics": MetricRecord(
        {"eval_loss": loss, "eval_acc": acc, "num-examples": len(ys)})})
    return Message(content=reply, reply_to=msg)
