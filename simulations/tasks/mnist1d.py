"""``mnist1d``: MNIST-1D generated locally, a Dirichlet label split, a small 1-D CNN.

MNIST-1D (``mnist1d.data.make_dataset``) makes 40-sample 1-D signals of the ten digits
with no download: ``num-samples`` signals, 80 % train / 20 % test. Generation takes a
second or two, so the driver writes the arrays to a file under the temp folder
(:meth:`MNIST1D.prepare`) and the Ray actors read that file instead of generating again.
The model (:class:`CNN1D`, 106,378 parameters) reaches ~90 % test accuracy centrally.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from .base import Data, DirichletTask, OptionValue


class CNN1D(nn.Module):
    """1-D CNN for MNIST-1D (input ``(B, 1, 40)``), 106,378 parameters.

    Three conv layers with max-pooling and a global max-pool (the translation invariance
    MNIST-1D rewards), then an MLP head that holds most of the parameters at little compute.
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


class MNIST1D(DirichletTask):
    """MNIST-1D over Dirichlet(alpha) shards; option ``num-samples`` (default 5000)."""

    name = "mnist1d"
    option_defaults: ClassVar[Mapping[str, OptionValue]] = {"num-samples": 5000}

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self._arrays: tuple[Data, Data] | None = None

    def make_model(self) -> nn.Module:
        return CNN1D()

    def arrays(self) -> tuple[Data, Data]:
        if self._arrays is None:
            self._arrays = _load(int(self.options["num-samples"]))
        return self._arrays


def _cache_path(num_samples: int) -> Path:
    return Path(tempfile.gettempdir()) / "fedhd-simulations" / f"mnist1d-{num_samples}-v1.npz"


def _load(num_samples: int) -> tuple[Data, Data]:
    path = _cache_path(num_samples)
    try:
        with np.load(path) as f:
            return Data(f["x"], f["y"]), Data(f["x_test"], f["y_test"])
    except (OSError, KeyError, ValueError):
        pass
    train, test = _generate(num_samples)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, x=train.x, y=train.y, x_test=test.x, y_test=test.y)
        os.replace(tmp, path)
    except OSError:
        pass
    return train, test


def _generate(num_samples: int) -> tuple[Data, Data]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = int(num_samples)
    state = np.random.get_state()  # noqa: NPY002  (make_dataset reseeds the globals)
    pystate = random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(state)  # noqa: NPY002
        random.setstate(pystate)
    return (Data(data["x"].astype(np.float32)[:, None, :], data["y"].astype(np.int64)),
            Data(data["x_test"].astype(np.float32)[:, None, :], data["y_test"].astype(np.int64)))
