"""Flower simulations of fedhd: accuracy against uplink bytes on non-IID MNIST-1D.

``python -m simulations`` (= ``make demo``) runs the default sweep of ``default.toml``
on Flower's Simulation Engine and writes ``results/``; ``python -m simulations --help``
lists the options. ``flwr run simulations/flwr_app`` runs the same ServerApp/ClientApp pair.
"""

import os

# Flower: no telemetry, no update check, never install an app's dependencies at run time.
for _key, _value in (("FLWR_TELEMETRY_ENABLED", "0"), ("FLWR_DISABLE_UPDATE_CHECK", "1"),
                     ("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")):
    os.environ.setdefault(_key, _value)
