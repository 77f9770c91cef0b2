"""``CompressedStrategy``: fedhd uplink compression around any Message-API strategy.

The wrapper adds the ``fedhd.*`` keys to the inner strategy's train messages, decodes the
round's compressed replies into ONE reply that holds global + weighted mean update (with
the total weight and the clients' aggregated metrics), and hands that to the inner
strategy's ``aggregate_train``. Strategies that aggregate by a weighted mean and then
apply a server-side step on the mean (FedAvg, FedProx, FedAvgM, FedAdam, FedAdagrad,
FedYogi) give the same result as with uncompressed replies, up to the compression error.
Robust aggregators that look at individual replies (Krum, Bulyan, FedMedian,
FedTrimmedAvg) are not supported: decode-after-sum never materializes one client's model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from . import constants as C
from .round import OPTIONS, RoundCompressor
from .transport import message_with_metadata


class InnerStrategyKeys:
    """The record keys and the weight key of the wrapped strategy ``self.strategy``, with
    FedAvg's defaults, and the one reply a wrapper hands it (for ``CompressedStrategy`` and
    ``SecAggStrategy``)."""

    strategy: Strategy

    @property
    def arrayrecord_key(self) -> str:
        return str(getattr(self.strategy, "arrayrecord_key", "arrays"))

    @property
    def configrecord_key(self) -> str:
        return str(getattr(self.strategy, "configrecord_key", "config"))

    @property
    def weighted_by_key(self) -> str:
        return str(getattr(self.strategy, "weighted_by_key", "num-examples"))

    def aggregate_mean(self, server_round: int, arrays: ArrayRecord, total_weight: float,
                       client_metrics: MetricRecord | None, like: Message,
                       metrics: MetricRecord | dict
                       ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The inner strategy's ``aggregate_train`` of ONE reply in place of the round's:
        global + mean update, the total weight and the clients' aggregated metrics, with
        the metadata of the accepted reply ``like``; the wrapper's ``metrics`` are added to
        the MetricRecord it returns."""
        weight: int | float = total_weight
        if float(weight).is_integer():
            weight = int(weight)
        summary = MetricRecord(dict(client_metrics or {}))
        summary[self.weighted_by_key] = weight
        reply = message_with_metadata(
            RecordDict({self.arrayrecord_key: arrays, "metrics": summary}),
            copy.copy(like.metadata))
        new_arrays, inner = self.strategy.aggregate_train(server_round, [reply])
        out = MetricRecord(dict(inner or {}))
        out.update(metrics)
        return new_arrays, out


class CompressedStrategy(InnerStrategyKeys, Strategy):
    """Wrap a Message-API strategy so its clients send fedhd-compressed updates.

    Parameters
    ----------
    strategy : Strategy
        The inner strategy, e.g. ``FedAdam(...)``, ``FedAvgM(...)``, ``FedProx(...)``.
        Its ``arrayrecord_key``, ``configrecord_key``, ``weighted_by_key`` and
        ``train_metrics_aggr_fn`` (FedAvg's attributes) are used when present.
    method, bits, seed, **options
        As for ``CompressedFedAvg`` (log2_chunk, wire_accounting, exact, device,
        max_update_norm, norm_bound, downlink, downlink_bits, downlink_max_deltas,
        downlink_precision, error_feedback, low_memory).

    Examples
    --------
    >>> from flwr.serverapp.strategy import FedAdam
    >>> strategy = CompressedStrategy(FedAdam(eta=1e-2), method="hd-dither", bits=2)
    """

    def __init__(self, strategy: Strategy, method: str = C.DEFAULT_METHOD,
                 bits: float | None = None, seed: int = C.DEFAULT_SEED, **options: Any) -> None:
        super().__init__()
        self.strategy = strategy
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise TypeError(f"unknown options {sorted(unknown)}; known: {list(OPTIONS)}")
        self.compressor = RoundCompressor(method, bits, seed, **options)

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        c = self.compressor
        log(INFO, "\t├──> fedhd compression around %s: method %s | bits %s | seed %d",
            type(self.strategy).__name__, c.method, c.bits, c.seed)
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The inner strategy's train messages, with the round's ``fedhd.*`` keys."""
        self.compressor.begin_round(server_round, arrays)
        extra = self.compressor.train_config(server_round)
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        done: set[int] = set()
        for msg in messages:
            content = msg.content
            if id(content) in done:  # FedAvg shares one RecordDict among its messages
                continue
            done.add(id(content))
            old = content.get(self.configrecord_key)
            base = dict(old) if isinstance(old, ConfigRecord) else {}
            # a fresh record: the caller's train config object is left unchanged
            content[self.configrecord_key] = ConfigRecord({**base, **extra})
        return self.compressor.address("train", messages, arrays, self.arrayrecord_key,
                                       self.configrecord_key)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode the mean update (decode-after-sum), then let the inner strategy step."""
        outcome = self.compressor.aggregate(
            server_round, replies, self.weighted_by_key,
            getattr(self.strategy, "train_metrics_aggr_fn", None),
        )
        if outcome.arrays is None:
            return None, MetricRecord(dict(outcome.fedhd_metrics))
        return self.aggregate_mean(server_round, outcome.arrays, outcome.total_weight,
                                   outcome.client_metrics, outcome.accepted[0],
                                   outcome.fedhd_metrics)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The inner strategy's (with the downlink: each node's deltas)."""
        return self.compressor.address(
            "evaluate", self.strategy.configure_evaluate(server_round, arrays, config, grid),
            arrays, self.arrayrecord_key, self.configrecord_key)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The inner strategy's, plus the downlink metrics of the messages."""
        return self.compressor.aggregate_evaluate(
            replies, lambda r: self.strategy.aggregate_evaluate(server_round, r))
