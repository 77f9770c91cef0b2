"""Server side of secure aggregation on Flower's Message API: ``SecAggFedAvg`` and the
wrapper ``SecAggStrategy``, both driven by one ``SecureAggregator`` (the round engine).

Flower's ``Strategy.start`` runs one ``configure_train`` -> ``grid.send_and_receive`` ->
``aggregate_train`` exchange per round; the protocol needs four. The engine keeps the
``grid`` that ``configure_train`` receives and drives the extra exchanges through it:

- ``configure_train``: sample the nodes (the inner strategy's own train messages), then
  run SETUP and SHARE-KEYS as two ``grid.send_and_receive`` calls of ``train`` messages
  that carry only the ``fedhd.secagg`` record, and return the inner strategy's train
  messages (model and config unchanged) with the MASK_REQUEST added, for the clients that
  are still in;
- ``start`` sends them and collects the masked inputs;
- ``aggregate_train``: one more ``send_and_receive`` for UNMASK, then the unmasked sum is
  decoded (``fedhd.modular.decode_sum``) into global + weighted mean update.

Every stage is a ``train`` message because that is the one category a training ClientApp
registers: Flower's ClientApp looks a message's type up among its registered functions
BEFORE any mod runs, so a "query" or a "train.<action>" stage would fail on apps that do
not define it. A client that does not answer a stage in ``stage_timeout`` seconds, or
answers with an error, has dropped out at that stage.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from logging import ERROR, INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import SType
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore import log

from fedhd import modular
from fedhd.rng import modular_dither_seed, round_seed

from .. import constants as C
from ..transport import as_sent, message_wire_bytes
from ..wrapper import InnerStrategyKeys
from .crypto import RandBytes
from .params import (
    TAIL_CAPPED,
    TAIL_CLIPPED,
    TAIL_COUNT,
    TAIL_FIELDS,
    TAIL_WEIGHT,
    WEIGHT_ONE,
    RoundParams,
    layout_digest,
    split_keys,
)
from .protocol import Aggregate, SecAggAbort, ServerSession

_STAGE_METRIC = {
    C.SECAGG_STAGE_SETUP: C.METRIC_SECAGG_DROPPED_SETUP,
    C.SECAGG_STAGE_SHARE_KEYS: C.METRIC_SECAGG_DROPPED_SHARE_KEYS,
    C.SECAGG_STAGE_MASKED_INPUT: C.METRIC_SECAGG_DROPPED_MASKED_INPUT,
    C.SECAGG_STAGE_UNMASK: C.METRIC_SECAGG_DROPPED_UNMASK,
}


@dataclass
class SecAggRound:
    """One round's server state (also what tests and benchmarks inspect afterwards)."""

    server_round: int
    arrays: dict[str, np.ndarray]
    float_keys: list[str]
    other_keys: list[str]
    vector: np.ndarray  # float64 global float arrays, flattened in float_keys order
    session: ServerSession | None = None
    spec: modular.ModularSpec | None = None
    sampled: list[int] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    aggregate: Aggregate | None = None
    abort_reason: str | None = None
    server_seconds: float = 0.0
    uplink_bytes: dict[int, int] = field(default_factory=dict)  # per node, every stage
    masked_bytes: list[int] = field(default_factory=list)
    stages_run: list[str] = field(default_factory=list)

    @property
    def d(self) -> int:
        return int(self.vector.size)


@dataclass
class SecAggOutcome:
    arrays: ArrayRecord | None
    client_metrics: MetricRecord | None
    metrics: MetricRecord
    total_weight: float
    accepted: list[Message]


class SecureAggregator:
    """The round engine of ``SecAggFedAvg`` and ``SecAggStrategy``; parameters as there."""

    def __init__(self, clip_norm: float, bits: int = 4, *, headroom: int = 2,
                 threshold: float = 2 / 3, num_shares: int | None = None,
                 max_weight: float | None = None, slack: float = 1.5,
                 log2_chunk: int | None = None, seed: int = C.DEFAULT_SEED,
                 target_unclipped: float | None = None, clip_lr: float = 0.2,
                 client_metrics: bool = False, stage_timeout: float = 3600.0,
                 wire_accounting: bool = True, randbytes: RandBytes = secrets.token_bytes):
        if not (isinstance(clip_norm, (int, float)) and math.isfinite(clip_norm)
                and clip_norm > 0):
            raise ValueError(f"clip_norm must be a positive number, got {clip_norm!r}")
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
            raise ValueError(f"bits must be an int in [1, 16], got {bits!r}")
        if isinstance(headroom, bool) or not isinstance(headroom, int) or not 0 <= headroom <= 8:
            raise ValueError(f"headroom must be an int in [0, 8], got {headroom!r}")
        if isinstance(threshold, bool) or not (
                (isinstance(threshold, int) and threshold >= 2)
                or (isinstance(threshold, float) and 0 < threshold <= 1)):
            raise ValueError(f"threshold must be an int >= 2 or a fraction in (0, 1], got "
                             f"{threshold!r}")
        if num_shares is not None and (num_shares < 3 or num_shares % 2 == 0):
            raise ValueError(f"num_shares must be None or an odd int >= 3, got {num_shares!r}")
        if max_weight is not None and not (math.isfinite(max_weight) and max_weight > 0):
            raise ValueError(f"max_weight must be None or positive, got {max_weight!r}")
        if target_unclipped is not None and not 0 < target_unclipped <= 1:
            raise ValueError(f"target_unclipped must be in (0, 1], got {target_unclipped!r}")
        self.clip_norm = float(clip_norm)
        self.bits, self.headroom, self.threshold = bits, headroom, threshold
        self.num_shares, self.max_weight, self.slack = num_shares, max_weight, float(slack)
        self.log2_chunk, self.seed = log2_chunk, seed
        self.target_unclipped, self.clip_lr = target_unclipped, float(clip_lr)
        self.client_metrics, self.stage_timeout = client_metrics, stage_timeout
        self.wire_accounting, self.randbytes = wire_accounting, randbytes
        self._grid: Grid | None = None
        self.round: SecAggRound | None = None

    # -- configure -------------------------------------------------------------------------
    def threshold_for(self, sampled: int) -> int:
        """t for a round of ``sampled`` clients (of a neighbourhood, with num_shares)."""
        n = sampled if self.num_shares is None else min(self.num_shares, sampled)
        t = self.threshold if isinstance(self.threshold, int) else math.ceil(self.threshold * n)
        return max(2, min(int(t), n))

    def configure(self, server_round: int, arrays: ArrayRecord, messages: Iterable[Message],
                  grid: Grid, weighted_by_key: str) -> list[Message]:
        """Run SETUP and SHARE-KEYS; the train messages of the clients still in, with their
        MASK_REQUEST. [] when the round had to be aborted (logged; see ``round``)."""
        t_start = time.perf_counter()
        self._grid = grid
        st = self.round = self._begin(server_round, arrays)
        messages = list(messages)
        if not messages:  # the inner strategy skips training this round
            return []
        st.sampled = sorted({int(m.metadata.dst_node_id) for m in messages})
        waited = 0.0
        try:
            if len(st.sampled) < 2:
                raise SecAggAbort(C.SECAGG_STAGE_SETUP, f"{len(st.sampled)} client sampled; "
                                  "secure aggregation needs at least 2")
            num_shares = 0 if self.num_shares is None or self.num_shares >= len(st.sampled) \
                else self.num_shares
            srv = st.session = ServerSession(server_round, st.sampled,
                                             self.threshold_for(len(st.sampled)), num_shares,
                                             self.randbytes)
            replies, w = self._exchange(C.SECAGG_STAGE_SETUP, {n: srv.setup_message()
                                                               for n in st.sampled})
            waited += w
            st.stages_run.append(C.SECAGG_STAGE_SETUP)
            roster = srv.on_advertise(replies)
            replies, w = self._exchange(C.SECAGG_STAGE_SHARE_KEYS, dict.fromkeys(srv.u1, roster))
            waited += w
            st.stages_run.append(C.SECAGG_STAGE_SHARE_KEYS)
            u2 = set(srv.on_shares(replies))
            st.spec = modular.spec_for(st.d, self.clip_norm, self.bits, len(u2),
                                       round_seed(self.seed, server_round),
                                       headroom=self.headroom, slack=self.slack,
                                       log2_chunk=self.log2_chunk)
            params = RoundParams(st.spec, float(self.max_weight or 0.0), self.client_metrics,
                                 layout_digest((k, a.dtype, a.shape) for k, a in
                                               st.arrays.items()), weighted_by_key).to_bytes()
            tail = TAIL_FIELDS + sum(int(st.arrays[k].size) for k in st.other_keys)
            out = []
            for m in messages:
                node = int(m.metadata.dst_node_id)
                if node not in u2:
                    continue
                content = RecordDict(dict(m.content.items()))
                content[C.SECAGG_RECORD] = ConfigRecord({
                    C.SECAGG_KEY_STAGE: C.SECAGG_STAGE_MASKED_INPUT,
                    C.SECAGG_KEY_PAYLOAD: srv.mask_request(node, params, st.spec.bits,
                                                           st.spec.padded, tail)})
                out.append(Message(content=content, dst_node_id=node,
                                   message_type=m.metadata.message_type,
                                   group_id=m.metadata.group_id))
        except SecAggAbort as e:
            self._abort(st, e)
            out = []
        st.server_seconds += time.perf_counter() - t_start - waited
        return out

    def _begin(self, server_round: int, arrays: ArrayRecord) -> SecAggRound:
        numpy_arrays: dict[str, np.ndarray] = {}
        for key in arrays.keys():
            if arrays[key].stype != SType.NUMPY:
                raise ValueError(f"global array '{key}' has stype {arrays[key].stype!r}; "
                                 f"secure aggregation needs {SType.NUMPY!r} arrays")
            numpy_arrays[key] = arrays[key].numpy()
        float_keys, other_keys = split_keys(numpy_arrays)
        if not float_keys:
            raise ValueError("secure aggregation needs at least one float array")
        vector = np.concatenate([numpy_arrays[k].astype(np.float64).ravel()
                                 for k in float_keys])
        return SecAggRound(server_round, numpy_arrays, float_keys, other_keys, vector,
                           dropped=dict.fromkeys(_STAGE_METRIC, 0))

    def _exchange(self, stage: str, payloads: dict[int, bytes]
                  ) -> tuple[list[tuple[int, bytes]], float]:
        """Send one stage's messages through the grid; (valid (node, payload) replies,
        seconds spent waiting)."""
        assert self._grid is not None
        grid = self._grid
        msgs = [Message(content=RecordDict({C.SECAGG_RECORD: ConfigRecord(
            {C.SECAGG_KEY_STAGE: stage, C.SECAGG_KEY_PAYLOAD: p})}), dst_node_id=n,
            message_type=MessageType.TRAIN, group_id=str(self.round.server_round
                                                        if self.round else 0))
            for n, p in payloads.items()]
        t = time.perf_counter()
        replies = list(grid.send_and_receive(msgs, timeout=self.stage_timeout))
        waited = time.perf_counter() - t
        return self._payloads(stage, replies, set(payloads)), waited

    def _payloads(self, stage: str, replies: Sequence[Message], expected: set[int]
                  ) -> list[tuple[int, bytes]]:
        out = []
        st = self.round
        for m in replies:
            node = int(m.metadata.src_node_id)
            if node not in expected:
                continue
            if st is not None and self.wire_accounting:
                st.uplink_bytes[node] = st.uplink_bytes.get(node, 0) + message_wire_bytes(
                    as_sent(m))
            if m.has_error():
                log(WARNING, "secagg: round %s, stage %s: node %d replied with an error: %s",
                    st.server_round if st else "?", stage, node, m.error.reason)
                continue
            payload = _stage_payload(m, stage)
            if payload is None:
                log(WARNING, "secagg: stage %s: node %d sent no '%s' record for the stage",
                    stage, node, C.SECAGG_RECORD)
                continue
            out.append((node, payload))
        return out

    def _abort(self, st: SecAggRound, e: SecAggAbort) -> None:
        st.abort_reason = str(e)
        log(ERROR, "secagg: round %d: %s", st.server_round, e)

    # -- aggregate -------------------------------------------------------------------------
    def aggregate(self, server_round: int, replies: Iterable[Message], weighted_by_key: str,
                  metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None
                  = None) -> SecAggOutcome:
        """Unmask the sum of the masked inputs and decode global + weighted mean update."""
        st = self.round
        if st is None or st.server_round != server_round:
            raise RuntimeError(f"aggregate_train for round {server_round} without "
                               "configure_train for it")
        t_start = time.perf_counter()
        waited = 0.0
        replies = list(replies)
        accepted: list[Message] = []
        arrays = None
        client_metrics = None
        total_weight = 0.0
        if st.session is not None and st.abort_reason is None and st.spec is not None:
            srv = st.session
            try:
                masked = self._payloads(C.SECAGG_STAGE_MASKED_INPUT, replies, set(srv.u2))
                by_node = {int(m.metadata.src_node_id): m for m in replies
                           if not m.has_error()}
                st.stages_run.append(C.SECAGG_STAGE_MASKED_INPUT)
                request = srv.on_masked(masked)
                if self.wire_accounting:
                    st.masked_bytes = [message_wire_bytes(as_sent(by_node[n])) for n in srv.u3]
                out, w = self._exchange(C.SECAGG_STAGE_UNMASK, dict.fromkeys(srv.u3, request))
                waited += w
                st.stages_run.append(C.SECAGG_STAGE_UNMASK)
                st.aggregate = agg = srv.on_unmask(out)
                accepted = [by_node[n] for n in agg.survivors]
                arrays, total_weight = self._decode(st, agg)
                if self.client_metrics:
                    client_metrics = _client_metrics(accepted, weighted_by_key, metrics_aggr_fn)
            except SecAggAbort as e:
                self._abort(st, e)
                arrays, accepted = None, []
        st.server_seconds += time.perf_counter() - t_start - waited
        return SecAggOutcome(arrays, client_metrics, self._metrics(st), total_weight, accepted)

    def _decode(self, st: SecAggRound, agg: Aggregate) -> tuple[ArrayRecord, float]:
        spec = st.spec
        assert spec is not None
        tail = agg.tail
        count = int(tail[TAIL_COUNT])
        if count != len(agg.survivors):
            raise SecAggAbort(C.SECAGG_STAGE_UNMASK, f"the unmasked count is {count}, not the "
                              f"{len(agg.survivors)} survivors: an input is malformed")
        weight = int(tail[TAIL_WEIGHT]) / WEIGHT_ONE
        if not weight > 0:
            raise SecAggAbort(C.SECAGG_STAGE_UNMASK, "the total weight of the survivors is 0")
        total = modular.decode_sum(agg.words, spec, [modular_dither_seed(spec.seed, n)
                                                     for n in agg.survivors])
        new_vector = st.vector + total.astype(np.float64) / weight
        extras = tail[TAIL_FIELDS:].view(np.int64).astype(np.float64) / count
        out = ArrayRecord()
        pos, epos = 0, 0
        offsets = {}
        for k in st.float_keys:
            offsets[k] = (pos, pos + st.arrays[k].size)
            pos += st.arrays[k].size
        for k in st.other_keys:
            offsets[k] = (epos, epos + st.arrays[k].size)
            epos += st.arrays[k].size
        for key, old in st.arrays.items():
            a, b = offsets[key]
            if key in st.float_keys:
                value = new_vector[a:b].reshape(old.shape).astype(old.dtype)
            else:
                value = _cast_mean(extras[a:b].reshape(old.shape), old.dtype)
            out[key] = Array(np.asarray(value))
        self._adapt_clip(int(tail[TAIL_CLIPPED]), count)
        return out, weight * (self.max_weight or 1.0)

    def _adapt_clip(self, clipped: int, count: int) -> None:
        """Adaptive clipping (Andrew et al. 2021): C <- C exp(-lr (unclipped - target)),
        from the masked count of clipped clients: no client's own norm is revealed."""
        if self.target_unclipped is None or count == 0:
            return
        unclipped = 1.0 - clipped / count
        self.clip_norm *= math.exp(-self.clip_lr * (unclipped - self.target_unclipped))

    def _metrics(self, st: SecAggRound) -> MetricRecord:
        srv = st.session
        m: dict[str, int | float | list[int] | list[float]] = {
            C.METRIC_SECAGG_SAMPLED: len(st.sampled),
            C.METRIC_SECAGG_ABORTED: int(st.abort_reason is not None),
            C.METRIC_SECAGG_SERVER_SECONDS: st.server_seconds,
            C.METRIC_SECAGG_CLIP_NORM: st.spec.clip_norm if st.spec else self.clip_norm,
        }
        if srv is not None:
            m[C.METRIC_SECAGG_THRESHOLD] = srv.threshold
            m[C.METRIC_SECAGG_OUTVOTED] = len(srv.outvoted)
            if srv.outvoted:
                log(WARNING, "secagg: round %d: the secrets of nodes %s were rebuilt around "
                    "altered shares", st.server_round, sorted(set(srv.outvoted)))
            sets = [st.sampled, srv.u1, srv.u2, srv.u3, srv.u4]
            for i, stage in enumerate(_STAGE_METRIC):
                if stage in st.stages_run:  # the replies of that stage were processed
                    m[_STAGE_METRIC[stage]] = len(sets[i]) - len(sets[i + 1])
        if st.spec is not None:
            m[C.METRIC_SECAGG_MODULUS_BITS] = st.spec.bits
            m[C.METRIC_SECAGG_STEP] = st.spec.step
        agg = st.aggregate
        if agg is not None and st.spec is not None:
            m[C.METRIC_SECAGG_SURVIVORS] = len(agg.survivors)
            m[C.METRIC_SECAGG_CLIPPED] = int(agg.tail[TAIL_CLIPPED])
            m[C.METRIC_SECAGG_WEIGHT_CAPPED] = int(agg.tail[TAIL_CAPPED])
            guard = modular.guard_count(agg.words, st.spec.bits)
            m[C.METRIC_SECAGG_GUARD] = guard
            if guard:
                log(WARNING, "secagg: round %d: %d coordinates of the sum are in the outer "
                    "quarter of the 2**%d range: a wrap is possible; raise headroom or "
                    "clip_norm / bits", st.server_round, guard, st.spec.bits)
            if st.masked_bytes:
                mean = float(np.mean(st.masked_bytes))
                m[C.METRIC_UPLINK_BYTES] = mean
                m[C.METRIC_SECAGG_BITS_PER_COORD] = 8.0 * mean / st.d
                m[C.METRIC_SECAGG_UPLINK_ALL_STAGES] = float(np.mean(
                    [st.uplink_bytes[n] for n in agg.survivors if n in st.uplink_bytes]))
        else:
            m[C.METRIC_SECAGG_SURVIVORS] = 0
        return MetricRecord(m)


def _stage_payload(m: Message, stage: str) -> bytes | None:
    """The protocol bytes of a reply of ``stage``: the record's payload, or for the
    masked input the masked Array's bytes."""
    rec = m.content.config_records.get(C.SECAGG_RECORD)
    if rec is None or rec.get(C.SECAGG_KEY_STAGE) != stage:
        return None
    if stage != C.SECAGG_STAGE_MASKED_INPUT:
        p = rec.get(C.SECAGG_KEY_PAYLOAD)
        return p if isinstance(p, bytes) else None
    found = [a for r in m.content.array_records.values() for k, a in r.items()
             if k == C.SECAGG_MASKED_KEY and a.stype == C.SECAGG_MASKED_STYPE]
    if len(m.content.array_records) != 1 or len(found) != 1:
        return None
    return bytes(found[0].data)


def _client_metrics(accepted: list[Message], key: str,
                    fn: Callable[[list[RecordDict], str], MetricRecord] | None
                    ) -> MetricRecord | None:
    contents = [m.content for m in accepted if len(m.content.metric_records) == 1]
    if not contents:
        return None
    if all(key in next(iter(c.metric_records.values())) for c in contents):
        return (fn or aggregate_metricrecords)(contents, key)
    return None


def _cast_mean(mean: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """An unweighted mean of integer/bool arrays back in their dtype (rounded; majority)."""
    if dtype.kind == "b":
        return mean >= 0.5
    return np.rint(mean).astype(dtype)


_DOC_PARAMS = """
    clip_norm : float
        C, the L2 norm every client clips its update to (after which the code is exactly
        unbiased). The lattice step, hence the noise, scales with it: set it a little
        above the norms honest clients send (or let ``target_unclipped`` adapt it).
    bits : int (default: 4)
        b: 2**b lattice steps span +-2 standard deviations of one client's rotated
        coordinates. The wire carries m = b + ceil(log2 K) + headroom bits per coordinate
        for K clients; the mean's noise is E||err||^2 = (4/3) slack**2 C**2 / (K 4**b).
    headroom : int (default: 2)
        Extra bits so that the modular sum of K clients does not wrap even when all point
        the same way at the clip norm (probability bound: ``fedhd.modular``).
    threshold : int or float (default: 2/3)
        t, the shares that rebuild a secret: an int, or a fraction of the sampled clients
        (of ``num_shares`` when set), at least 2. A round survives as long as t clients
        (per neighbourhood) answer every stage; coalitions of the server with fewer than
        t clients learn nothing beyond the sum.
    num_shares : int, optional
        None: every client shares with every other (SecAgg). An odd int: the SecAgg+
        ring neighbourhood of that many clients (less work per client for large K).
    max_weight : float, optional
        None: an unweighted mean (every client weight 1). A number W: weighted by the
        reply's ``weighted_by_key`` (num-examples), capped at W; each client scales its
        clipped update by min(w, W) / W before coding and adds that factor to a masked
        counter, so the server learns only the total weight.
    slack : float (default: 1.5)
        Per-chunk clip C_c = slack C sqrt(n / D) after the random permutation.
    log2_chunk : int, optional
        Hadamard chunk exponent (``fedhd.modular.choose_log2_chunk`` when None).
    seed : int (default: 0)
        Base of the round seeds (rotation, permutation, dithers).
    target_unclipped : float, optional
        Adaptive clipping: the fraction of clients that should not need clipping; C moves
        geometrically by ``clip_lr`` each round from the masked clipped count.
    client_metrics : bool (default: False)
        Let clients send their MetricRecord in the clear and aggregate it (it is not
        protected by the protocol).
    stage_timeout : float (default: 3600)
        Seconds each extra protocol exchange waits for replies.
    wire_accounting : bool (default: True)
        Measure the wire bytes of every reply (metrics ``fedhd.uplink_bytes`` ...).
"""


#: Keyword options of ``SecureAggregator`` that ``SecAggFedAvg`` takes out of its keywords
#: (the rest go to FedAvg) and ``SecAggStrategy`` passes on.
SECAGG_OPTIONS = ("headroom", "threshold", "num_shares", "max_weight", "slack", "log2_chunk",
                  "seed", "target_unclipped", "clip_lr", "client_metrics", "stage_timeout",
                  "wire_accounting", "randbytes")


class SecAggFedAvg(FedAvg):
    """FedAvg whose server learns only the sum of the clients' updates (with
    ``secagg_mod`` on the clients): masked summable codes, SecAgg/SecAgg+ protocol.

    Parameters
    ----------""" + _DOC_PARAMS + """    **fedavg_kwargs
        Any ``flwr.serverapp.strategy.FedAvg`` argument (fraction_train, min_train_nodes,
        weighted_by_key, ...).

    The round's state (survivors, the unmasked integer sum, the spec) stays in
    ``self.secagg.round`` until the next round.
    """

    def __init__(self, clip_norm: float, bits: int = 4, **kwargs: Any) -> None:
        options = {k: v for k, v in kwargs.items() if k in SECAGG_OPTIONS}
        super().__init__(**{k: v for k, v in kwargs.items() if k not in SECAGG_OPTIONS})
        self.secagg = SecureAggregator(clip_norm, bits, **options)

    def summary(self) -> None:
        s = self.secagg
        log(INFO, "\t├──> secure aggregation: clip %.4g | bits %d + log2 K + %d | "
            "threshold %s", s.clip_norm, s.bits, s.headroom, s.threshold)
        super().summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """FedAvg's sampling and train messages, after SETUP and SHARE-KEYS."""
        messages = super().configure_train(server_round, arrays, config, grid)
        return self.secagg.configure(server_round, arrays, messages, grid, self.weighted_by_key)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """UNMASK, then global + (weighted) mean update."""
        outcome = self.secagg.aggregate(server_round, replies, self.weighted_by_key,
                                        self.train_metrics_aggr_fn)
        metrics = MetricRecord(dict(outcome.client_metrics or {}))
        metrics.update(outcome.metrics)
        return outcome.arrays, metrics


class SecAggStrategy(InnerStrategyKeys, Strategy):
    """Secure aggregation around a mean-based Message-API strategy (FedAvg, FedProx,
    FedAvgM, FedAdam, FedAdagrad, FedYogi): the inner strategy samples and configures, the
    protocol replaces its train replies by ONE reply holding global + mean update, and
    the inner ``aggregate_train`` applies its server step to it. Robust aggregators that
    look at single replies (Krum, FedMedian, ...) cannot be wrapped: no single update is
    ever seen.

    Parameters
    ----------
    strategy : Strategy
        The inner strategy.""" + _DOC_PARAMS + """
    Examples
    --------
    >>> strategy = SecAggStrategy(FedAdam(eta=1e-2), clip_norm=2.0, bits=4)
    """

    def __init__(self, strategy: Strategy, clip_norm: float, bits: int = 4,
                 **options: Any) -> None:
        super().__init__()
        if any(hasattr(strategy, a) for a in ("compressor",)):
            raise TypeError("SecAggStrategy cannot wrap a compressed strategy: fedhd blobs "
                            "(per-client scales, entropy-coded lengths) cannot be masked and "
                            "summed; secure aggregation brings its own summable code")
        self.strategy = strategy
        self.secagg = SecureAggregator(clip_norm, bits, **options)

    def summary(self) -> None:
        log(INFO, "\t├──> secure aggregation around %s", type(self.strategy).__name__)
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = self.strategy.configure_train(server_round, arrays, config, grid)
        return self.secagg.configure(server_round, arrays, messages, grid, self.weighted_by_key)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        outcome = self.secagg.aggregate(server_round, replies, self.weighted_by_key,
                                        getattr(self.strategy, "train_metrics_aggr_fn", None))
        if outcome.arrays is None:
            return None, outcome.metrics
        return self.aggregate_mean(server_round, outcome.arrays, outcome.total_weight,
                                   outcome.client_metrics, outcome.accepted[0],
                                   outcome.metrics)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
