"""Data, model and local training for the simulations.

Two tasks, both generated or bundled locally (no downloads):

- ``mnist1d``: MNIST-1D (``mnist1d.data.make_dataset``), 40-sample 1-D signals of the ten
  digits, classified by a small 1-D CNN (:class:`CNN1D`, ~51k parameters).
- ``digits``: scikit-learn's bundled 8x8 digits, classified by an MLP (:class:`MLP`).

Each client's shard comes from a Dirichlet(alpha) label split of the training set
(:func:`dirichlet_partition`), a pure function of (labels, clients, alpha, seed), so every
process (driver, Ray actors) computes the same shards without shipping data around.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

TASKS = ("mnist1d", "digits")


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays of one task (float32 features, int64 labels)."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _cache_path(task: str, num_samples: int) -> Path:
    return Path(tempfile.gettempdir()) / "fedhd-simulations" / f"{task}-{num_samples}-v1.npz"


@lru_cache(maxsize=4)
def load_data(task: str, num_samples: int = 5000) -> Dataset:
    """The task's data, generated deterministically.

    Cached per process and, for MNIST-1D (whose generation takes seconds), in a file under
    the temp folder, so the Ray actors of a simulation load what the driver generated.
    """
    if task == "mnist1d":
        path = _cache_path(task, num_samples)
        try:
            with np.load(path) as f:
                return Dataset(f["x"], f["y"], f["x_test"], f["y_test"])
        except (OSError, KeyError, ValueError):
            pass
        data = _generate(task, num_samples)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, x=data.x, y=data.y, x_test=data.x_test, y_test=data.y_test)
            os.replace(tmp, path)
        except OSError:
            pass
        return data
    return _generate(task, num_samples)


def _generate(task: str, num_samples: int) -> Dataset:
    if task == "mnist1d":
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples = int(num_samples)
        import random

        state = np.random.get_state()  # noqa: NPY002  (make_dataset reseeds the globals)

        pystate = random.getstate()
        try:
            data = make_dataset(args)
        finally:
            np.random.set_state(state)  # noqa: NPY002
            random.setstate(pystate)
        return Dataset(
            data["x"].astype(np.float32)[:, None, :], data["y"].astype(np.int64),
            data["x_test"].astype(np.float32)[:, None, :], data["y_test"].astype(np.int64),
        )
    if task == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.data / 16.0).astype(np.float32)
        y = d.target.astype(np.int64)
        perm = np.random.default_rng(0).permutation(len(y))
        x, y = x[perm], y[perm]
        split = int(0.8 * len(y))
        mean, std = x[:split].mean(0), x[:split].std(0) + 1e-3
        x = (x - mean) / std
        return Dataset(x[:split], y[:split], x[split:], y[split:])
    raise ValueError(f"unknown task {task!r}; known: {TASKS}")


@lru_cache(maxsize=16)
def _partition(task: str, num_samples: int, clients: int, alpha: float,
               seed: int) -> tuple[np.ndarray, ...]:
    return tuple(dirichlet_partition(load_data(task, num_samples).y, clients, alpha, seed))


def dirichlet_partition(labels: np.ndarray, clients: int, alpha: float, seed: int,
                        min_size: int = 10) -> list[np.ndarray]:
    """Split sample indices over ``clients`` with per-class Dirichlet(alpha) proportions.

    The usual non-IID benchmark split: for each class, a Dirichlet(alpha) draw decides which
    fraction of that class every client receives. Redrawn until every client holds at least
    ``min_size`` samples. Deterministic in ``seed``.
    """
    if clients < 1:
        raise ValueError("clients must be >= 1")
    if len(labels) < clients * min_size:
        raise ValueError(f"{len(labels)} samples cannot give {clients} clients {min_size} each")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(1000):
        shards: list[list[int]] = [[] for _ in range(clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            p = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for shard, part in zip(shards, np.split(idx, cuts)):
                shard.extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]
    raise RuntimeError("could not draw a Dirichlet partition with min_size samples per client")


def client_data(task: str, num_samples: int, partition_id: int, clients: int, alpha: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y) shard of one client."""
    data = load_data(task, num_samples)
    idx = _partition(task, num_samples, clients, float(alpha), seed)[partition_id]
    return data.x[idx], data.y[idx]


class CNN1D(nn.Module):
    """1-D CNN for MNIST-1D (input ``(B, 1, 40)``), ~106k parameters.

    Three conv layers with max-pooling and a global max-pool (the translation invariance
    MNIST-1D rewards: ~90% test accuracy after ~200 centralised Adam steps), then an MLP
    head that holds most of the parameters at little compute.
    """

    def __init__(self, classes: int = 10, hidden: int = 512):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool1d(1),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(128, hidden), nn.ReLU(), nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    """Two-hidden-layer MLP for the 64-feature sklearn digits, ~25k parameters."""

    def __init__(self, features: int = 64, hidden: int = 128, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_model(task: str, seed: int = 0) -> nn.Module:
    """A freshly initialised model of the task (initialisation fixed by ``seed``)."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if task == "mnist1d":
            return CNN1D()
        if task == "digits":
            return MLP()
    finally:
        torch.random.set_rng_state(gen_state)
    raise ValueError(f"unknown task {task!r}; known: {TASKS}")


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


LR_SCHEDULES = ("constant", "cosine")


def scheduled_lr(lr: float, schedule: str, server_round: int, rounds: int) -> float:
    """The local learning rate of round ``server_round`` (1-based) of ``rounds``.

    ``cosine`` decays from ``lr`` towards 0 over the run, which lets the global model settle
    in the last rounds instead of jumping with each round's sample of non-IID clients.
    """
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        t = min(max(server_round - 1, 0), max(rounds, 1)) / max(rounds, 1)
        return lr * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {schedule!r}")


def make_optimizer(name: str, params: Any, lr: float, momentum: float) -> torch.optim.Optimizer:
    if name == "adam":
        try:  # the fused CPU kernel saves ~1 ms a step on this small model
            return torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float,
          batch_size: int, seed: int, optimizer: str = "adam", momentum: float = 0.9) -> float:
    """Local training for ``epochs`` passes with a fresh optimizer (Adam, or SGD with
    momentum); returns the mean training loss."""
    model.train()
    opt = make_optimizer(optimizer, model.parameters(), lr, momentum)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for _ in range(max(1, epochs)):
        perm = torch.randperm(len(yt), generator=gen)
        for start in range(0, len(yt), batch_size):
            b = perm[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[b]), yt[b])
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
            count += len(b)
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray,
             batch_size: int = 1024) -> tuple[float, float]:
    """(loss, accuracy) of the model on (x, y)."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    loss, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb = torch.from_numpy(x[start:start + batch_size])
        yb = torch.from_numpy(y[start:start + batch_size])
        out = model(xb)
        loss += float(loss_fn(out, yb))
        correct += int((out.argmax(1) == yb).sum())
    return loss / len(y), correct / len(y)
