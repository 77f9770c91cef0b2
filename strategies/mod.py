"""``compression_mod``: a Flower client mod that sends train replies as one fedhd blob.

Add it to an existing ClientApp, unchanged otherwise::

    from strategies import compression_mod
    app = ClientApp(mods=[compression_mod])

On a train message whose config carries the ``fedhd.*`` keys (see
``strategies.constants``), the mod runs the app, takes the update (reply arrays minus the
arrays the server sent), encodes every float array into ONE blob with the method, bits and
round seed the server chose, and puts that blob in place of the float arrays. Non-float
arrays (e.g. BatchNorm ``num_batches_tracked``), and float arrays whose keys match the
server's ``fedhd.exact`` patterns, travel exactly as the app returned them.
The reply stays valid for FedAvg-style strategies: the ArrayRecord keeps its record key,
the MetricRecord is untouched, and a ConfigRecord ``fedhd`` records the float keys.

With the compressed downlink (``CompressedFedAvg(downlink=...)``), train and evaluate
messages carry the deltas of the public model P (or a keyframe): the mod rebuilds the full
model from the copy of P it keeps in the node's ``Context.state`` before the app runs, so
the app sees an ordinary message; the update is then measured against that P. A node whose
copy does not fit (it restarted, or missed a reply) answers with an error reply saying so
(``constants.DOWN_OUT_OF_SYNC``) and gets a keyframe next time.

Error feedback (``strategies.error_feedback``): for biased methods (topk, scaled-sign,
powersgd, turboquant, fp16), unless the server's ``fedhd.error-feedback`` says otherwise,
the mod keeps a residual e per node in ``Context.state`` (``constants.STATE_RESIDUAL``),
sends encode(update + e) and keeps e = update + e - decode(blob); powersgd's warm start
lives there too (``constants.STATE_POWERSGD_Q``). A node that restarts loses its
``Context.state``, and so its residual: error feedback then restarts from zero, which is
safe (the delayed part is forgotten, nothing else changes). A stored residual whose keys or
shapes differ from the update (a new model) is likewise treated as zero.

Query messages, and train messages without the ``fedhd.*`` keys, pass through unchanged.
A precondition that fails (e.g. a reply with two ArrayRecords, arrays whose keys or shapes
differ from the ones received, or a NaN update) gives a Flower error reply with
``ErrorCode.MOD_FAILED_PRECONDITION``, never an exception.

Each client's dither seed (``fedhd.rng.client_dither_seed``) derives from the round seed
and the node's ``partition-id`` when its node config has one (simulations: the Simulation
Engine draws new node ids every run, partition ids stay, so runs repeat exactly), else its
node id: independent across clients and written in the blob header, so the server needs
nothing else.
"""

from __future__ import annotations

from logging import DEBUG
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore import log

from fedhd.rng import client_dither_seed

from . import constants as C
from .downlink import OutOfSync, find_downlink_record, receive
from .error_feedback import encode_update
from .mod_support import error_reply, is_evaluate, is_train, numpy_array
from .settings import PreconditionError, Settings, find_settings_record, is_exact

_MOD = "compression_mod"


def rebuild_model(msg: Message, down: ConfigRecord, context: Context) -> ConfigRecord:
    """Put the full model into ``msg``: the node's public model P advanced by the message's
    deltas, or its keyframe (``strategies.downlink.receive``); the app then sees a plain
    message. Returns the acknowledgement for the reply (the version and hash now held).
    OutOfSync when the node's copy does not fit (the server then sends a keyframe)."""
    if len(msg.content.array_records) != 1:
        raise OutOfSync(f"expects one ArrayRecord, found {len(msg.content.array_records)}")
    key, record = next(iter(msg.content.array_records.items()))
    msg.content[key] = receive(record, down, context.state)
    meta = cast(ConfigRecord, context.state[C.STATE_PUBLIC_META])
    return ConfigRecord({C.KEY_DOWN_VERSION: meta["version"], C.KEY_DOWN_HASH: meta["hash"]})


def node_dither_seed(round_seed: int, msg: Message, context: Context) -> int:
    """``fedhd.rng.client_dither_seed`` for the node that received ``msg`` (its node id
    when the partition id is missing or not an integer)."""
    try:
        pid: int | None = int(context.node_config["partition-id"])
    except (KeyError, TypeError, ValueError):
        pid = None
    return client_dither_seed(round_seed, msg.metadata.dst_node_id, pid)


def _numpy(array: Array, key: str, where: str) -> np.ndarray:
    return numpy_array(array, key, where, PreconditionError, "compressed")


def compress_arrays(
    received: ArrayRecord | dict[str, Array],
    returned: ArrayRecord,
    settings: Settings,
    dither: int,
    state: RecordDict | None = None,
) -> tuple[ArrayRecord, ConfigRecord] | None:
    """The compressed ArrayRecord and its ``fedhd`` ConfigRecord for one reply.

    ``received`` are the arrays the server sent, ``returned`` the ones the app replies
    with; the update returned - received of every float array goes into one blob. Returns
    None when there is no float array to compress. PreconditionError when the two do not
    match or the update is not finite. ``state``: the node's ``Context.state``, where
    error feedback keeps its residual and powersgd its warm start
    (``strategies.error_feedback``); without it the update is encoded as it is.
    """
    if set(returned.keys()) != set(received.keys()):
        missing = sorted(set(received) - set(returned))
        extra = sorted(set(returned) - set(received))
        raise PreconditionError(
            "the reply's arrays must have the keys of the arrays received "
            f"(missing: {missing}, unexpected: {extra})"
        )
    if C.BLOB_KEY in returned:
        raise PreconditionError(f"array key '{C.BLOB_KEY}' is reserved for the blob")
    float_keys: list[str] = []
    float_shapes: list[tuple[int, ...]] = []
    parts: list[np.ndarray] = []
    kept: dict[str, Array] = {}
    for key, array in returned.items():
        new = _numpy(array, key, "reply")
        old = _numpy(received[key], key, "message received")
        if (new.dtype.kind == "f" or old.dtype.kind == "f") and not is_exact(
                key, settings.exact):
            if new.shape != old.shape:
                raise PreconditionError(
                    f"array '{key}' has shape {new.shape} in the reply and {old.shape} "
                    "in the message received"
                )
            if new.dtype.kind != "f" or old.dtype.kind != "f":
                raise PreconditionError(
                    f"array '{key}' changed dtype from {old.dtype} to {new.dtype}"
                )
            diff = new.astype(np.float64, copy=False) - old.astype(np.float64, copy=False)
            parts.append(diff.astype(np.float32).ravel())
            float_keys.append(key)
            float_shapes.append(tuple(new.shape))
        else:
            kept[key] = array  # non-float or an exact pattern: as the app returned it
    if not parts:
        return None
    update = np.concatenate(parts)
    try:
        blob = encode_update(update, float_keys, float_shapes, settings, dither, state)
    except ValueError as e:
        raise PreconditionError(f"cannot encode the update: {e}") from None
    arrays = ArrayRecord()
    arrays[C.BLOB_KEY] = Array(
        dtype=C.BLOB_DTYPE, shape=(len(blob),), stype=C.BLOB_STYPE, data=blob
    )
    for key, array in kept.items():
        arrays[key] = array
    meta = ConfigRecord({C.KEY_FORMAT: C.FORMAT_VERSION, C.KEY_FLOAT_KEYS: float_keys})
    return arrays, meta


def compression_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower client mod: compress the update of every train reply into one fedhd blob.

    See the module docstring. Use with ``CompressedFedAvg`` (or ``CompressedStrategy``)
    on the server, which writes the ``fedhd.*`` train config keys this mod reads.
    """
    if not msg.has_content() or not (is_train(msg) or is_evaluate(msg)):
        return call_next(msg, context)
    down = find_downlink_record(msg.content)
    if down is None:
        return _uplink(msg, context, call_next) if is_train(msg) else call_next(msg, context)
    try:  # the compressed downlink: rebuild the full model first
        ack = rebuild_model(msg, down, context)
    except OutOfSync as e:
        return error_reply(msg, _MOD, f"{C.DOWN_OUT_OF_SYNC}: {e}")
    reply = _uplink(msg, context, call_next) if is_train(msg) else call_next(msg, context)
    if reply.has_content():  # tell the server which model this node now holds
        reply.content[C.DOWN_ACK_RECORD] = ack
    return reply


def _uplink(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The train reply, its update compressed as the message's ``fedhd.*`` keys ask."""
    settings_record = find_settings_record(msg.content)
    if settings_record is None:
        return call_next(msg, context)
    try:
        settings = Settings.from_config(settings_record)
    except PreconditionError as e:
        return error_reply(msg, _MOD, str(e))
    if len(msg.content.array_records) != 1:
        return error_reply(
            msg, _MOD, f"expects exactly one ArrayRecord in the train message, found "
            f"{len(msg.content.array_records)}"
        )
    # Keep the Array objects received: the app may replace or mutate the records.
    received = dict(next(iter(msg.content.array_records.values())).items())

    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    if len(reply.content.array_records) != 1:
        return error_reply(
            msg, _MOD, f"expects exactly one ArrayRecord in the train reply, found "
            f"{len(reply.content.array_records)}"
        )
    if C.REPLY_RECORD in reply.content:
        return error_reply(msg, _MOD, f"record key '{C.REPLY_RECORD}' is reserved in the reply")
    record_key, returned = next(iter(reply.content.array_records.items()))
    try:
        compressed = compress_arrays(
            received, returned, settings, node_dither_seed(settings.seed, msg, context),
            context.state,
        )
    except PreconditionError as e:
        return error_reply(msg, _MOD, str(e))
    if compressed is None:  # nothing to compress: the reply goes as it is
        return reply
    arrays, meta = compressed
    reply.content[record_key] = arrays
    reply.content[C.REPLY_RECORD] = meta
    log(DEBUG, "%s: update sent as a %d-byte %s blob", _MOD, len(arrays[C.BLOB_KEY].data),
        settings.method)
    return reply
