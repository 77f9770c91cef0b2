"""Client-side error feedback: what a biased compressor leaves out is sent later, not lost.

A biased method (``Method.unbiased`` False: topk, scaled-sign, powersgd, turboquant, fp16)
drops the same part of an update every round (topk's tail, the magnitudes scaled-sign
flattens, what lies outside powersgd's rank-r subspace), so plain averaging never recovers
it. With error feedback (Seide et al. 2014; Stich, Cordonnier, Jaggi 2018; Karimireddy,
Rebjock, Stich, Jaggi 2019) each node keeps a residual e (e_0 = 0) and, for its update u_t
of round t, sends

    blob_t = encode(u_t + e_t),    e_{t+1} = u_t + e_t - decode(blob_t),

so that sum_{t < T} decode(blob_t) = sum_{t < T} u_t - e_T: every coordinate arrives, at
most delayed, and the server's aggregation is unchanged (it decodes blobs as before).

The server decides: the train-config key ``fedhd.error-feedback`` (``strategies.settings``;
absent: on for biased methods, off for unbiased ones), set by the strategies' option
``error_feedback`` (None: that default). The residual lives in the node's
``Context.state`` under ``constants.STATE_RESIDUAL``: an ArrayRecord of float32 arrays,
one per compressed float array, with its key and shape. powersgd's warm start (the Q of
every matrix from the last round) lives beside it under ``constants.STATE_POWERSGD_Q``.

Reset: a residual that is absent (a new node, or one that restarted: ``Context.state``
lives in the SuperNode's memory, so a restart loses it) or whose keys or shapes differ
from this round's update (a new model) is treated as zero; so is one whose sum with the
update overflows float32. Starting from zero is safe, it only forgets the delayed part.
A powersgd warm start that does not fit a matrix is replaced by the random start. A round
with error feedback off drops the stored residual, so a later round does not add a stale
one; an update that cannot be encoded drops it too (the round answers with an error).
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.supercore import log

import fedhd
from fedhd.methods.powersgd import PowerSGDContext

from . import constants as C
from .settings import Settings

Shape = tuple[int, ...]


def load_residual(state: RecordDict, keys: Sequence[str], shapes: Sequence[Shape]
                  ) -> np.ndarray | None:
    """The stored residual as one float32 vector in the order of ``keys``; None when it is
    absent, malformed, or its keys or shapes differ from ``keys`` and ``shapes``."""
    record = state.get(C.STATE_RESIDUAL)
    if not isinstance(record, ArrayRecord) or list(record.keys()) != list(keys):
        return None
    parts = []
    for key, shape in zip(keys, shapes, strict=True):
        try:
            a = record[key].numpy()
        except (TypeError, ValueError):
            return None
        if a.dtype != np.float32 or a.shape != tuple(shape) or not np.isfinite(a).all():
            return None
        parts.append(a.ravel())
    return np.concatenate(parts) if parts else np.empty(0, np.float32)


def store_residual(state: RecordDict, keys: Sequence[str], shapes: Sequence[Shape],
                   residual: np.ndarray) -> None:
    """Keep ``residual`` (float32, the update's layout) in the node's state."""
    record, pos = ArrayRecord(), 0
    for key, shape in zip(keys, shapes, strict=True):
        n = int(np.prod(shape, dtype=np.int64))
        record[key] = Array(np.ascontiguousarray(residual[pos:pos + n].reshape(shape)))
        pos += n
    state[C.STATE_RESIDUAL] = record


def drop_residual(state: RecordDict) -> None:
    if C.STATE_RESIDUAL in state:
        del state[C.STATE_RESIDUAL]


def load_warm_start(state: RecordDict, keys: Sequence[str]) -> list[np.ndarray | None]:
    """powersgd's stored Q per key (None where there is none); the encoder checks shapes."""
    record = state.get(C.STATE_POWERSGD_Q)
    if not isinstance(record, ArrayRecord):
        return [None] * len(keys)
    out: list[np.ndarray | None] = []
    for key in keys:
        try:
            out.append(record[key].numpy() if key in record else None)
        except (TypeError, ValueError):
            out.append(None)
    return out


def store_warm_start(state: RecordDict, keys: Sequence[str],
                     warm: Sequence[np.ndarray | None]) -> None:
    state[C.STATE_POWERSGD_Q] = ArrayRecord(
        {k: Array(np.ascontiguousarray(q)) for k, q in zip(keys, warm) if q is not None})


def encode_update(update: np.ndarray, keys: Sequence[str], shapes: Sequence[Shape],
                  settings: Settings, dither_seed: int, state: RecordDict | None) -> bytes:
    """The blob of one node's update (float32, the float arrays ``keys`` of ``shapes``
    concatenated), with error feedback when the settings ask for it and ``state`` (the
    node's ``Context.state``) is given; the state then holds the new residual (and
    powersgd's new warm start). ValueError when the update cannot be encoded."""
    codec = settings.codec()
    ef = settings.uses_error_feedback and state is not None
    residual = None
    if state is not None:
        if ef:
            residual = load_residual(state, keys, shapes)
        else:
            drop_residual(state)
    sent = update
    if residual is not None:
        with np.errstate(over="ignore", invalid="ignore"):
            sent = update + residual
        if not np.isfinite(sent).all():
            log(WARNING, "fedhd error feedback: update + residual overflows; residual reset")
            sent = update
    context = None
    if codec.method.takes_context:  # powersgd: the tensor shapes and the warm start
        context = PowerSGDContext(
            [tuple(s) for s in shapes],
            load_warm_start(state, keys) if state is not None else [])
    try:
        blob = codec.encode(sent, seed=settings.seed, dither_seed=dither_seed,
                            context=context)
    except ValueError:
        if state is not None:
            drop_residual(state)
        raise
    if state is not None:
        if ef:
            store_residual(state, keys, shapes, sent - fedhd.decode(blob))
        if context is not None:
            store_warm_start(state, keys, context.warm_start)
    return blob
