"""``fmnist``: Fashion-MNIST over 100 Dirichlet clients, the CNN of McMahan et al. 2017.

Data: the four IDX files of Fashion-MNIST (Xiao, Rasul and Vollgraf 2017; 60,000 train and
10,000 test 28x28 grey images of 10 clothing classes, MIT licence), read from
``/usr/share/datasets/fashion-mnist`` -- where the Debian package ``dataset-fashion-mnist``
installs them (``apt-get install dataset-fashion-mnist``) -- or from any folder that holds
them (``--data-dir DIR``, the task option ``data-dir``). Nothing is downloaded. Images stay
uint8 in memory (47 MB rather than 188 MB of float32 in every Ray actor); the model scales
them to [0, 1] and standardises them itself.

Model: :class:`McMahanCNN`, the "CNN" of McMahan et al., *Communication-Efficient Learning
of Deep Networks from Decentralized Data* (AISTATS 2017): 5x5 conv with 32 channels, 2x2
max-pool, 5x5 conv with 64 channels, 2x2 max-pool, a fully connected layer of 512 units
with ReLU and a softmax output layer: 1,663,370 parameters ('same' padding).

Split: ``clients`` (100 by default) Dirichlet(alpha) label shards, alpha = 0.5 by default
(``--alpha 0.1`` for the harder split); a ``fraction`` of the clients trains each round.
Option ``test-samples`` evaluates on the first N test images only (0: all 10,000);
``train-samples`` splits only the first N training images over the clients (0: all 60,000),
which shrinks every shard and the CPU seconds of a round in proportion (2-core grids).
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .base import Data, DirichletTask, OptionValue

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "x": "train-images-idx3-ubyte.gz",
    "y": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
#: Mean and standard deviation of the training pixels (scaled to [0, 1]).
PIXEL_MEAN, PIXEL_STD = 0.2860, 0.3530


def missing_message(path: Path) -> str:
    return (f"Fashion-MNIST: {path} not found. Either install the Debian package "
            f"(apt-get install dataset-fashion-mnist, which puts the four IDX .gz files in "
            f"{DEFAULT_DIR}), or pass --data-dir DIR (task option data-dir) naming a folder "
            f"that holds {', '.join(FILES.values())}.")


def read_idx(path: str | Path, limit: int | None = None) -> np.ndarray:
    """The array of an IDX file (gzip-compressed if its name ends in ``.gz``).

    IDX: two zero bytes, a type code (0x08 = uint8), the number of dimensions, then each
    dimension as a big-endian uint32, then the data. ``limit`` reads the first items only.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing_message(path))
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        head = f.read(4)
        if len(head) != 4 or head[:2] != b"\0\0" or head[2] != 0x08:
            raise ValueError(f"{path}: not a uint8 IDX file (header {head!r})")
        ndim = head[3]
        dims = list(struct.unpack(f">{ndim}I", f.read(4 * ndim)))
        if limit is not None:
            dims[0] = min(dims[0], int(limit))
        count = int(np.prod(dims))
        data = np.frombuffer(f.read(count), np.uint8)
    if data.size != count:
        raise ValueError(f"{path}: truncated ({data.size} of {count} bytes)")
    return data.reshape(dims)


def load(data_dir: str | Path = DEFAULT_DIR, limit: int | None = None) -> tuple[Data, Data]:
    """(train, test) of Fashion-MNIST from ``data_dir``: uint8 images ``(N, 1, 28, 28)``,
    int64 labels. ``limit`` reads the first N of each split (tests)."""
    folder = Path(data_dir)
    for name in FILES.values():  # every file checked first: one clear error
        if not (folder / name).is_file():
            raise FileNotFoundError(missing_message(folder / name))
    arr = {key: read_idx(folder / name, limit) for key, name in FILES.items()}
    for split in ("", "_test"):
        x, y = arr["x" + split], arr["y" + split]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (x.shape[0],):
            raise ValueError(f"Fashion-MNIST in {folder}: unexpected shapes {x.shape}, {y.shape}")
    return (Data(arr["x"][:, None], arr["y"].astype(np.int64)),
            Data(arr["x_test"][:, None], arr["y_test"].astype(np.int64)))


class McMahanCNN(nn.Module):
    """The CNN of McMahan et al. 2017 for 28x28 images, 1,663,370 parameters.

    Takes uint8 (scaled to [0, 1], then standardised) or float input of shape (B, 1, 28, 28).
    """

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, 512), nn.ReLU(), nn.Linear(512, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return self.head(self.features((x - PIXEL_MEAN) / PIXEL_STD))


class FashionMNIST(DirichletTask):
    """Fashion-MNIST over Dirichlet(alpha) shards; options ``data-dir``, ``test-samples``,
    ``train-samples``."""

    name = "fmnist"
    option_defaults: ClassVar[Mapping[str, OptionValue]] = {
        "data-dir": DEFAULT_DIR, "test-samples": 0, "train-samples": 0}
    #: McMahan et al. 2017 ran their CNN with C = 0.1 of 100 clients, E = 1-20 local epochs,
    #: B = 10-50 and SGD. Here: 10 of 100 clients a round, one epoch of Adam at 0.001, B = 32.
    sweep_defaults: ClassVar[Mapping[str, Any]] = {
        "clients": 100, "fraction": 0.1, "rounds": 20, "local-epochs": 1, "batch-size": 32,
        "optimizer": "adam", "lr": 0.001, "lr-schedule": "cosine", "alpha": 0.5}

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self._arrays: tuple[Data, Data] | None = None

    def arrays(self) -> tuple[Data, Data]:
        if self._arrays is None:
            train, test = load(str(self.options["data-dir"]))
            n = int(self.options["test-samples"])
            if n > 0:
                test = Data(test.x[:n], test.y[:n])
            m = int(self.options["train-samples"])
            if m > 0:
                train = Data(train.x[:m], train.y[:m])
            self._arrays = (train, test)
        return self._arrays

    def make_model(self) -> nn.Module:
        return McMahanCNN()
