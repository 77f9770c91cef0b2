"""``CompressedFedAvg``: FedAvg whose clients send fedhd-compressed updates."""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from . import constants as C
from .round import RoundCompressor, split_options


class CompressedFedAvg(FedAvg):
    """Federated Averaging with fedhd uplink compression (pair it with ``compression_mod``).

    Each round, ``configure_train`` adds the method, the bits and the round's rotation seed
    ``fedhd.derive_seed(seed, server_round)`` to the train config. Clients running
    ``compression_mod`` reply with one blob holding their update. ``aggregate_train``
    checks each reply against the round (method, bits, seed, length, CRC), weights it by
    ``num-examples``, sums the dequantized chunks of all clients in the rotated domain and
    runs ONE inverse Hadamard transform per chunk (decode-after-sum), then returns
    global + weighted mean update. Uncompressed replies (clients without the mod) are
    averaged in too. A reply that fails validation or decoding is dropped with a logged
    reason; the round goes on with the others, as FedAvg does with error replies.

    Parameters
    ----------
    method : str (default: ``strategies.constants.DEFAULT_METHOD``)
        A name from ``fedhd.methods()``; ``"identity"`` sends raw float32 (a baseline that
        must reproduce FedAvg).
    bits : float, optional
        Bits per coordinate; None takes the method's default. Each halving of the bits
        roughly quadruples the variance the compression adds (see the fedhd README).
    seed : int (default: 0)
        Base seed of the shared rotations.
    log2_chunk : int, optional
        Hadamard chunk length 2**log2_chunk (fedhd's default when None).
    wire_accounting : bool (default: True)
        Add the per-round uplink byte counts and the compression ratio to the train
        metrics (costs a hash of every reply).
    exact : sequence of str (default: ())
        fnmatch patterns of float array keys to send uncompressed and average as FedAvg
        does. Use ``strategies.constants.BATCHNORM_STATS`` for models with BatchNorm: the
        compression noise is spread evenly over a chunk, so a small running variance can
        turn negative after a noisy round.
    device : str, optional
        "cuda" or "cuda:N": decode-after-sum on that GPU (rotated table methods such as
        hd-dither and eden; the others, hd-dither-ec included, sum on the host).
    max_update_norm : float, optional (default: None, off)
        The server's bound on one client's update: a reply whose update has an L2 norm
        above it is dropped (``norm_bound="drop"``) or scaled down to it
        (``norm_bound="clip"``), and counted in ``fedhd.norm_dropped`` /
        ``fedhd.norm_clipped``. The norm is the one the blob states where its method sends
        per-chunk norms (hd-dither-ec, qsgd, turboquant: the client's exact update norm;
        hd-dither: its scales, norm times a clip correction >= 1), else that of the decoded
        update. It bounds how far one client (faulty or hostile) can move the model in a
        round; set it a few times above the norms honest clients send.
    norm_bound : "drop" or "clip" (default: "drop")
        See ``max_update_norm``.
    downlink : bool or str (default: False)
        Compress the broadcast too: True (fedhd's default method) or a method name. The
        server then sends each node the compressed deltas of a public model P it missed,
        with error feedback, or a keyframe (``strategies.downlink``); nodes running
        ``compression_mod`` rebuild the full model before the app sees it.
    downlink_bits : float, optional
        Bits per coordinate of the downlink deltas (the method's default when None).
    downlink_max_deltas : int (default: 16)
        Deltas kept for catch-up; a node further behind gets a keyframe.
    downlink_precision : "float32" or "bfloat16" (default: "float32")
        The grid P is kept on. "bfloat16" rounds P (both sides, error feedback keeps the
        rounding in G) and sends keyframes at 2 bytes per coordinate instead of 4.
    error_feedback : bool, optional (default: None)
        Client-side error feedback (``strategies.error_feedback``): each node keeps the
        residual of what its blobs left out and adds it to its next update. None: on for
        the biased methods (topk, scaled-sign, powersgd, turboquant, fp16), off otherwise.
    low_memory : bool (default: False)
        Check and add hd-dither-ec replies without a work vector of the model's size
        (each is decoded twice: about 1.8x the server's decode time).
    **fedavg_kwargs
        Any other keyword: a ``flwr.serverapp.strategy.FedAvg`` argument (fraction_train,
        fraction_evaluate, min_train_nodes, weighted_by_key, ...).

    Per-round train metrics (in the MetricRecord ``aggregate_train`` returns, next to the
    clients' own aggregated metrics): ``fedhd.uplink_bytes`` (mean wire bytes of one
    train reply), ``fedhd.uplink_bytes_uncompressed`` (the same reply as plain FedAvg
    sends it), ``fedhd.compression_ratio``, ``fedhd.uplink_bytes_total``,
    ``fedhd.blob_bits_per_coordinate``, ``fedhd.accepted``, ``fedhd.compressed``,
    ``fedhd.dropped``, ``fedhd.norm_dropped``, ``fedhd.norm_clipped`` and
    ``fedhd.error_replies``; with the downlink also ``fedhd.down.*`` (version, keyframes,
    delta messages, blob, catch-up and keyframe bytes), in the evaluate metrics too.
    """

    def __init__(self, method: str = C.DEFAULT_METHOD, bits: float | None = None,
                 seed: int = C.DEFAULT_SEED, **kwargs: Any) -> None:
        options, fedavg_kwargs = split_options(kwargs)
        super().__init__(**fedavg_kwargs)
        self.compressor = RoundCompressor(method, bits, seed, **options)

    @property
    def method(self) -> str:
        return self.compressor.method

    @property
    def bits(self) -> float:
        return self.compressor.bits

    @property
    def seed(self) -> int:
        return self.compressor.seed

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> fedhd compression: method %s | bits %s | seed %d",
            self.method, self.bits, self.seed)
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's train messages, with the round's ``fedhd.*`` keys in their config."""
        self.compressor.begin_round(server_round, arrays)
        config = ConfigRecord({**config, **self.compressor.train_config(server_round)})
        return self.compressor.address(
            "train", super().configure_train(server_round, arrays, config, grid), arrays,
            self.arrayrecord_key, self.configrecord_key)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """global + weighted mean update of the valid replies (decode-after-sum)."""
        outcome = self.compressor.aggregate(
            server_round, replies, self.weighted_by_key, self.train_metrics_aggr_fn
        )
        metrics = MetricRecord(dict(outcome.client_metrics or {}))
        metrics.update(outcome.fedhd_metrics)
        return outcome.arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's evaluate messages (with the downlink: each node's deltas)."""
        return self.compressor.address(
            "evaluate", super().configure_evaluate(server_round, arrays, config, grid),
            arrays, self.arrayrecord_key, self.configrecord_key)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """FedAvg's evaluate aggregation, plus the downlink metrics of the messages."""
        return self.compressor.aggregate_evaluate(
            replies, lambda r: super(CompressedFedAvg, self).aggregate_evaluate(server_round, r))
