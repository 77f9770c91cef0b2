"""A small federated task for the demos, tests and figures of ``strategies``.

An MLP 64-256-256-10 (85,002 float parameters; with ``batchnorm=True`` one BatchNorm
layer adds 1,024 floats and the int64 ``num_batches_tracked``) on scikit-learn's bundled
8x8 digits (1,797 images, no download), split IID across the nodes. ``make_client_app``
builds the ClientApp a Flower user would write; compression is the one line
``mods=[compression_mod]``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from strategies import compression_mod

NUM_CLASSES = 10


class Net(nn.Module):
    """64 -> 256 (optional BatchNorm, ReLU) -> 256 (ReLU) -> 10."""

    def __init__(self, batchnorm: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 256)
        self.bn1 = nn.BatchNorm1d(256) if batchnorm else nn.Identity()
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.fc1(x)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def net_for(arrays: ArrayRecord) -> Net:
    """A Net shaped like ``arrays`` (with BatchNorm if they hold its weights), loaded."""
    net = Net(batchnorm="bn1.weight" in arrays)
    net.load_state_dict(arrays.to_torch_state_dict())
    return net


def init_arrays(seed: int = 0, batchnorm: bool = False) -> ArrayRecord:
    """The initial global model as an ArrayRecord."""
    torch.manual_seed(seed)
    return ArrayRecord(Net(batchnorm).state_dict())


def _digits() -> np.ndarray:
    """The 1,797 x 65 digits table scikit-learn ships (pixels, then the label), read
    without importing scikit-learn (seconds faster in every ClientApp process)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "datasets/data/digits.csv.gz"
        if path.exists():
            return np.loadtxt(path, delimiter=",")
    from sklearn.datasets import load_digits  # pragma: no cover - other layouts

    digits = load_digits()  # pragma: no cover
    return np.column_stack([digits.data, digits.target])  # pragma: no cover


@lru_cache(maxsize=2)
def load_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): digits scaled to [0, 1], 80/20 split."""
    data = _digits()
    x = (data[:, :64] / 16.0).astype(np.float32)
    y = data[:, 64].astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_test = len(y) // 5
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def partition(partition_id: int, num_partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """The IID shard ``partition_id`` of the training set."""
    x, y, _, _ = load_data()
    idx = np.arange(len(y))[partition_id::num_partitions]
    return x[idx], y[idx]


def train(net: Net, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, seed: int,
          batch_size: int = 32, proximal_mu: float = 0.0) -> float:
    """Local SGD; returns the mean training loss of the last epoch."""
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    global_params = [p.detach().clone() for p in net.parameters()]
    net.train()
    loss_sum, count = 0.0, 0
    for _ in range(epochs):
        loss_sum, count = 0.0, 0
        order = torch.randperm(len(yt), generator=gen)
        for start in range(0, len(yt), batch_size):
            batch = order[start:start + batch_size]
            if len(batch) < 2:  # BatchNorm needs two samples in train mode
                continue
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(xt[batch]), yt[batch])
            if proximal_mu > 0:
                pairs = zip(net.parameters(), global_params, strict=True)
                loss = loss + proximal_mu / 2 * sum(((p - g) ** 2).sum() for p, g in pairs)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(batch)
            count += len(batch)
    return loss_sum / max(count, 1)


@torch.no_grad()
def evaluate(net: Net, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(loss, accuracy)."""
    net.eval()
    logits = net(torch.from_numpy(x))
    yt = torch.from_numpy(y)
    loss = float(nn.functional.cross_entropy(logits, yt))
    acc = float((logits.argmax(1) == yt).float().mean())
    return loss, acc


def centralized_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """Server-side evaluation of the global model on the held-out test set."""
    net = net_for(arrays)
    _, _, x, y = load_data()
    loss, acc = evaluate(net, x, y)
    return MetricRecord({"loss": loss, "accuracy": acc})


def make_client_app(compress: bool = True) -> ClientApp:
    """The ClientApp of this task; ``compress`` adds ``compression_mod``."""
    torch.set_num_threads(1)
    app = ClientApp(mods=[compression_mod] if compress else [])

    @app.train()
    def train_fn(msg: Message, context: Context) -> Message:
        net = net_for(msg.content.array_records["arrays"])
        pid = int(context.node_config["partition-id"])
        n = int(context.node_config["num-partitions"])
        x, y = partition(pid, n)
        config = msg.content["config"]
        server_round = int(config.get("server-round", 0))  # type: ignore[arg-type]
        loss = train(net, x, y, epochs=int(context.run_config.get("local-epochs", 2)),
                     lr=float(context.run_config.get("lr", 0.1)),
                     seed=1000 * server_round + pid,
                     proximal_mu=float(config.get("proximal-mu", 0.0)))  # type: ignore[arg-type]
        content = RecordDict({
            "arrays": ArrayRecord(net.state_dict()),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": len(y)}),
        })
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate_fn(msg: Message, context: Context) -> Message:
        net = net_for(msg.content.array_records["arrays"])
        _, _, x, y = load_data()
        pid = int(context.node_config["partition-id"])
        n = int(context.node_config["num-partitions"])
        xs, ys = x[pid::n], y[pid::n]
        loss, acc = evaluate(net, xs, ys)
        content = RecordDict({"metrics": MetricRecord(
            {"eval_loss": loss, "eval_acc": acc, "num-examples": len(ys)})})
        return Message(content, reply_to=msg)

    return app
