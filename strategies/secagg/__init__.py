"""Secure aggregation that composes with compression, on Flower's Message API.

>>> app = ClientApp(mods=[secagg_mod, compression_mod])             # client side
>>> strategy = SecAggFedAvg(clip_norm=2.0, bits=4, fraction_evaluate=0.5)  # server side

The server learns only the sum of the clients' clipped, quantized updates: each client
sends its summable code (``fedhd.modular``: shared rotation, server-chosen lattice step,
subtractive dither, m-bit words mod 2**m) masked with SecAgg/SecAgg+ masks. Modules:

- ``protocol``: the pure protocol (no Flower import): messages, client and server state;
- ``crypto``: X25519, HKDF, AES-GCM, ChaCha20 and SHA-256 from ``cryptography``;
- ``shamir``: Shamir sharing over GF(2**521 - 1);
- ``params``: the round parameters and the model flattening both sides share;
- ``mod``: ``secagg_mod``, the client mod;
- ``strategy``: ``SecAggFedAvg``, ``SecAggStrategy`` and their round engine.
"""

from .mod import secagg_mod
from .protocol import ProtocolError, SecAggAbort, StaleMessage
from .strategy import SecAggFedAvg, SecAggStrategy, SecureAggregator

__all__ = [
    "ProtocolError",
    "SecAggAbort",
    "SecAggFedAvg",
    "SecAggStrategy",
    "SecureAggregator",
    "StaleMessage",
    "secagg_mod",
]
