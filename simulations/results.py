"""Result types of a sweep: one :class:`RunResult` per (run, seed), one row per round.

Rows are plain dicts (they go straight into ``rounds.csv``); :data:`ROUND_FIELDS` names
and explains every column. Round 0 is the initial model (no traffic yet).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Columns of a round row (and of ``rounds.csv``), in order, with their meaning. Bytes are
#: wire bytes as Flower transports the messages; cumulative columns run from round 1.
ROUND_FIELDS: dict[str, str] = {
    "round": "FedAvg round (0: the initial model)",
    "label": "the configuration's name (run spec label, or method and bits)",
    "method": "compression method of the uplink",
    "bits": "bits per coordinate asked of the method",
    "seed": "run seed (model init, split, client sampling, dithers)",
    "accuracy": "central test accuracy of the global model after the round",
    "loss": "central test loss",
    "train_loss": "mean local training loss of the round's clients",
    "clients": "train replies metered in the round",
    "downlink_bytes_round": "bytes of the round's train messages to the sampled clients, as "
                            "sent (with a compressed downlink: deltas or keyframes)",
    "uplink_bytes_round": "bytes of the round's replies",
    "downlink_bytes": "cumulative downlink bytes",
    "uplink_bytes": "cumulative uplink bytes",
    "total_bytes": "cumulative downlink + uplink bytes",
    "strategy_uplink_bytes_round": "the strategy's own count of accepted replies' bytes",
    "fp32_fedavg_uplink_bytes": "cumulative: the same replies as plain float32 FedAvg arrays",
    "client_compress_cpu_s": "client CPU seconds of compression, summed over the round's "
                             "clients (train call minus local training)",
    "client_train_cpu_s": "client CPU seconds of local training, summed over the clients",
    "server_aggregate_cpu_s": "server CPU seconds of aggregate_train (decode + sum)",
    "server_aggregate_wall_s": "server wall seconds of aggregate_train",
    "sim_round_s": "simulated round time: slowest client's download + compute + upload, "
                   "then the server's aggregation (simulations.link)",
    "sim_time_s": "cumulative simulated time",
    "accepted": "replies aggregated",
    "dropped": "replies dropped (failed validation) or returned as errors",
    "down_keyframes": "compressed downlink: train messages of the round that carried a "
                      "keyframe (the full public model, float32)",
    "down_delta_messages": "compressed downlink: train messages that carried deltas",
    "down_blob_bytes": "compressed downlink: bytes of the round's newest delta blob (what an "
                       "up-to-date client receives)",
    "down_catchup_bytes": "compressed downlink: bytes of older deltas sent to clients that "
                          "had missed rounds, summed over the round's messages",
    "down_keyframe_bytes": "compressed downlink: float bytes of the round's keyframes",
}


@dataclass
class RunResult:
    """Per-round rows of one (method, bits, seed) run, and what the report needs about it.

    ``uncompressed`` marks the run as the float32 baseline (a method with a fixed rate of
    32 bits per coordinate, a property of the method, and no strategy options), which the
    report compares the others against. ``name`` is the run spec's label (the report,
    CSV and plots group and name runs by :attr:`label`); ``options`` its
    ``CompressedFedAvg`` options.
    """

    method: str
    bits: float
    seed: int
    task: str = ""
    num_params: int = 0
    clients_per_round: int = 0
    uncompressed: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float | None = None  # CPU of the whole process tree since the sweep began
    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> dict[str, Any]:
        return self.rows[-1]

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return f"{self.method} (uncompressed)" if self.uncompressed else (
            f"{self.method} {self.bits}b")
