"""``secagg_mod``: the client side of secure aggregation, a Flower mod.

Add it to an existing ClientApp next to (or instead of) the compression mod::

    app = ClientApp(mods=[secagg_mod, compression_mod])

and use ``SecAggFedAvg`` (or ``SecAggStrategy``) on the server. Every protocol stage
arrives as a ``train`` message holding the ConfigRecord ``fedhd.secagg`` (keys in
``strategies.constants``): the mod answers the key-exchange and unmask stages itself,
without calling the app, and keeps its per-round secrets in ``Context.state`` (record
``fedhd.secagg.state``), as Flower's own mods keep theirs. In the masked-input stage it
lets the app train, takes the update (reply arrays minus the arrays received), clips,
weights and encodes it with the round's summable code (``fedhd.modular``), masks it and
replies with ONE Array ``fedhd.secagg.masked`` in place of the model: the server never
receives the update, only a vector that is uniform on Z_{2^m}^n. The app's MetricRecord
is dropped unless the server asked for it (``client_metrics=True``), since it would travel
in the clear.

Train messages without the ``fedhd.secagg`` record (plain FedAvg, CompressedFedAvg) and
every evaluate or query message pass through unchanged, so one ClientApp serves both
kinds of server. Anything refused (a malformed or tampered message, a replay, a stage out
of order, arrays that do not match the round's layout, a non-finite update) gives a Flower
error reply (``MOD_FAILED_PRECONDITION``) with the reason, never an exception; the server
then treats the client as dropped at that stage.
"""

from __future__ import annotations

import math
import time
from logging import DEBUG

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore import log

from fedhd import modular
from fedhd.errors import DecodeError
from fedhd.rng import modular_dither_seed

from .. import constants as C
from ..mod_support import error_reply, is_train, numpy_array
from .crypto import CryptoError
from .params import (
    TAIL_CAPPED,
    TAIL_CLIPPED,
    TAIL_COUNT,
    TAIL_FIELDS,
    TAIL_WEIGHT,
    RoundParams,
    layout_digest,
    split_keys,
    weight_fixed,
)
from .protocol import ClientSession, Kind, ProtocolError, StaleMessage, read_head

_MOD = "secagg_mod"


class _Refused(ValueError):
    """A precondition of the masked-input stage failed."""


def _stage_reply(msg: Message, stage: str, payload: bytes) -> Message:
    content = RecordDict({C.SECAGG_RECORD: ConfigRecord(
        {C.SECAGG_KEY_STAGE: stage, C.SECAGG_KEY_PAYLOAD: payload})})
    return Message(content, reply_to=msg)


def _load(context: Context) -> ClientSession:
    rec = context.state.config_records.get(C.SECAGG_STATE_RECORD)
    data = None if rec is None else rec.get("state")
    if not isinstance(data, bytes):
        raise ProtocolError("no secure-aggregation session on this node (setup missing, or "
                            "the node restarted)")
    return ClientSession.from_bytes(data)


def _save(context: Context, session: ClientSession) -> None:
    context.state[C.SECAGG_STATE_RECORD] = ConfigRecord({"state": session.to_bytes()})


def _clear(context: Context) -> None:
    if C.SECAGG_STATE_RECORD in context.state:
        del context.state[C.SECAGG_STATE_RECORD]


def _refuse_replayed_setup(context: Context, payload: bytes) -> None:
    """A SETUP of the session this node is in, or of another session of the same or an
    earlier round (rounds only grow within a run), is a replay: refused, so that an old
    message cannot reset the round under way."""
    session, server_round, _ = read_head(payload, Kind.SETUP)
    try:
        current = _load(context)
    except (ProtocolError, DecodeError):
        return
    if current.session == session:
        raise StaleMessage("a second SETUP of the current session (replayed)")
    if server_round <= current.server_round:
        raise StaleMessage(f"a SETUP of round {server_round} while this node is in round "
                           f"{current.server_round} (replayed from another session)")


def _time(context: Context, stage: str, seconds: float) -> None:
    if stage == C.SECAGG_STAGE_SETUP or C.SECAGG_TIMING_RECORD not in context.state:
        context.state[C.SECAGG_TIMING_RECORD] = MetricRecord()
    context.state.metric_records[C.SECAGG_TIMING_RECORD][stage] = float(seconds)


def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower client mod: secure aggregation of the train update (see the module docstring).
    Pair it with ``SecAggFedAvg`` or ``SecAggStrategy``."""
    if not is_train(msg) or not msg.has_content():
        return call_next(msg, context)
    record = msg.content.config_records.get(C.SECAGG_RECORD)
    if record is None:
        return call_next(msg, context)
    stage = record.get(C.SECAGG_KEY_STAGE)
    payload = record.get(C.SECAGG_KEY_PAYLOAD)
    node = int(msg.metadata.dst_node_id)
    t0 = time.perf_counter()
    try:
        if not isinstance(payload, bytes):
            raise DecodeError(f"'{C.SECAGG_KEY_PAYLOAD}' must be bytes")
        if stage == C.SECAGG_STAGE_SETUP:
            _refuse_replayed_setup(context, payload)
            _clear(context)  # a new session replaces any unfinished one
            session, out = ClientSession.start(node, payload)
            _save(context, session)
        elif stage == C.SECAGG_STAGE_SHARE_KEYS:
            session = _load(context)
            out = session.on_roster(payload)
            _save(context, session)
        elif stage == C.SECAGG_STAGE_MASKED_INPUT:
            return _masked_input(msg, context, call_next, _load(context), payload, t0)
        elif stage == C.SECAGG_STAGE_UNMASK:
            out = _load(context).on_unmask_request(payload)
            _clear(context)  # secrets of the round are gone
        else:
            raise ProtocolError(f"unknown secure-aggregation stage {stage!r}")
    except StaleMessage as e:  # a replay or a stale stage: refused, the session goes on
        return error_reply(msg, _MOD, f"stage {stage!r} refused: {e}")
    except (DecodeError, ProtocolError, CryptoError) as e:
        _clear(context)
        return error_reply(msg, _MOD, f"stage {stage!r} refused: {e}")
    _time(context, str(stage), time.perf_counter() - t0)
    log(DEBUG, "%s: stage %s answered (%d bytes)", _MOD, stage, len(out))
    return _stage_reply(msg, str(stage), out)


def _masked_input(msg: Message, context: Context, call_next: ClientAppCallable,
                  session: ClientSession, payload: bytes, t0: float) -> Message:
    try:
        params = RoundParams.from_bytes(session.on_mask_request(payload))
        if len(msg.content.array_records) != 1:
            raise _Refused(f"expects one ArrayRecord in the train message, found "
                           f"{len(msg.content.array_records)}")
        received = {k: _numpy(a, k, "message received")
                    for k, a in next(iter(msg.content.array_records.values())).items()}
        if layout_digest((k, a.dtype, a.shape) for k, a in received.items()) != params.digest:
            raise _Refused("the arrays received do not match the round's model layout")
    except StaleMessage as e:
        return error_reply(msg, _MOD, f"stage 'masked-input' refused: {e}")
    except (DecodeError, ProtocolError, CryptoError, _Refused) as e:
        _clear(context)
        return error_reply(msg, _MOD, f"stage 'masked-input' refused: {e}")
    setup_s = time.perf_counter() - t0
    # the session has left the SHARED stage: store that before the app runs, so that a
    # re-sent mask request (after an app exception, say) is refused and no second input
    # is ever masked with the same masks (their difference would reveal x1 - x2)
    _save(context, session)

    reply = call_next(msg, context)  # the app trains
    t1 = time.perf_counter()
    if reply.has_error():
        _clear(context)  # a dropout: the server recovers from the others' shares
        return reply
    try:
        record_key, words, tail, spec = _encode_reply(msg, reply, received, params)
        masked = session.mask(words, spec.bits, tail)
    except (ProtocolError, _Refused, ValueError) as e:
        _clear(context)
        return error_reply(msg, _MOD, f"stage 'masked-input' refused: {e}")
    _save(context, session)
    content = RecordDict({
        record_key: ArrayRecord({C.SECAGG_MASKED_KEY: Array(
            dtype="uint8", shape=(len(masked),), stype=C.SECAGG_MASKED_STYPE, data=masked)}),
        C.SECAGG_RECORD: ConfigRecord({C.SECAGG_KEY_STAGE: C.SECAGG_STAGE_MASKED_INPUT}),
    })
    if params.client_metrics:
        for key, metrics in reply.content.metric_records.items():
            content[key] = metrics
    _time(context, C.SECAGG_STAGE_MASKED_INPUT, setup_s + time.perf_counter() - t1)
    return Message(content, reply_to=msg)


def _numpy(array: Array, key: str, where: str) -> np.ndarray:
    return numpy_array(array, key, where, _Refused, "aggregated securely")


def _encode_reply(msg: Message, reply: Message, received: dict[str, np.ndarray],
                  params: RoundParams) -> tuple[str, np.ndarray, np.ndarray, modular.ModularSpec]:
    """(record key, code words, tail) of the app's reply."""
    if len(reply.content.array_records) != 1:
        raise _Refused(f"expects one ArrayRecord in the train reply, found "
                       f"{len(reply.content.array_records)}")
    record_key, returned = next(iter(reply.content.array_records.items()))
    if set(returned.keys()) != set(received):
        raise _Refused("the reply's arrays must have the keys of the arrays received")
    new = {k: _numpy(a, k, "reply") for k, a in returned.items()}
    float_keys, other_keys = split_keys(received)
    for k, old in received.items():
        if new[k].shape != old.shape or (new[k].dtype.kind == "f") != (old.dtype.kind == "f"):
            raise _Refused(f"array '{k}' is {new[k].dtype}{list(new[k].shape)} in the reply, "
                           f"{old.dtype}{list(old.shape)} in the message received")
    spec = params.spec
    update = np.concatenate(
        [(new[k].astype(np.float64) - received[k].astype(np.float64)).ravel()
         for k in float_keys] or [np.zeros(0)])
    if update.size != spec.d:
        raise _Refused(f"the update has {update.size} float coordinates, the round {spec.d}")
    if not np.isfinite(update).all():
        raise _Refused("the update holds NaN or Inf")
    weight, capped = 1.0, False
    omega = 1 << 20
    if params.max_weight > 0:
        metrics = list(reply.content.metric_records.values())
        w = metrics[0].get(params.weight_key) if len(metrics) == 1 else None
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) \
                or w <= 0:
            raise _Refused(f"a weighted round needs one MetricRecord with a positive "
                           f"'{params.weight_key}', got {w!r}")
        omega, capped = weight_fixed(float(w), params.max_weight)
        weight = omega / (1 << 20)
    enc = modular.encode(update.astype(np.float32), spec,
                         modular_dither_seed(spec.seed, int(msg.metadata.dst_node_id)), weight)
    extras = [np.asarray(new[k]).astype(np.int64).ravel() for k in other_keys]
    tail = np.zeros(TAIL_FIELDS, np.uint64)
    tail[TAIL_COUNT], tail[TAIL_WEIGHT] = 1, omega
    tail[TAIL_CLIPPED], tail[TAIL_CAPPED] = int(enc.clipped), int(capped)
    tail = np.concatenate([tail, *(e.view(np.uint64) for e in extras)])
    return record_key, enc.words, tail, spec
