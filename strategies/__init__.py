"""Flower integration of fedhd: compress an existing Flower app in two lines.

>>> from strategies import CompressedFedAvg, compression_mod
>>> app = ClientApp(mods=[compression_mod])                          # client side
>>> strategy = CompressedFedAvg(method="hd-dither", bits=2, fraction_evaluate=0.5)

``compression_mod`` encodes each train reply's update into one fedhd blob;
``CompressedFedAvg`` (a ``flwr.serverapp.strategy.FedAvg``) sends the method, bits and
round seed, and aggregates the blobs with decode-after-sum. ``CompressedStrategy`` does the
same around FedAdam, FedAvgM, FedProx and the other mean-based Message-API strategies.
Where things are:

- ``mod``: the client side (``compression_mod``);
- ``error_feedback``: the client's residuals for biased methods (and powersgd's warm start);
- ``fedavg``, ``wrapper``: the server strategies;
- ``round``: one round's server logic (open, sum, metrics, rebuild);
- ``settings``: the train-config format both sides share;
- ``constants``: every ``fedhd.*`` config and metric key;
- ``transport``: bytes of a message as Flower's transport sends it.
"""

from . import constants
from .constants import DEFAULT_METHOD
from .fedavg import CompressedFedAvg
from .mod import compression_mod
from .round import RoundCompressor
from .secagg import SecAggFedAvg, SecAggStrategy, secagg_mod
from .transport import message_wire_bytes
from .wrapper import CompressedStrategy

__all__ = [
    "DEFAULT_METHOD",
    "CompressedFedAvg",
    "CompressedStrategy",
    "RoundCompressor",
    "SecAggFedAvg",
    "SecAggStrategy",
    "compression_mod",
    "constants",
    "message_wire_bytes",
    "secagg_mod",
]
