"""The task interface: data and partition, model factory, local training, evaluation.

A *task* is everything of a federated experiment that is not compression and not Flower:
where the data comes from and how it is split over clients, which model is trained, how a
client trains it locally and how the global model is evaluated. The sweep, the metering,
the link model and the report are the same for every task, so a task of your own gets the
same accuracy-against-bytes figures as the shipped ones::

    python -m simulations --task mypackage.mymodule:MyTask --task-option hidden=64

A task is a subclass of :class:`Task` (see :mod:`simulations.tasks.digits`, the shipped
example written directly against this interface). The framework

- builds it from its *options* (``option_defaults``, overridden by ``--task-option KEY=VALUE``
  or the ``[sweep.task-options]`` table), once per process: in the driver (model
  initialisation, central evaluation) and in every Ray actor that runs ClientApps. It must
  therefore be importable there and deterministic: the same options give the same data,
  split and model in every process, with no data shipped around.
- calls :meth:`Task.prepare` once in the driver before the simulation starts (generate or
  read the data, write caches the actors then read);
- asks :meth:`Task.client_data` for the shard of partition ``i`` of ``n`` on a client, and
  :meth:`Task.test_data` for the held-out set on the server;
- calls :meth:`Task.make_model` under ``torch.manual_seed(seed)`` (see :func:`build_model`),
  so initialisation is fixed by the run's seed;
- calls :meth:`Task.train` on a client every round with that round's :class:`TrainSettings`
  and :meth:`Task.evaluate` on the server after every round.

``train`` and ``evaluate`` have defaults for classification (cross-entropy, minibatches
drawn with a seeded permutation, accuracy of the arg-max), which every shipped task uses.
``sweep_defaults`` lists sweep settings the task is tuned for (clients, rounds, learning
rate, ...); they apply when the task is chosen on the command line, under the user's TOML
and flags.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

#: The shipped tasks: name -> ``module:Class`` (a name of your own: ``--task module:Class``).
BUILTIN: dict[str, str] = {
    "mnist1d": "simulations.tasks.mnist1d:MNIST1D",
    "digits": "simulations.tasks.digits:Digits",
    "fmnist": "simulations.tasks.fmnist:FashionMNIST",
    "shakespeare": "simulations.tasks.shakespeare:Shakespeare",
}

OptionValue = bool | int | float | str


@dataclass(frozen=True)
class Data:
    """Inputs ``x`` and integer targets ``y`` (numpy arrays, ``len(x) == len(y)``).

    ``x`` may be any array the task's model takes batch by batch (float features, uint8
    images, int64 character windows); only ``x[indices]`` is ever taken from it.
    """

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class TrainSettings:
    """What the server asks of one client's local training in one round."""

    epochs: int
    lr: float
    batch_size: int
    seed: int
    optimizer: str = "adam"
    momentum: float = 0.9


class Task(ABC):
    """Base class of a federated task; subclass it and implement the four abstract methods.

    Class attributes
    ----------------
    name : str
        Short name, used in the report.
    option_defaults : Mapping[str, bool | int | float | str]
        The options the task takes, with their defaults; a given value is converted to the
        default's type. Unknown options are an error.
    sweep_defaults : Mapping[str, Any]
        Sweep settings (kebab-case keys of ``simulations/default.toml``) this task is tuned
        for, applied when the task is selected.
    """

    name: ClassVar[str] = ""
    option_defaults: ClassVar[Mapping[str, OptionValue]] = {}
    sweep_defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            raise ValueError(f"task {self.name or type(self).__name__}: unknown option(s) "
                             f"{unknown}; known: {sorted(self.option_defaults)}")
        self.options: dict[str, OptionValue] = {
            key: _convert(options.get(key, default), default, key)
            for key, default in self.option_defaults.items()}

    # -- data and partition ---------------------------------------------------------------
    def prepare(self) -> None:  # noqa: B027  (optional hook)
        """Called once in the driver before the simulation starts (load, generate, cache)."""

    @abstractmethod
    def client_data(self, partition_id: int, num_partitions: int, *, alpha: float,
                    seed: int) -> Data:
        """The training shard of client ``partition_id`` of ``num_partitions``.

        ``alpha`` is the sweep's Dirichlet concentration (tasks with a natural split may
        ignore it) and ``seed`` the run's data seed; the result must be a pure function of
        the arguments and the options.
        """

    @abstractmethod
    def test_data(self, num_partitions: int, *, seed: int) -> Data:
        """The held-out set the server evaluates the global model on after every round."""

    def max_clients(self) -> int | None:
        """How many clients the data can make (None: as many as asked)."""
        return None

    # -- model ----------------------------------------------------------------------------
    @abstractmethod
    def make_model(self) -> nn.Module:
        """A new model (the caller seeds torch; see :func:`build_model`)."""

    # -- local training and evaluation ----------------------------------------------------
    def train(self, model: nn.Module, data: Data, settings: TrainSettings) -> float:
        """Local training of one round; returns the mean training loss.

        Default: ``settings.epochs`` passes of minibatch cross-entropy with a fresh optimizer
        (Adam, or SGD with momentum), batches drawn by a permutation seeded by
        ``settings.seed``.
        """
        model.train()
        opt = make_optimizer(settings.optimizer, model.parameters(), settings.lr,
                             settings.momentum)
        loss_fn = nn.CrossEntropyLoss()
        gen = torch.Generator().manual_seed(settings.seed)
        total, count = 0.0, 0
        for _ in range(max(1, settings.epochs)):
            perm = torch.randperm(len(data), generator=gen).numpy()
            for start in range(0, len(data), settings.batch_size):
                b = perm[start:start + settings.batch_size]
                xb, yb = batch(data, b)
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb), yb)
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
                count += len(b)
        return total / max(count, 1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Data) -> tuple[float, float]:
        """(mean cross-entropy loss, accuracy) of ``model`` on ``data``."""
        model.eval()
        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        loss, correct = 0.0, 0
        for start in range(0, len(data), 1024):
            xb, yb = batch(data, np.arange(start, min(start + 1024, len(data))))
            out = model(xb)
            loss += float(loss_fn(out, yb))
            correct += int((out.argmax(1) == yb).sum())
        return loss / max(len(data), 1), correct / max(len(data), 1)


def batch(data: Data, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensors of ``data[index]`` (copies: ``x`` may be a read-only strided view)."""
    return (torch.from_numpy(np.ascontiguousarray(data.x[index])),
            torch.from_numpy(np.ascontiguousarray(data.y[index])))


def _convert(value: Any, default: OptionValue, key: str) -> OptionValue:
    kind = type(default)
    try:
        if kind is bool and isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"task option {key}: expected {kind.__name__}, got {value!r}"
                         ) from None


# --------------------------------------------------------------------------------------
# Loading tasks by name


def resolve(spec: str) -> type[Task]:
    """The Task class of ``spec``: a shipped name (:data:`BUILTIN`) or ``module:Class``."""
    target = BUILTIN.get(spec, spec)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"task must be one of {sorted(BUILTIN)} or 'package.module:Class', "
                         f"got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"task {spec!r}: cannot import {module_name!r} ({e})") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ValueError(f"task {spec!r}: {attr!r} in {module_name!r} is not a "
                         "simulations.tasks.Task subclass")
    return cls


_TASKS: dict[tuple[str, tuple[tuple[str, Any], ...]], Task] = {}


def load(spec: str, options: Mapping[str, Any] | None = None) -> Task:
    """The task of ``spec`` with ``options``, built once per process and then reused."""
    key = (spec, tuple(sorted((options or {}).items())))
    task = _TASKS.get(key)
    if task is None:
        task = _TASKS[key] = resolve(spec)(**dict(options or {}))
    return task


def build_model(task: Task, seed: int = 0) -> nn.Module:
    """``task.make_model()`` with torch's global generator seeded by ``seed`` (restored
    afterwards), so a seed fixes the initialisation."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return task.make_model()
    finally:
        torch.random.set_rng_state(state)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------
# Helpers for tasks


def dirichlet_partition(labels: np.ndarray, clients: int, alpha: float, seed: int,
                        min_size: int = 10) -> list[np.ndarray]:
    """Split sample indices over ``clients`` with per-class Dirichlet(alpha) proportions.

    The usual non-IID benchmark split: for each class, a Dirichlet(alpha) draw decides which
    fraction of that class every client receives (alpha = 0.5: a few dominant classes per
    client; 0.1: nearly one or two). Redrawn until every client holds at least ``min_size``
    samples. Deterministic in ``seed``.
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


class DirichletTask(Task):
    """A classification task over fixed train/test arrays, split by :func:`dirichlet_partition`.

    Subclasses implement :meth:`arrays` (train and test :class:`Data`, cached by the
    subclass if loading is slow) and :meth:`make_model`.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._splits: dict[tuple[int, float, int], list[np.ndarray]] = {}

    @abstractmethod
    def arrays(self) -> tuple[Data, Data]:
        """(train, test) of the whole task."""

    def prepare(self) -> None:
        self.arrays()

    def client_data(self, partition_id: int, num_partitions: int, *, alpha: float,
                    seed: int) -> Data:
        train, _ = self.arrays()
        key = (num_partitions, float(alpha), seed)
        if key not in self._splits:
            self._splits[key] = dirichlet_partition(train.y, num_partitions, alpha, seed)
        idx = self._splits[key][partition_id]
        return Data(train.x[idx], train.y[idx])

    def test_data(self, num_partitions: int, *, seed: int) -> Data:
        return self.arrays()[1]


# --------------------------------------------------------------------------------------
# Optimisation


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
    params = list(params)
    if name == "adam":
        try:  # the fused CPU kernel saves ~1 ms a step on small models
            return torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")
