"""Server side of the compression, shared by ``CompressedFedAvg`` and ``CompressedStrategy``.

``RoundCompressor`` remembers the global arrays each round sent, writes the round's
``fedhd.*`` train config, and turns the round's train replies into the new global arrays:
it validates every reply against the round, sums the compressed ones in the rotated domain
with ``fedhd.Aggregator`` (one inverse Hadamard transform per chunk per round), adds the
uncompressed ones densely, and returns global + weighted mean update. A reply that fails
validation or decoding is dropped with a logged reason and counted.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, cast

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    ConfigRecordValues,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import SType
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore import log

import fedhd

from . import constants as C
from .mod import is_exact, make_codec
from .wire_size import message_wire_bytes

MetricsAggrFn = Callable[[list[RecordDict], str], MetricRecord]


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
    vector: np.ndarray  # float32 concatenation of the float arrays, in float_keys order
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def d(self) -> int:
        return int(self.vector.shape[0])


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
        Base seed; round r uses the rotation seed ``fedhd.derive_seed(seed, r)``.
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
    """

    def __init__(self, method: str = C.DEFAULT_METHOD, bits: float | None = None,
                 seed: int = C.DEFAULT_SEED, log2_chunk: int | None = None,
                 wire_accounting: bool = True, exact: Sequence[str] = (),
                 device: str | None = None):
        codec = make_codec(method, bits, log2_chunk)  # validates method, bits, chunk
        self.method = method
        self.bits = codec.bits
        self._rotated = bool(getattr(codec.method, "rotated", True))
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        self.seed = seed
        self.log2_chunk = log2_chunk
        self.wire_accounting = wire_accounting
        if isinstance(exact, str) or not all(isinstance(p, str) for p in exact):
            raise TypeError(f"exact must be a sequence of str patterns, got {exact!r}")
        self.exact = tuple(exact)
        self.device = device
        self._round: RoundState | None = None

    # -- configure ------------------------------------------------------------------------
    def round_seed(self, server_round: int) -> int:
        """The rotation seed every client of ``server_round`` shares."""
        return fedhd.derive_seed(self.seed, server_round)

    def train_config(self, server_round: int) -> dict[str, ConfigRecordValues]:
        """The ``fedhd.*`` keys to add to a round's train config."""
        cfg: dict[str, ConfigRecordValues] = {
            C.KEY_METHOD: self.method,
            C.KEY_BITS: float(self.bits),
            C.KEY_SEED: self.round_seed(server_round),
        }
        if self.log2_chunk is not None:
            cfg[C.KEY_LOG2_CHUNK] = int(self.log2_chunk)
        if self.exact:
            cfg[C.KEY_EXACT] = list(self.exact)
        return cfg

    def begin_round(self, server_round: int, arrays: ArrayRecord) -> RoundState:
        """Remember the global arrays sent in ``server_round``."""
        keys = list(arrays.keys())
        numpy_arrays: dict[str, np.ndarray] = {}
        for key in keys:
            if arrays[key].stype != SType.NUMPY:
                raise ValueError(
                    f"global array '{key}' has stype {arrays[key].stype!r}; fedhd compression "
                    f"needs {SType.NUMPY!r} arrays"
                )
            numpy_arrays[key] = arrays[key].numpy()
        float_keys = [k for k in keys if numpy_arrays[k].dtype.kind == "f"
                      and not is_exact(k, self.exact)]
        offsets: dict[str, tuple[int, int]] = {}
        pos = 0
        for k in float_keys:
            offsets[k] = (pos, pos + numpy_arrays[k].size)
            pos += numpy_arrays[k].size
        vector = np.empty(pos, np.float32)
        for k in float_keys:
            a, b = offsets[k]
            vector[a:b] = numpy_arrays[k].ravel()
        self._round = RoundState(server_round, self.round_seed(server_round), arrays,
                                 numpy_arrays, float_keys, vector, offsets)
        return self._round

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
        errors = [m for m in replies if m.has_error()]
        with_content = [m for m in replies if not m.has_error()]
        for m in errors:
            log(INFO, "\t> Received error in reply from node %d: %s",
                m.metadata.src_node_id, m.error.reason)

        agg = (fedhd.Aggregator(st.d, seed=st.seed, method=self.method, bits=self.bits,
                                device=self.device) if st.d > 0 else None)
        extras_sum = {k: np.zeros(a.shape, np.float64)
                      for k, a in st.arrays.items() if k not in st.offsets}
        accepted: list[Message] = []
        compressed_flags: list[bool] = []
        blob_bits: list[float] = []
        total_weight = 0.0
        dropped = 0
        opened: list[tuple[tuple[int, int], int, Message, float, bytes | None,
                           np.ndarray | None, dict[str, np.ndarray]]] = []
        for msg in with_content:
            try:
                weight = _weight(msg.content, weighted_by_key)
                blob, dense, extras = self._open(msg.content, st)
                # add in an order that does not depend on arrival: the float32 rotated sum
                # then repeats exactly (dither seeds are fixed per partition in simulations)
                order = (0, fedhd.header(blob).dither_seed) if blob is not None else (1, 0)
            except (RejectedReply, fedhd.DecodeError, ValueError, TypeError, KeyError) as e:
                dropped += 1
                _log_dropped(server_round, msg, e)
                continue
            opened.append((order, len(opened), msg, weight, blob, dense, extras))
        for _, _, msg, weight, blob, dense, extras in sorted(opened, key=lambda o: o[:2]):
            try:
                if agg is not None:
                    if blob is not None:
                        if not self._rotated:
                            # methods without rotation decode directly: refuse NaN/Inf values
                            # before they reach the sum (rotated ones check their scales)
                            if not np.isfinite(fedhd.decode(blob)).all():
                                raise RejectedReply("the blob decodes to NaN or Inf")
                        agg.add(blob, weight)  # validates fully before touching the sum
                    else:
                        agg.add_dense(cast(np.ndarray, dense) - st.vector, weight)
            except (RejectedReply, fedhd.DecodeError, ValueError, TypeError) as e:
                dropped += 1
                _log_dropped(server_round, msg, e)
                continue
            for k, v in extras.items():
                extras_sum[k] += weight * v
            total_weight += weight
            accepted.append(msg)
            compressed_flags.append(blob is not None)
            if blob is not None:
                blob_bits.append(8.0 * len(blob) / max(st.d, 1))

        log(INFO, "aggregate_train: %d replies accepted, %d dropped, %d errors",
            len(accepted), dropped, len(errors))
        fedhd_metrics = MetricRecord({
            C.METRIC_ACCEPTED: len(accepted),
            C.METRIC_COMPRESSED: int(sum(compressed_flags)),
            C.METRIC_DROPPED: dropped,
            C.METRIC_ERROR_REPLIES: len(errors),
        })
        if blob_bits:
            fedhd_metrics[C.METRIC_BLOB_BITS_PER_COORD] = float(np.mean(blob_bits))
        if self.wire_accounting and accepted:
            fedhd_metrics.update(self._wire_metrics(accepted, st))

        if not accepted:
            return RoundOutcome(None, None, fedhd_metrics, [], 0.0)

        # global + weighted mean update, every array in its own dtype and the global order
        new_vector = (st.vector if agg is None
                      else st.vector + agg.mean(out=np.empty(st.d, np.float32)))
        out = ArrayRecord()
        for key, old in st.arrays.items():
            if key in st.offsets:
                a, b = st.offsets[key]
                value = new_vector[a:b].reshape(old.shape).astype(old.dtype)
            else:
                value = _cast_mean(extras_sum[key] / total_weight, old.dtype)
            out[key] = Array(np.asarray(value))

        aggr_fn = metrics_aggr_fn or aggregate_metricrecords
        client_metrics = aggr_fn([m.content for m in accepted], weighted_by_key)
        return RoundOutcome(out, client_metrics, fedhd_metrics, accepted, total_weight)

    def _open(self, content: RecordDict, st: RoundState
              ) -> tuple[bytes | None, np.ndarray | None, dict[str, np.ndarray]]:
        """(blob, None, non-float arrays) for a compressed reply, (None, dense float vector,
        non-float arrays) for an uncompressed one; RejectedReply when it does not fit."""
        if len(content.array_records) != 1:
            raise RejectedReply(
                f"expected exactly one ArrayRecord, found {len(content.array_records)}")
        record = next(iter(content.array_records.values()))
        meta = content.get(C.REPLY_RECORD)
        extras: dict[str, np.ndarray] = {}
        if isinstance(meta, ConfigRecord):
            if meta.get(C.KEY_FORMAT) != C.FORMAT_VERSION:
                raise RejectedReply(f"unsupported reply format {meta.get(C.KEY_FORMAT)!r}")
            float_keys = meta.get(C.KEY_FLOAT_KEYS)
            if float_keys != st.float_keys:
                raise RejectedReply(
                    "the blob's float arrays do not match the arrays sent this round")
            blob_array = record.get(C.BLOB_KEY)
            if blob_array is None or blob_array.stype != C.BLOB_STYPE:
                raise RejectedReply(f"no '{C.BLOB_KEY}' array of stype '{C.BLOB_STYPE}'")
            other = set(record.keys()) - {C.BLOB_KEY}
            want = set(st.arrays) - set(st.offsets)
            if other != want:
                raise RejectedReply(
                    f"non-float arrays {sorted(other)} do not match {sorted(want)}")
            for k in want:
                extras[k] = _exact(record[k], st.arrays[k], k)
            return bytes(blob_array.data), None, extras
        # an ordinary uncompressed reply
        if set(record.keys()) != set(st.arrays):
            raise RejectedReply("the reply's array keys do not match the arrays sent")
        dense = np.empty(st.d, np.float32)
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
        return None, dense, extras

    def _wire_metrics(self, accepted: list[Message], st: RoundState) -> dict[str, float | int]:
        cache: dict[str, int] = {}
        sent = [message_wire_bytes(_as_sent(m), cache) for m in accepted]
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


def _log_dropped(server_round: int, msg: Message, e: Exception) -> None:
    log(WARNING, "fedhd: round %d: dropped the train reply of node %d: %s",
        server_round, msg.metadata.src_node_id, e)


def _weight(content: RecordDict, key: str) -> float:
    if len(content.metric_records) != 1:
        raise RejectedReply(
            f"expected exactly one MetricRecord, found {len(content.metric_records)}")
    metrics = next(iter(content.metric_records.values()))
    w = metrics.get(key)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
        raise RejectedReply(f"MetricRecord['{key}'] must be a positive number, got {w!r}")
    return float(w)


def _exact(arr: Array, old: np.ndarray, key: str) -> np.ndarray:
    if arr.stype != SType.NUMPY:
        raise RejectedReply(f"array '{key}' has stype {arr.stype!r}")
    value = arr.numpy()
    if value.shape != old.shape or value.dtype != old.dtype:
        raise RejectedReply(
            f"array '{key}' is {value.dtype}{list(value.shape)}, expected "
            f"{old.dtype}{list(old.shape)}")
    return value.astype(np.float64)


def _cast_mean(mean: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A weighted mean of exact arrays, back in their dtype (integers rounded; bool:
    majority)."""
    if dtype.kind == "b":
        return mean >= 0.5
    if dtype.kind in "iu":
        return np.rint(mean).astype(dtype)
    return mean.astype(dtype)


def _sent_metadata(msg: Message) -> Metadata:
    """A copy of the reply's metadata as its node pushed it (before the SuperLink set
    ``delivered_at``); the original is left alone."""
    md = copy.copy(msg.metadata)
    md.__dict__["_delivered_at"] = ""
    return md


def message_with_metadata(content: RecordDict, metadata: Metadata) -> Message:
    """A Message with the given metadata (the constructor's ``metadata`` argument, which
    Flower uses when it inflates messages, is left out of its typed overloads)."""
    factory: Any = Message
    return cast(Message, factory(content=content, metadata=metadata))


def _as_sent(msg: Message) -> Message:
    """The reply as its node pushed it (same content objects)."""
    return message_with_metadata(msg.content, _sent_metadata(msg))


def _uncompressed_twin(msg: Message, global_record: ArrayRecord) -> Message:
    """The same reply as plain FedAvg would send it: the arrays as numpy Arrays (same keys,
    shapes and dtypes as the global arrays), no fedhd record, everything else unchanged."""
    if C.REPLY_RECORD not in msg.content:
        return _as_sent(msg)
    content = RecordDict()
    for key, record in msg.content.items():
        if key == C.REPLY_RECORD and isinstance(record, ConfigRecord):
            continue
        content[key] = global_record if isinstance(record, ArrayRecord) else record
    return message_with_metadata(content, _sent_metadata(msg))
