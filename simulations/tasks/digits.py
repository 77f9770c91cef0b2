"""``digits``: scikit-learn's bundled 8x8 digits and an MLP -- the example task.

This module is the template for a task of your own: it implements the whole
:class:`~simulations.tasks.base.Task` interface in a few lines, with nothing but the
helpers of :mod:`simulations.tasks.base`. Copy it, change the data and the model, and run

    python -m simulations --task mypackage.mytask:MyTask --task-option hidden=256

Your module must be importable where the ClientApps run (the sweep puts the folder that
holds it on the Ray workers' ``PYTHONPATH``, so a module next to your script or in an
installed package works). What each method is for:

``option_defaults``
    The options of the task and their types; ``--task-option KEY=VALUE`` and the
    ``[sweep.task-options]`` TOML table override them, and ``self.options`` holds the
    result. Here: the MLP's hidden width.
``sweep_defaults``
    Sweep settings that suit the task (clients, rounds, learning rate, ...), applied when
    the task is chosen, under the user's own TOML and flags.
``prepare()``
    Runs once in the driver before the simulation starts: load or generate the data, write
    any cache the actors should read. Optional.
``client_data(partition_id, num_partitions, alpha=, seed=)``
    The training shard of one client, a pure function of its arguments: every process
    computes the same split, nothing is shipped. Here: a Dirichlet(alpha) label split.
``test_data(num_partitions, seed=)``
    The held-out set the server evaluates the global model on after every round.
``make_model()``
    A new model; the framework seeds torch first (``build_model``), so the run's seed fixes
    the initialisation.
``train(model, data, settings)`` / ``evaluate(model, data)``
    Inherited: minibatch cross-entropy with a fresh Adam/SGD per round, and (loss,
    accuracy). Override them for other losses or metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from .base import Data, OptionValue, Task, dirichlet_partition


class MLP(nn.Module):
    """Two-hidden-layer MLP for the 64 pixels of a digit (26,122 parameters at width 128)."""

    def __init__(self, features: int = 64, hidden: int = 128, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Digits(Task):
    """1,797 8x8 digits (80 % train, 20 % test), standardised, over Dirichlet shards."""

    name = "digits"
    option_defaults: ClassVar[Mapping[str, OptionValue]] = {"hidden": 128}

    @cached_property
    def _arrays(self) -> tuple[Data, Data]:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.data / 16.0).astype(np.float32)
        y = d.target.astype(np.int64)
        perm = np.random.default_rng(0).permutation(len(y))  # a fixed train/test split
        x, y = x[perm], y[perm]
        split = int(0.8 * len(y))
        mean, std = x[:split].mean(0), x[:split].std(0) + 1e-3
        x = (x - mean) / std
        return Data(x[:split], y[:split]), Data(x[split:], y[split:])

    def client_data(self, partition_id: int, num_partitions: int, *, alpha: float,
                    seed: int) -> Data:
        train = self._arrays[0]
        shards = dirichlet_partition(train.y, num_partitions, alpha, seed)
        return Data(train.x[shards[partition_id]], train.y[shards[partition_id]])

    def test_data(self, num_partitions: int, *, seed: int) -> Data:
        return self._arrays[1]

    def make_model(self) -> nn.Module:
        return MLP(hidden=int(self.options["hidden"]))
