"""A link model: the bytes of a round, as metered, turned into simulated wall-clock time.

A synchronous FedAvg round lasts as long as its slowest sampled client::

    round = max over the round's clients i of
                (latency + 8 * down_i / downlink)      # receive the global model
              + compute_i * compute_scale              # local training + encoding
              + (latency + 8 * up_i / uplink)          # send the update
            + server_i                                 # decode and aggregate (server CPU)

``down_i`` and ``up_i`` are the wire bytes of the train message to client i and of its
reply, metered at the Grid (:mod:`simulations.metering`); ``compute_i`` is the CPU seconds
the client's train call took on this machine, measured around the whole call (training plus
``compression_mod``), i.e. the time on one core of this machine; ``compute-scale`` stretches
it for slower devices. ``server`` is the CPU seconds of the strategy's ``aggregate_train``.
Each transfer pays one ``latency``: the round trip that opens the request, before the bytes
flow at the link's rate. Not modelled: TCP slow start, gRPC framing, contention between
clients for the server's link, stragglers dropping out.

Default profile (:data:`MOBILE`): 36 Mbit/s down, 11 Mbit/s up, 40 ms latency, rounded from
the global *mobile* figures of Ookla's Speedtest Global Index for September 2020 (35.96
Mbit/s download, 11.22 Mbit/s upload, 40 ms latency). :data:`BROADBAND` uses the fixed
broadband figures of the same month (85.73 / 45.74 Mbit/s, 21 ms), rounded to 86 / 46 / 21.
Both are the index's global headline figures over consumer speed tests (taken here from a
secondary report of that month's index, not checked against Ookla's own page): a real
federation's devices spread widely around them, and the index has moved since (mobile
downloads grew faster than uploads). The point they make is the asymmetry: uplinks are
several times slower than downlinks, which is why compressing client updates pays.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ClientRound:
    """One sampled client's part of a round: bytes received and sent, compute seconds."""

    download_bytes: int
    upload_bytes: int
    compute_seconds: float = 0.0


@dataclass(frozen=True)
class Link:
    """Bandwidths in Mbit/s (10^6 bit/s) and a per-transfer latency in milliseconds."""

    downlink_mbps: float = 36.0
    uplink_mbps: float = 11.0
    latency_ms: float = 40.0
    compute_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.downlink_mbps <= 0 or self.uplink_mbps <= 0:
            raise ValueError("link bandwidths must be > 0")
        if self.latency_ms < 0 or self.compute_scale < 0:
            raise ValueError("latency and compute scale must be >= 0")

    def download_seconds(self, nbytes: float) -> float:
        return self.latency_ms / 1e3 + 8.0 * nbytes / (self.downlink_mbps * 1e6)

    def upload_seconds(self, nbytes: float) -> float:
        return self.latency_ms / 1e3 + 8.0 * nbytes / (self.uplink_mbps * 1e6)

    def client_seconds(self, c: ClientRound) -> float:
        """Download + local compute + upload of one client."""
        return (self.download_seconds(c.download_bytes)
                + self.compute_scale * c.compute_seconds
                + self.upload_seconds(c.upload_bytes))

    def round_seconds(self, clients: Iterable[ClientRound], server_seconds: float = 0.0
                      ) -> float:
        """The round's simulated duration: the slowest client, then the server's work.
        A round without clients costs only the server's seconds."""
        return max((self.client_seconds(c) for c in clients), default=0.0) + server_seconds


#: Global mobile figures, Ookla Speedtest Global Index, September 2020 (rounded).
MOBILE = Link(downlink_mbps=36.0, uplink_mbps=11.0, latency_ms=40.0)
#: Global fixed-broadband figures, same source and month (rounded).
BROADBAND = Link(downlink_mbps=86.0, uplink_mbps=46.0, latency_ms=21.0)
PROFILES = {"mobile": MOBILE, "broadband": BROADBAND}
