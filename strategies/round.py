"""Server side of one compressed round, shared by ``CompressedFedAvg`` and
``CompressedStrategy``.

``RoundCompressor`` remembers the global arrays each round sent (``begin_round``), writes
the round's ``fedhd.*`` train config (``train_config``), and turns the round's train
replies into the new global arrays (``aggregate``) in four named steps:

1. ``open``: check each reply against the round, giving a typed ``Reply`` (its weight,
   blob or dense vector, exact arrays) or a logged, counted rejection;
2. ``sum``: add the replies, in an order fixed by their dither seeds, into one
   ``fedhd.Aggregator`` (decode-after-sum: each blob decoded once, one inverse Hadamard
   transform per chunk per round), applying the optional norm bound;
3. ``metrics``: the round's ``fedhd.*`` counts and wire bytes;
4. ``rebuild``: global + weighted mean update, every array in its own dtype and order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, Literal, TypeVar, cast

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    ConfigRecordValues,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import SType
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore import log

import fedhd
from fedhd.aggregate import MAX_WEIGHT
from fedhd.rng import round_seed

from . import constants as C
from .downlink import PublicModel, RoundDownlink
from .settings import Settings, float_keys, make_codec
from .settings import numpy_arrays as _numpy_arrays
from .transport import as_sent, message_wire_bytes, message_with_metadata

MetricsAggrFn = Callable[[list[RecordDict], str], MetricRecord]
R = TypeVar("R", ArrayRecord, MetricRecord, ConfigRecord)
#: Keyword options of ``RoundCompressor`` that the strategies pass through.
OPTIONS = ("log2_chunk", "wire_accounting", "exact", "device", "max_update_norm", "norm_bound",
           "downlink", "downlink_bits", "downlink_max_deltas", "downlink_precision",
           "error_feedback", "low_memory")


def split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(RoundCompressor options, the rest) of a strategy's keyword arguments."""
    return ({k: v for k, v in kwargs.items() if k in OPTIONS},
            {k: v for k, v in kwargs.items() if k not in OPTIONS})
NormBound = Literal["drop", "clip"]


class RejectedReply(ValueError):
    """A train reply that cannot be aggregated in this round."""


@dataclass
class RoundState:
    """What the server sent in one round, to check and decode the replies against."""

    server_round: int
    seed: int
    record: ArrayRecord
    arrays: dict[str, np.ndarray]
    float_keys: list[str]  # the compressed arrays: float, and not matching an exact pattern
    vector: np.ndarray  # float32 concatenation of the float arrays sent, in float_keys order
    # the server's global model (float32, same order): ``vector`` itself, or with the
    # downlink the full-precision G of which ``vector`` (P) is the compressed copy; the
    # round's new model is base + mean update (EF21-P: what P left out is not lost)
    base: np.ndarray
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def d(self) -> int:
        return int(self.vector.shape[0])


@dataclass
class Reply:
    """One train reply, opened and checked against its round, not yet summed."""

    msg: Message
    weight: float
    blob: bytes | None  # the compressed update, or None for an uncompressed reply
    dense: np.ndarray | None  # an uncompressed reply's float vector (the new model)
    extras: dict[str, np.ndarray]  # arrays sent exactly (non-float, ``exact`` patterns)
    order: tuple[int, int]  # sum order: compressed ones by dither seed, then the others


@dataclass
class RoundOutcome:
    """The result of aggregating one round's train replies."""

    arrays: ArrayRecord | None
    client_metrics: MetricRecord | None
    fedhd_metrics: MetricRecord
    accepted: list[Message]
    total_weight: float


class RoundCompressor:
    """Server-side state and logic of fedhd compression for a Message-API strategy.

    Parameters
    ----------
    method : str
        A name from ``fedhd.methods()``.
    bits : float, optional
        Bits per coordinate (the method's default when None).
    seed : int
        Base seed; round r uses the rotation seed ``fedhd.rng.round_seed(seed, r)``.
    log2_chunk : int, optional
        Hadamard chunk length exponent (fedhd's default when None).
    wire_accounting : bool
        Measure the wire bytes of every accepted reply and of the same reply uncompressed.
    exact : sequence of str
        fnmatch patterns of float array keys that travel uncompressed and are averaged as
        FedAvg does (e.g. ``constants.BATCHNORM_STATS``).
    device : str, optional
        "cuda" or "cuda:N": sum the blobs of rotated table methods on that GPU
        (``fedhd.Aggregator(device=...)``); the aggregate comes back to the host.
    max_update_norm : float, optional
        Bound on the L2 norm of one client's update (see ``CompressedFedAvg``).
    norm_bound : "drop" or "clip"
        What happens to a reply whose update norm exceeds ``max_update_norm``.
    downlink : bool or str (default: False)
        Compress the downlink too (``strategies.downlink``): True for fedhd's default
        method, or a method name. Messages then carry each node's deltas of the public model
        P (or a keyframe), and the nodes train from P.
    downlink_bits : float, optional
        Bits per coordinate of the downlink deltas (the method's default when None).
    downlink_max_deltas : int (default: 16)
        Deltas the server keeps for nodes that missed rounds; further behind: a keyframe.
    downlink_precision : "float32" or "bfloat16" (default: "float32")
        The grid the public model P is kept on; "bfloat16" halves keyframes.
    error_feedback : bool, optional (default: None)
        Client-side error feedback (``strategies.error_feedback``): each node keeps the
        residual e of what its blobs left out and sends encode(update + e). None: on for
        biased methods (topk, scaled-sign, powersgd, turboquant, fp16), off for unbiased
        ones. Sent to the nodes as ``fedhd.error-feedback`` in every train config.
    low_memory : bool (default: False)
        The round's ``fedhd.Aggregator(low_memory=...)``: entropy-coded replies
        (hd-dither-ec) are checked and added without a work vector of the model's size,
        decoding each twice.
    """

    def __init__(self, method: str = C.DEFAULT_METHOD, bits: float | None = None,
                 seed: int = C.DEFAULT_SEED, log2_chunk: int | None = None,
                 wire_accounting: bool = True, exact: Sequence[str] = (),
                 device: str | None = None, max_update_norm: float | None = None,
                 norm_bound: NormBound = "drop", downlink: bool | str = False,
                 downlink_bits: float | None = None, downlink_max_deltas: int = 16,
                 downlink_precision: str = "float32", error_feedback: bool | None = None,
                 low_memory: bool = False):
        codec = make_codec(method, bits, log2_chunk)  # validates method, bits, chunk
        if error_feedback is not None and not isinstance(error_feedback, bool):
            raise TypeError(f"error_feedback must be a bool or None, got {error_feedback!r}")
        self.error_feedback = error_feedback
        self.low_memory = bool(low_memory)
        self.method = method
        self.bits = codec.bits
        self._log2_chunk = codec.log2_chunk  # what every blob of a round must carry
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        self.seed = seed
        self.log2_chunk = log2_chunk
        self.wire_accounting = wire_accounting
        if isinstance(exact, str) or not all(isinstance(p, str) for p in exact):
            raise TypeError(f"exact must be a sequence of str patterns, got {exact!r}")
        self.exact = tuple(exact)
        self.device = device
        if max_update_norm is not None and not (
                isinstance(max_update_norm, (int, float)) and math.isfinite(max_update_norm)
                and max_update_norm > 0):
            raise ValueError(f"max_update_norm must be a positive number, got "
                             f"{max_update_norm!r}")
        if norm_bound not in ("drop", "clip"):
            raise ValueError(f"norm_bound must be 'drop' or 'clip', got {norm_bound!r}")
        self.max_update_norm = None if max_update_norm is None else float(max_update_norm)
        self.norm_bound = norm_bound
        self.downlink = None if downlink is False else PublicModel(
            C.DEFAULT_METHOD if downlink is True else str(downlink), downlink_bits, seed,
            log2_chunk, downlink_max_deltas, self.exact, downlink_precision)
        self._sent: dict[str, RoundDownlink] = {}  # message type -> what its messages carried
        self._round: RoundState | None = None

    # -- configure ------------------------------------------------------------------------
    def round_seed(self, server_round: int) -> int:
        """The rotation seed every client of ``server_round`` shares."""
        return round_seed(self.seed, server_round)

    def settings(self, server_round: int) -> Settings:
        return Settings(self.method, self.bits, self.round_seed(server_round), self.log2_chunk,
                        self.exact, self.error_feedback)

    def train_config(self, server_round: int) -> dict[str, ConfigRecordValues]:
        """The ``fedhd.*`` keys to add to a round's train config."""
        return self.settings(server_round).to_config()

    def begin_round(self, server_round: int, arrays: ArrayRecord) -> RoundState:
        """Remember what ``server_round`` sends: the arrays the nodes train from (the
        global arrays, or with the downlink the public model P they hold, advanced to the
        global arrays) and the server's own global model, which the mean update moves."""
        sent = arrays
        if self.downlink is not None:
            self.downlink.advance(arrays)
            sent = self.downlink.public_record(arrays)
        numpy_arrays = _numpy_arrays(sent, "global array")
        keys = float_keys(numpy_arrays, self.exact)
        offsets: dict[str, tuple[int, int]] = {}
        pos = 0
        for k in keys:
            offsets[k] = (pos, pos + numpy_arrays[k].size)
            pos += numpy_arrays[k].size
        vector = _flat(numpy_arrays, offsets, pos)
        base = vector if sent is arrays else _flat(_numpy_arrays(arrays, "global array"),
                                                   offsets, pos)
        self._round = RoundState(server_round, self.round_seed(server_round), sent,
                                 numpy_arrays, keys, vector, base, offsets)
        return self._round

    def address(self, kind: str, messages: Iterable[Message], arrays: ArrayRecord,
                arrays_key: str, config_key: str) -> list[Message]:
        """The messages of a configure call (``kind``: "train" or "evaluate"); with the
        downlink, each carries its node's deltas or a keyframe instead of ``arrays``."""
        messages = list(messages)
        if self.downlink is None or not messages:
            return messages
        if kind == "evaluate":
            self.downlink.advance(arrays)  # evaluate the newest model
        messages, self._sent[kind] = self.downlink.address(messages, arrays, arrays_key,
                                                           config_key)
        return messages

    def aggregate_evaluate(self, replies: Iterable[Message],
                           inner: Callable[[list[Message]], MetricRecord | None]
                           ) -> MetricRecord | None:
        """``inner``'s evaluate metrics of the replies, plus the downlink's (if any)."""
        replies = list(replies)
        down = self.acknowledge("evaluate", replies)
        metrics = inner(replies)
        if not down:
            return metrics
        out = MetricRecord(dict(metrics or {}))
        out.update(down)
        return out

    def acknowledge(self, kind: str, replies: list[Message]) -> dict[str, int]:
        """Record which nodes got what ``kind``'s messages carried; the downlink metrics."""
        sent = self._sent.pop(kind, None)
        if self.downlink is None or sent is None:
            return {}
        self.downlink.acknowledge(replies, sent)
        return sent.metrics()

    # -- aggregate ------------------------------------------------------------------------
    def aggregate(
        self,
        server_round: int,
        replies: Iterable[Message],
        weighted_by_key: str = "num-examples",
        metrics_aggr_fn: MetricsAggrFn | None = None,
    ) -> RoundOutcome:
        """Validate, weight and aggregate one round's train replies (decode-after-sum)."""
        st = self._round
        if st is None or st.server_round != server_round:
            raise RuntimeError(
                f"aggregate_train for round {server_round} without configure_train for it"
            )
        replies = list(replies)
        down_metrics = self.acknowledge("train", replies)
        errors = [m for m in replies if m.has_error()]
        for m in errors:
            log(INFO, "\t> Received error in reply from node %d: %s",
                m.metadata.src_node_id, m.error.reason)
        counts = {C.METRIC_DROPPED: 0, C.METRIC_NORM_DROPPED: 0, C.METRIC_NORM_CLIPPED: 0}
        opened = self._open_all(st, [m for m in replies if not m.has_error()],
                                weighted_by_key, counts)
        agg, accepted = self._sum(st, opened, counts)
        log(INFO, "aggregate_train: %d replies accepted, %d dropped, %d errors",
            len(accepted), counts[C.METRIC_DROPPED], len(errors))
        fedhd_metrics = self._metrics(st, accepted, counts, len(errors))
        fedhd_metrics.update(down_metrics)
        if not accepted:
            return RoundOutcome(None, None, fedhd_metrics, [], 0.0)
        total_weight = sum(r.weight for r in accepted)
        arrays = self._rebuild(st, agg, accepted, total_weight)
        aggr_fn = metrics_aggr_fn or aggregate_metricrecords
        client_metrics = aggr_fn([r.msg.content for r in accepted], weighted_by_key)
        return RoundOutcome(arrays, client_metrics, fedhd_metrics, [r.msg for r in accepted],
                            total_weight)

    # step 1
    def _open_all(self, st: RoundState, messages: list[Message], weighted_by_key: str,
                  counts: dict[str, int]) -> list[Reply]:
        opened: list[Reply] = []
        for msg in messages:
            try:
                opened.append(self._open(msg, st, weighted_by_key))
            except (RejectedReply, fedhd.DecodeError, ValueError, TypeError, KeyError) as e:
                counts[C.METRIC_DROPPED] += 1
                _log_dropped(st.server_round, msg, e)
        # an order that does not depend on arrival: the float32 rotated sum then repeats
        # exactly (dither seeds are fixed per partition in simulations)
        return sorted(opened, key=lambda r: r.order)

    def _open(self, msg: Message, st: RoundState, weighted_by_key: str) -> Reply:
        """The reply as a ``Reply``; RejectedReply (or DecodeError) when it does not fit."""
        content = msg.content
        weight = _weight(content, weighted_by_key)
        record = _only(content, ArrayRecord)
        meta = content.get(C.REPLY_RECORD)
        if isinstance(meta, ConfigRecord):
            blob, extras = self._open_compressed(record, meta, st)
            return Reply(msg, weight, blob, None, extras, (0, fedhd.header(blob).dither_seed))
        dense, extras = self._open_dense(record, st)
        return Reply(msg, weight, None, dense, extras, (1, 0))

    def _open_compressed(self, record: ArrayRecord, meta: ConfigRecord, st: RoundState
                         ) -> tuple[bytes, dict[str, np.ndarray]]:
        if meta.get(C.KEY_FORMAT) != C.FORMAT_VERSION:
            raise RejectedReply(f"unsupported reply format {meta.get(C.KEY_FORMAT)!r}")
        if meta.get(C.KEY_FLOAT_KEYS) != st.float_keys:
            raise RejectedReply("the blob's float arrays do not match the arrays sent this round")
        blob_array = record.get(C.BLOB_KEY)
        if blob_array is None or blob_array.stype != C.BLOB_STYPE:
            raise RejectedReply(f"no '{C.BLOB_KEY}' array of stype '{C.BLOB_STYPE}'")
        other = set(record.keys()) - {C.BLOB_KEY}
        want = set(st.arrays) - set(st.offsets)
        if other != want:
            raise RejectedReply(f"non-float arrays {sorted(other)} do not match {sorted(want)}")
        return bytes(blob_array.data), {k: _exact(record[k], st.arrays[k], k) for k in want}

    def _open_dense(self, record: ArrayRecord, st: RoundState
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if set(record.keys()) != set(st.arrays):
            raise RejectedReply("the reply's array keys do not match the arrays sent")
        dense = np.empty(st.d, np.float32)
        extras: dict[str, np.ndarray] = {}
        for k, old in st.arrays.items():
            arr = record[k]
            if arr.stype != SType.NUMPY:
                raise RejectedReply(f"array '{k}' has stype {arr.stype!r}")
            new = arr.numpy()
            if new.shape != old.shape:
                raise RejectedReply(f"array '{k}' has shape {new.shape}, expected {old.shape}")
            if k in st.offsets:
                if new.dtype.kind != "f":
                    raise RejectedReply(f"array '{k}' has dtype {new.dtype}, expected float")
                a, b = st.offsets[k]
                dense[a:b] = new.ravel()
            else:
                extras[k] = _exact(arr, old, k)
        if not np.isfinite(dense).all():
            raise RejectedReply("the reply's arrays hold NaN or Inf")
        return dense, extras

    # step 2
    def _sum(self, st: RoundState, opened: list[Reply], counts: dict[str, int]
             ) -> tuple[fedhd.Aggregator | None, list[Reply]]:
        agg = (fedhd.Aggregator(st.d, seed=st.seed, method=self.method, bits=self.bits,
                                device=self.device, log2_chunk=self._log2_chunk,
                                low_memory=self.low_memory)
               if st.d > 0 else None)
        bound, clip = self.max_update_norm, self.norm_bound == "clip"
        accepted: list[Reply] = []
        for r in opened:
            try:
                norm = None
                if agg is not None:  # each validates fully before touching the sum
                    norm = (agg.add(r.blob, r.weight, bound, clip) if r.blob is not None
                            else agg.add_dense(cast(np.ndarray, r.dense) - st.vector, r.weight,
                                               bound, clip))
            except fedhd.NormExceeded as e:
                counts[C.METRIC_NORM_DROPPED] += 1
                counts[C.METRIC_DROPPED] += 1
                _log_dropped(st.server_round, r.msg, e)
                continue
            except (RejectedReply, fedhd.DecodeError, ValueError, TypeError) as e:
                counts[C.METRIC_DROPPED] += 1
                _log_dropped(st.server_round, r.msg, e)
                continue
            if norm is not None and self.max_update_norm is not None \
                    and norm > self.max_update_norm:
                counts[C.METRIC_NORM_CLIPPED] += 1
            accepted.append(r)
        return agg, accepted

    # step 3
    def _metrics(self, st: RoundState, accepted: list[Reply], counts: dict[str, int],
                 errors: int) -> MetricRecord:
        blob_bits = [8.0 * len(r.blob) / max(st.d, 1) for r in accepted if r.blob is not None]
        metrics = MetricRecord({
            C.METRIC_ACCEPTED: len(accepted),
            C.METRIC_COMPRESSED: len(blob_bits),
            C.METRIC_ERROR_REPLIES: errors,
            **counts,
        })
        if blob_bits:
            metrics[C.METRIC_BLOB_BITS_PER_COORD] = float(np.mean(blob_bits))
        if self.wire_accounting and accepted:
            metrics.update(self._wire_metrics([r.msg for r in accepted], st))
        return metrics

    def _wire_metrics(self, accepted: list[Message], st: RoundState) -> dict[str, float | int]:
        cache: dict[str, int] = {}
        sent = [message_wire_bytes(as_sent(m), cache) for m in accepted]
        # the twin holds the global arrays, whose bytes may repeat (e.g. zero biases, unit
        # BatchNorm weights); a trained reply's arrays do not, hence no dedup
        plain = [message_wire_bytes(_uncompressed_twin(m, st.record), cache, dedup=False)
                 for m in accepted]
        return {
            C.METRIC_UPLINK_BYTES: float(np.mean(sent)),
            C.METRIC_UPLINK_BYTES_UNCOMPRESSED: float(np.mean(plain)),
            C.METRIC_UPLINK_BYTES_TOTAL: int(sum(sent)),
            C.METRIC_COMPRESSION_RATIO: float(sum(plain) / sum(sent)),
        }

    # step 4
    def _rebuild(self, st: RoundState, agg: fedhd.Aggregator | None, accepted: list[Reply],
                 total_weight: float) -> ArrayRecord:
        new_vector = (st.base if agg is None
                      else st.base + agg.mean(out=np.empty(st.d, np.float32)))
        extras_sum = {k: np.zeros(a.shape, np.float64)
                      for k, a in st.arrays.items() if k not in st.offsets}
        for r in accepted:
            for k, v in r.extras.items():
                extras_sum[k] += r.weight * v
        out = ArrayRecord()
        for key, old in st.arrays.items():
            if key in st.offsets:
                a, b = st.offsets[key]
                value = new_vector[a:b].reshape(old.shape).astype(old.dtype)
            else:
                value = _cast_mean(extras_sum[key] / total_weight, old.dtype)
            out[key] = Array(np.asarray(value))
        return out


def _flat(arrays: dict[str, np.ndarray], offsets: dict[str, tuple[int, int]],
          size: int) -> np.ndarray:
    """The float32 vector of ``arrays`` laid out at ``offsets``."""
    vector = np.empty(size, np.float32)
    for k, (a, b) in offsets.items():
        vector[a:b] = arrays[k].ravel()
    return vector


def _log_dropped(server_round: int, msg: Message, e: Exception) -> None:
    log(WARNING, "fedhd: round %d: dropped the train reply of node %d: %s",
        server_round, msg.metadata.src_node_id, e)


def _only(content: RecordDict, kind: type[R]) -> R:
    """The one record of type ``kind`` in ``content`` (RejectedReply for none or several).
    One pass over the values: Flower's ``array_records``-style views build a new dict on
    every access (~0.1 ms each)."""
    found = [v for v in content.values() if isinstance(v, kind)]
    if len(found) != 1:
        raise RejectedReply(f"expected exactly one {kind.__name__}, found {len(found)}")
    return found[0]


def _weight(content: RecordDict, key: str) -> float:
    metrics = _only(content, MetricRecord)
    w = metrics.get(key)
    if (isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w)
            or not 0 < w <= MAX_WEIGHT):
        raise RejectedReply(f"MetricRecord['{key}'] must be a number in (0, 2**53], got {w!r}")
    return float(w)


def _exact(arr: Array, old: np.ndarray, key: str) -> np.ndarray:
    if arr.stype != SType.NUMPY:
        raise RejectedReply(f"array '{key}' has stype {arr.stype!r}")
    value = arr.numpy()
    if value.shape != old.shape or value.dtype != old.dtype:
        raise RejectedReply(
            f"array '{key}' is {value.dtype}{list(value.shape)}, expected "
            f"{old.dtype}{list(old.shape)}")
    value = value.astype(np.float64)
    if not np.isfinite(value).all():
        raise RejectedReply(f"array '{key}' holds NaN or Inf")
    return value


def _cast_mean(mean: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A weighted mean of exact arrays, back in their dtype (integers rounded; bool:
    majority)."""
    if dtype.kind == "b":
        return mean >= 0.5
    if dtype.kind in "iu":
        return np.rint(mean).astype(dtype)
    return mean.astype(dtype)


def _uncompressed_twin(msg: Message, global_record: ArrayRecord) -> Message:
    """The same reply as plain FedAvg would send it: the arrays as numpy Arrays (same keys,
    shapes and dtypes as the global arrays), no fedhd record, everything else unchanged."""
    sent = as_sent(msg)
    if C.REPLY_RECORD not in msg.content:
        return sent
    content = RecordDict()
    for key, record in msg.content.items():
        if key == C.REPLY_RECORD and isinstance(record, ConfigRecord):
            continue
        content[key] = global_record if isinstance(record, ArrayRecord) else record
    return message_with_metadata(content, sent.metadata)
