"""Flower simulations of fedhd: accuracy against the bytes sent and simulated wall-clock.

``python -m simulations`` (= ``make demo``) runs the default sweep of ``default.toml`` (the
MNIST-1D task) on Flower's Simulation Engine and writes ``results/``; ``--task`` picks
another task (``fmnist``, ``shakespeare``, ``digits``, or ``package.module:Class`` of your
own) and ``python -m simulations --help`` lists the options. ``flwr run
simulations/flwr_app`` runs the same ServerApp/ClientApp pair. ``grids/*.toml`` are the
committed result grids (``--config simulations/grids/fmnist.toml --out results/fmnist``);
``python -m simulations.report DIR`` rebuilds a finished sweep's report from its files.

Modules: ``tasks/`` (the task interface and one module per task), ``server_app`` (the
sweep as one ServerApp), ``client_app``, ``metering`` (bytes of both directions per round
and node, compression CPU seconds), ``link`` (bytes and compute -> simulated time),
``results`` (result types), ``report`` (CSV, JSON, markdown, PNG), ``sweep`` (the
Simulation Engine run), ``config``, ``methods`` (what the sweep reads from fedhd's method
registry).
"""

import os

# Flower: no telemetry, no update check, never install an app's dependencies at run time.
for _key, _value in (("FLWR_TELEMETRY_ENABLED", "0"), ("FLWR_DISABLE_UPDATE_CHECK", "1"),
                     ("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")):
    os.environ.setdefault(_key, _value)
