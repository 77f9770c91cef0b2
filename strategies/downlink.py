"""Compressed downlink: the server broadcasts compressed model deltas with error feedback,
and every client that trains holds exactly the model the server thinks it holds.

The server keeps the public model P_v (float32 arrays; version v), the model every
up-to-date node holds bit for bit. With ``precision="bfloat16"`` P's values are kept on the
bfloat16 grid (round to nearest even, float32 range): every P_v is rounded there on both
sides, and a keyframe then costs 2 bytes per coordinate instead of 4. The rounding is part
of what the error feedback carries, so G does not lose it.

When the strategy's global model G changes, the server encodes G - P_{v-1} with a fedhd
method and sets P_v = P_{v-1} + decode(blob), decoding with the same deterministic kernels
a node uses. What the compression left out stays in G - P_v and
is sent with the next delta: error feedback in model space (EF21-P, Gruntkowska et al.
2023; DoubleSqueeze, Tang et al. 2019). Nodes train from P_v, which is what they received,
and their updates are measured against it, so the uplink stays unbiased relative to it.

Per node the server records the last version the node acknowledged (a reply of it came
back). A node behind gets the deltas it missed when they are kept (at most ``max_deltas``)
and their bytes total less than a keyframe's, else a keyframe: the full P_v, exact. A node
seen for the first time, or after an error reply, gets a keyframe. A node whose stored
version or model hash does not fit the message answers with an error reply
(``constants.DOWN_OUT_OF_SYNC``) and drops its copy, so no node ever trains on a model
other than P_v.

``PublicModel`` is the server half; ``receive`` the node half (called by
``compression_mod``); the message format is in ``strategies.constants`` (``KEY_DOWN_*``).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

import fedhd
from fedhd.rng import downlink_seeds

from . import constants as C
from .settings import float_keys, make_codec, numpy_arrays


class OutOfSync(ValueError):
    """A node's copy of the public model does not fit the message it received."""


def model_hash(vector: np.ndarray) -> str:
    """SHA-256 (hex) of a float32 vector's bytes."""
    return hashlib.sha256(np.ascontiguousarray(vector, np.float32).tobytes()).hexdigest()


def _split(vector: np.ndarray, like: dict[str, np.ndarray], keys: list[str]
           ) -> dict[str, np.ndarray]:
    """The float arrays ``keys`` cut from ``vector``, in the shapes and dtypes of ``like``."""
    out, pos = {}, 0
    for k in keys:
        n = like[k].size
        out[k] = vector[pos:pos + n].reshape(like[k].shape).astype(like[k].dtype)
        pos += n
    return out


def _concat(arrays: dict[str, np.ndarray], keys: list[str]) -> np.ndarray:
    return (np.concatenate([arrays[k].ravel() for k in keys]).astype(np.float32) if keys
            else np.empty(0, np.float32))


#: The grids P can be kept on (``PublicModel(precision=...)``).
PRECISIONS = ("float32", "bfloat16")


def to_bfloat16_bits(vector: np.ndarray) -> np.ndarray:
    """The upper 16 bits (uint16) of float32 ``vector`` rounded to the nearest bfloat16
    (ties to even); finite values up to 3.39e38 stay finite."""
    u = np.ascontiguousarray(vector, np.float32).view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 ``bits`` (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _representable(vector: np.ndarray, like: dict[str, np.ndarray], keys: list[str],
                   precision: str = "float32") -> np.ndarray:
    """``vector`` rounded to ``precision`` and then to what the arrays' dtypes hold (float16
    arrays round; float32 and float64 ones hold float32 exactly): server and nodes then
    keep the same P."""
    if precision == "bfloat16":
        vector = from_bfloat16_bits(to_bfloat16_bits(vector))
    if all(like[k].dtype in (np.float32, np.float64) for k in keys):
        return vector
    return _concat(_split(vector, like, keys), keys)


def _sent_as_bfloat16(dtype: np.dtype, precision: str) -> bool:
    """Whether a keyframe sends a float array of ``dtype`` as bfloat16 bits: with a
    bfloat16 P, every float32/float64 array (float16 ones go as they are)."""
    return precision == "bfloat16" and dtype != np.float16


def _keyframe_array(values: np.ndarray, precision: str) -> Array:
    """One float array of a keyframe: as numpy, or (``_sent_as_bfloat16``) as its bfloat16
    bits under stype ``BFLOAT16_STYPE`` with the array's own dtype and shape."""
    if not _sent_as_bfloat16(values.dtype, precision):
        return Array(values)
    return Array(dtype=str(values.dtype), shape=values.shape, stype=C.BFLOAT16_STYPE,
                 data=to_bfloat16_bits(values.ravel()).tobytes())


def _keyframe_nbytes(like: np.ndarray, precision: str) -> int:
    """Bytes of a float array's values in a keyframe (without numpy's array header)."""
    return 2 * like.size if _sent_as_bfloat16(like.dtype, precision) else like.nbytes


def _keyframe_values(array: Array) -> np.ndarray:
    """The inverse of ``_keyframe_array``."""
    if array.stype != C.BFLOAT16_STYPE:
        return array.numpy()
    bits = np.frombuffer(array.data, np.uint16)
    shape = tuple(array.shape)
    if bits.size != int(np.prod(shape)) or array.dtype not in ("float32", "float64"):
        raise OutOfSync("malformed bfloat16 keyframe array")
    return from_bfloat16_bits(bits).reshape(shape).astype(array.dtype)


@dataclass
class RoundDownlink:
    """What one configure call sent: per node the version, and the byte counts."""

    version: int
    sent: dict[int, int] = field(default_factory=dict)  # node id -> version sent
    hashes: dict[int, str] = field(default_factory=dict)  # node id -> its hash
    keyframes: int = 0
    delta_messages: int = 0
    blob_bytes: int = 0
    catchup_bytes: int = 0
    keyframe_bytes: int = 0

    def metrics(self) -> dict[str, int]:
        return {C.METRIC_DOWN_VERSION: self.version, C.METRIC_DOWN_KEYFRAMES: self.keyframes,
                C.METRIC_DOWN_DELTA_MESSAGES: self.delta_messages,
                C.METRIC_DOWN_BLOB_BYTES: self.blob_bytes,
                C.METRIC_DOWN_CATCHUP_BYTES: self.catchup_bytes,
                C.METRIC_DOWN_KEYFRAME_BYTES: self.keyframe_bytes}


class PublicModel:
    """The server's public model P, its recent deltas and what each node acknowledged.

    Parameters
    ----------
    method, bits, log2_chunk
        The fedhd method that encodes each delta G - P (any registered one).
    seed : int
        Base seed of the deltas' rotations and dithers (``fedhd.rng.downlink_seeds``).
    max_deltas : int
        Deltas kept for catch-up (as blobs); a node further behind gets a keyframe.
    exact : sequence of str
        fnmatch patterns of float arrays sent exactly in every message (as the uplink's).
    precision : "float32" or "bfloat16"
        The grid P is kept on; "bfloat16" halves keyframes (2 bytes per coordinate).
    """

    def __init__(self, method: str, bits: float | None, seed: int, log2_chunk: int | None,
                 max_deltas: int = 16, exact: Sequence[str] = (), precision: str = "float32"):
        self.codec = make_codec(method, bits, log2_chunk)
        if isinstance(max_deltas, bool) or not isinstance(max_deltas, int) or max_deltas < 0:
            raise ValueError(f"max_deltas must be a non-negative int, got {max_deltas!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.seed = seed
        self.exact = tuple(exact)
        self.version = -1
        self.vector = np.empty(0, np.float32)  # P_version
        self.hash = ""
        self.float_keys: list[str] = []
        self.order: list[str] = []
        self._like: dict[str, np.ndarray] = {}
        self._global = np.empty(0, np.float32)  # the G that P_version was made from
        self.deltas: deque[tuple[int, bytes]] = deque(maxlen=max_deltas)
        self.acked: dict[int, int] = {}  # node id -> last version it acknowledged

    # -- the server's model -> the public model ------------------------------------------
    def advance(self, arrays: ArrayRecord) -> None:
        """Make P follow the strategy's global arrays: a new version with a compressed
        delta when they changed (the first call, or a new structure: a fresh keyframe
        version for everyone)."""
        arrs = numpy_arrays(arrays, "global array")
        keys = float_keys(arrs, self.exact)
        same_structure = (
            self.version >= 0 and set(keys) == set(self.float_keys)
            and set(arrs) == set(self.order)
            and all(arrs[k].shape == self._like[k].shape for k in keys))
        # P keeps its own order and dtypes, whatever order or float width the strategy
        # returns its arrays in (FedAvg-family strategies differ)
        if same_structure:
            keys = self.float_keys
        g = _concat(arrs, keys)
        if not same_structure:
            self.version += 1
            self.vector = _representable(g.copy(), arrs, keys, self.precision)
            self.deltas.clear()
            self.acked.clear()  # everyone needs a keyframe of the new structure
            self.float_keys, self.order = keys, list(arrs)
            self._like = {k: arrs[k] for k in keys}
        elif not np.array_equal(g, self._global):
            self.version += 1
            if g.size:
                rot, dither = downlink_seeds(self.seed, self.version)
                blob = self.codec.encode(g - self.vector, seed=rot, dither_seed=dither)
                # exactly what every node computes (``receive``)
                self.vector = _representable(self.vector + fedhd.decode(blob), self._like,
                                             keys, self.precision)
                self.deltas.append((self.version, blob))
        else:
            return
        self._global = g
        self.hash = model_hash(self.vector)

    def public_record(self, arrays: ArrayRecord) -> ArrayRecord:
        """``arrays`` with the float arrays replaced by P's (what the nodes hold)."""
        arrs = numpy_arrays(arrays, "global array")
        public = _split(self.vector, self._like, self.float_keys)
        return ArrayRecord({k: Array(public[k] if k in public else arrs[k])
                            for k in self.order})

    # -- the messages ------------------------------------------------------------------------
    def address(self, messages: Iterable[Message], arrays: ArrayRecord,
                arrays_key: str, config_key: str) -> tuple[list[Message], RoundDownlink]:
        """Each message with, for its node, the deltas it misses or a keyframe."""
        record = self.public_record(arrays)
        stats = RoundDownlink(self.version)
        keyframe = ArrayRecord({k: _keyframe_array(record[k].numpy(), self.precision)
                                if k in self.float_keys else record[k] for k in self.order})
        keyframe_bytes = sum(_keyframe_nbytes(a, self.precision) for a in self._like.values())
        newest = self.deltas[-1][0] if self.deltas else None
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            blobs = self._catch_up(self.acked.get(node), keyframe_bytes)
            parts = ArrayRecord({k: record[k] for k in self.order if k not in self.float_keys})
            if blobs is None:
                parts = keyframe
                stats.keyframes += 1
                stats.keyframe_bytes += keyframe_bytes
            else:
                for v, blob in blobs:
                    parts[f"{C.DOWN_BLOB_PREFIX}{v}"] = Array(
                        dtype=C.BLOB_DTYPE, shape=(len(blob),), stype=C.BLOB_STYPE, data=blob)
                    if v == newest:
                        stats.blob_bytes = len(blob)
                    else:
                        stats.catchup_bytes += len(blob)
                stats.delta_messages += bool(blobs)
            old = msg.content.get(config_key)
            config = ConfigRecord({**(dict(old) if isinstance(old, ConfigRecord) else {}),
                                   **self._config(blobs)})
            content = RecordDict({k: v for k, v in msg.content.items()
                                  if k not in (arrays_key, config_key)})
            content[arrays_key] = parts
            content[config_key] = config
            msg.content = content
            stats.sent[node] = self.version
            stats.hashes[node] = self.hash
            out.append(msg)
        return out, stats

    def _catch_up(self, acked: int | None, keyframe_bytes: int
                  ) -> list[tuple[int, bytes]] | None:
        """The deltas from version ``acked`` to now, or None for a keyframe."""
        if acked is None or acked > self.version:
            return None
        if acked == self.version:
            return []
        needed = [(v, b) for v, b in self.deltas if v > acked]
        if not needed or needed[0][0] != acked + 1:
            return None  # not kept any more
        if sum(len(b) for _, b in needed) >= keyframe_bytes:
            return None
        return needed

    def _config(self, blobs: list[tuple[int, bytes]] | None) -> dict:
        return {C.KEY_DOWN_VERSION: self.version, C.KEY_DOWN_HASH: self.hash,
                C.KEY_DOWN_PRECISION: self.precision,
                C.KEY_DOWN_ORDER: list(self.order), C.KEY_DOWN_FLOAT_KEYS: list(self.float_keys),
                C.KEY_DOWN_DELTAS: [v for v, _ in blobs or []],
                C.KEY_DOWN_KEYFRAME: blobs is None}

    # -- replies ------------------------------------------------------------------------
    def acknowledge(self, replies: Iterable[Message], sent: RoundDownlink) -> None:
        """A reply that says it holds the version (and hash) sent to its node acknowledges
        it; any other reply (an error, out of sync or not; a node without the mod) makes
        that node's next message a keyframe."""
        for msg in replies:
            node = msg.metadata.src_node_id
            ack = None if msg.has_error() else msg.content.get(C.DOWN_ACK_RECORD)
            if (node in sent.sent and isinstance(ack, ConfigRecord)
                    and ack.get(C.KEY_DOWN_VERSION) == sent.sent[node]
                    and ack.get(C.KEY_DOWN_HASH) == sent.hashes[node]):
                self.acked[node] = sent.sent[node]
            else:
                self.acked.pop(node, None)


# --- the node's half ------------------------------------------------------------------------


def find_downlink_record(content: RecordDict) -> ConfigRecord | None:
    """The ConfigRecord of a message that carries the downlink keys, if any."""
    for record in content.config_records.values():
        if C.KEY_DOWN_VERSION in record:
            return record
    return None


def receive(record: ArrayRecord, config: ConfigRecord, state: RecordDict) -> ArrayRecord:
    """The full model a downlink message brings the node to, from its stored P and the
    message; the node's state then holds the new P. OutOfSync when they do not fit (the
    stored copy is then dropped)."""
    try:
        return _receive(record, config, state)
    except OutOfSync:
        for key in (C.STATE_PUBLIC, C.STATE_PUBLIC_META):
            if key in state:
                del state[key]
        raise


def _listed(config: ConfigRecord, key: str, kind: type) -> list:
    value = config.get(key)
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise OutOfSync(f"malformed downlink key {key!r}")
    return value


def _receive(record: ArrayRecord, config: ConfigRecord, state: RecordDict) -> ArrayRecord:
    version, want = config.get(C.KEY_DOWN_VERSION), config.get(C.KEY_DOWN_HASH)
    if not (isinstance(version, int) and isinstance(want, str)):
        raise OutOfSync("malformed downlink version or hash")
    order: list[str] = _listed(config, C.KEY_DOWN_ORDER, str)
    float_keys: list[str] = _listed(config, C.KEY_DOWN_FLOAT_KEYS, str)
    deltas: list[int] = _listed(config, C.KEY_DOWN_DELTAS, int)
    precision = config.get(C.KEY_DOWN_PRECISION)
    if precision not in PRECISIONS:
        raise OutOfSync(f"unknown downlink precision {precision!r}")
    if config.get(C.KEY_DOWN_KEYFRAME) is True:
        missing = [k for k in order if k not in record]
        if missing:
            raise OutOfSync(f"keyframe without arrays {missing}")
        public = {k: _keyframe_values(record[k]) for k in float_keys}
        vector = _concat(public, float_keys)
    else:
        stored = state.get(C.STATE_PUBLIC)
        meta = state.get(C.STATE_PUBLIC_META)
        if not isinstance(stored, ArrayRecord) or not isinstance(meta, ConfigRecord):
            raise OutOfSync("this node holds no public model (it restarted or is new)")
        have = meta.get("version")
        if list(stored.keys()) != float_keys or not isinstance(have, int):
            raise OutOfSync("the stored model has other arrays than the message's")
        public = {k: stored[k].numpy() for k in float_keys}
        vector = _concat(public, float_keys)
        pending = [v for v in deltas if v > have]
        if pending and pending[0] != have + 1:
            raise OutOfSync(f"holds version {have}, the deltas start at {pending[0]}")
        if not pending and have != version:
            raise OutOfSync(f"holds version {have}, the message brings {version}")
        for v in pending:
            blob_array = record.get(f"{C.DOWN_BLOB_PREFIX}{v}")
            if blob_array is None or blob_array.stype != C.BLOB_STYPE:
                raise OutOfSync(f"delta {v} is missing")
            try:
                vector = _representable(vector + fedhd.decode(bytes(blob_array.data)),
                                        public, float_keys, str(precision))
            except (fedhd.DecodeError, ValueError) as e:
                raise OutOfSync(f"delta {v}: {e}") from None
        public = _split(vector, public, float_keys)
    if model_hash(vector) != want:
        raise OutOfSync(f"the model after the deltas does not hash to version {version}'s")
    state[C.STATE_PUBLIC] = ArrayRecord({k: Array(public[k]) for k in float_keys})
    state[C.STATE_PUBLIC_META] = ConfigRecord({"version": version, "hash": want})
    return ArrayRecord({k: Array(public[k]) if k in public else record[k] for k in order
                        if k in public or k in record})
