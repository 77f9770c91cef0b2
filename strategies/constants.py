"""Keys shared by the client mod and the server strategies, in one place.

Everything fedhd adds to a Flower message is prefixed ``fedhd.``:

Train config (server -> client), written by ``CompressedFedAvg.configure_train``:

=====================  ======  ==========================================================
key                    type    meaning
=====================  ======  ==========================================================
``fedhd.method``       str     compression method, a name from ``fedhd.methods()``
``fedhd.bits``         float   bits per coordinate (fixed rate) or bit budget
``fedhd.seed``         int     the round's rotation seed, shared by every client
``fedhd.log2-chunk``   int     log2 of the full Hadamard chunk length (optional)
``fedhd.exact``        [str]   fnmatch patterns of float array keys sent exactly, not
                               compressed (optional; e.g. ``*running_var``)
=====================  ======  ==========================================================

and ``fedhd.error-feedback`` (bool, optional): whether the node keeps its residual and
adds it to its next update (absent: True for biased methods; ``strategies.error_feedback``).

Train reply (client -> server), written by ``compression_mod``: the reply's single
ArrayRecord keeps its record key and holds one Array ``fedhd.blob`` (stype
``fedhd.blob``, the raw fedhd blob) plus every non-float array and every float array that
matches a ``fedhd.exact`` pattern, unchanged; a ConfigRecord
``fedhd`` lists the float array keys in the order they were flattened. The MetricRecord
is untouched. A reply without the ``fedhd`` ConfigRecord is an ordinary uncompressed
reply, and the strategies average it correctly too.
"""

from __future__ import annotations

from fedhd import DEFAULT_METHOD  # the one default, stated in fedhd/methods/ids.py

__all__ = ["DEFAULT_METHOD"]  # and every KEY_*, METRIC_* and *_RECORD name below
#: Default base seed of a strategy; each round's rotation seed is derived from it.
DEFAULT_SEED = 0

PREFIX = "fedhd."

# --- train config, server -> client ---------------------------------------------------
KEY_METHOD = PREFIX + "method"
KEY_BITS = PREFIX + "bits"
KEY_SEED = PREFIX + "seed"
KEY_LOG2_CHUNK = PREFIX + "log2-chunk"
KEY_EXACT = PREFIX + "exact"
CONFIG_KEYS: tuple[str, ...] = (KEY_METHOD, KEY_BITS, KEY_SEED, KEY_LOG2_CHUNK, KEY_EXACT)

#: Patterns for ``exact=`` that keep PyTorch BatchNorm running statistics uncompressed.
#: Compression noise is spread evenly over a chunk, so a small running variance can turn
#: negative after a noisy round (NaN in eval mode); sending them exactly avoids that.
BATCHNORM_STATS = ("*running_mean", "*running_var")

# --- compressed downlink, server -> client (train and evaluate messages) -------------
# In the message's ConfigRecord, beside the keys above (``strategies.downlink``):
#: Version t of the public model P_t the message brings the node to.
KEY_DOWN_VERSION = PREFIX + "down.version"
#: SHA-256 (hex) of P_t's float32 bytes: the node checks it after applying the deltas.
KEY_DOWN_HASH = PREFIX + "down.hash"
#: Every array key of the model, in order, and which of them are float ("public") arrays.
KEY_DOWN_ORDER = PREFIX + "down.order"
KEY_DOWN_FLOAT_KEYS = PREFIX + "down.float-keys"
#: The versions the message's deltas lead to, oldest first (empty: a keyframe, or none).
KEY_DOWN_DELTAS = PREFIX + "down.deltas"
#: The grid P_t is kept on ("float32" or "bfloat16"); the node rounds each step there too.
KEY_DOWN_PRECISION = PREFIX + "down.precision"
#: Stype of a keyframe array sent as bfloat16 bits (uint16 data; dtype and shape: the
#: array's own).
BFLOAT16_STYPE = PREFIX + "bfloat16"
#: True when the message's ArrayRecord holds the full P_t (a keyframe).
KEY_DOWN_KEYFRAME = PREFIX + "down.keyframe"
#: ArrayRecord key prefix of a delta blob: ``fedhd.down.<version>`` (stype BLOB_STYPE).
DOWN_BLOB_PREFIX = PREFIX + "down."
#: Context.state keys where a node keeps P_t (an ArrayRecord) and its version and hash.
STATE_PUBLIC = PREFIX + "public"
STATE_PUBLIC_META = PREFIX + "public.meta"
#: RecordDict key of the ConfigRecord a node's reply carries with the version and hash it
#: holds (KEY_DOWN_VERSION, KEY_DOWN_HASH); the server counts only such replies as acks.
DOWN_ACK_RECORD = PREFIX + "down.ack"
#: Reason prefix of the error reply of a node whose P does not match the message.
DOWN_OUT_OF_SYNC = "fedhd.downlink: out of sync"

# --- train reply, client -> server ----------------------------------------------------
#: RecordDict key of the ConfigRecord that marks a compressed reply.
REPLY_RECORD = "fedhd"
#: In that ConfigRecord: the float array keys, in the order they were flattened.
KEY_FLOAT_KEYS = PREFIX + "keys"
#: In that ConfigRecord: the reply format version.
KEY_FORMAT = PREFIX + "format"
FORMAT_VERSION = 1
#: ArrayRecord key and stype of the Array that carries the blob.
BLOB_KEY = PREFIX + "blob"
BLOB_STYPE = PREFIX + "blob"
BLOB_DTYPE = "uint8"

# --- per-round train metrics, in the MetricRecord that aggregate_train returns ----------
#: Mean wire bytes of one accepted train reply, as the transport sends it.
METRIC_UPLINK_BYTES = PREFIX + "uplink_bytes"
#: Mean wire bytes the same replies would take uncompressed (plain FedAvg arrays).
METRIC_UPLINK_BYTES_UNCOMPRESSED = PREFIX + "uplink_bytes_uncompressed"
#: uplink_bytes_uncompressed / uplink_bytes.
METRIC_COMPRESSION_RATIO = PREFIX + "compression_ratio"
#: Sum of the wire bytes of every accepted train reply of the round.
METRIC_UPLINK_BYTES_TOTAL = PREFIX + "uplink_bytes_total"
#: Blob bits per model coordinate (8 * blob bytes / d), mean over compressed replies.
METRIC_BLOB_BITS_PER_COORD = PREFIX + "blob_bits_per_coordinate"
#: Replies with content that failed validation or decoding and were left out (norm-bound
#: drops included).
METRIC_DROPPED = PREFIX + "dropped"
#: Replies left out because their update norm exceeded ``max_update_norm`` (norm_bound="drop").
METRIC_NORM_DROPPED = PREFIX + "norm_dropped"
#: Replies scaled down to ``max_update_norm`` (norm_bound="clip").
METRIC_NORM_CLIPPED = PREFIX + "norm_clipped"

# --- downlink metrics of the messages a round sent (in aggregate_train's / evaluate's) --
#: Version of the public model the round's messages carried.
METRIC_DOWN_VERSION = PREFIX + "down.version"
#: Messages that carried a keyframe (the full P_t, exact).
METRIC_DOWN_KEYFRAMES = PREFIX + "down.keyframes"
#: Messages that carried deltas (one or more blobs).
METRIC_DOWN_DELTA_MESSAGES = PREFIX + "down.delta_messages"
#: Bytes of the newest delta blob (what an up-to-date node receives).
METRIC_DOWN_BLOB_BYTES = PREFIX + "down.blob_bytes"
#: Bytes of older deltas sent to nodes that had missed rounds (catch-up).
METRIC_DOWN_CATCHUP_BYTES = PREFIX + "down.catchup_bytes"
#: Bytes of the float arrays of the keyframes sent.
METRIC_DOWN_KEYFRAME_BYTES = PREFIX + "down.keyframe_bytes"
#: Replies that were aggregated.
METRIC_ACCEPTED = PREFIX + "accepted"
#: Of the accepted replies, how many were compressed.
METRIC_COMPRESSED = PREFIX + "compressed"
#: Replies that came back as Flower errors (e.g. a failed precondition in the mod).
METRIC_ERROR_REPLIES = PREFIX + "error_replies"

# ======================================================================================
# --- secure aggregation (strategies.secagg): SecAggFedAvg / SecAggStrategy + secagg_mod
# ======================================================================================
# Every protocol stage is a "train" message (the one category every training ClientApp
# registers) whose content holds a ConfigRecord SECAGG_RECORD with the stage name and the
# protocol bytes (strategies/secagg/protocol.py); the mod answers setup stages itself and
# lets the app train only in the masked-input stage. A train message without that record
# passes through secagg_mod unchanged.

#: RecordDict key of the ConfigRecord that carries a protocol stage, both ways.
SECAGG_RECORD = PREFIX + "secagg"
#: In that record: the stage name (one of SECAGG_STAGES).
SECAGG_KEY_STAGE = PREFIX + "secagg.stage"
#: In that record: the protocol message (bytes).
SECAGG_KEY_PAYLOAD = PREFIX + "secagg.payload"
SECAGG_STAGE_SETUP = "setup"            # server: SETUP; client: ADVERTISE (public keys)
SECAGG_STAGE_SHARE_KEYS = "share-keys"  # server: ROSTER; client: SHARES (encrypted)
SECAGG_STAGE_MASKED_INPUT = "masked-input"  # server: train + MASK_REQUEST; client: MASKED
SECAGG_STAGE_UNMASK = "unmask"          # server: UNMASK_REQUEST; client: UNMASK (shares)
SECAGG_STAGES = (SECAGG_STAGE_SETUP, SECAGG_STAGE_SHARE_KEYS, SECAGG_STAGE_MASKED_INPUT,
                 SECAGG_STAGE_UNMASK)
#: ArrayRecord key and stype of the Array that carries the masked vector in the reply
#: (in place of the update; the ArrayRecord keeps the app's record key).
SECAGG_MASKED_KEY = PREFIX + "secagg.masked"
SECAGG_MASKED_STYPE = PREFIX + "secagg.masked"
#: Context.state keys of the client: the protocol state (ConfigRecord, "state": bytes)
#: and the seconds the mod spent in each stage of the last session (MetricRecord).
SECAGG_STATE_RECORD = PREFIX + "secagg.state"
SECAGG_TIMING_RECORD = PREFIX + "secagg.seconds"

# per-round train metrics of the secure strategies
#: Clients whose input is in the sum (survivors of the masked-input stage).
METRIC_SECAGG_SURVIVORS = PREFIX + "secagg.survivors"
#: Clients sampled for the round.
METRIC_SECAGG_SAMPLED = PREFIX + "secagg.sampled"
#: Clients lost at each stage (no reply, an error reply or a refused reply).
METRIC_SECAGG_DROPPED_SETUP = PREFIX + "secagg.dropped_setup"
METRIC_SECAGG_DROPPED_SHARE_KEYS = PREFIX + "secagg.dropped_share_keys"
METRIC_SECAGG_DROPPED_MASKED_INPUT = PREFIX + "secagg.dropped_masked_input"
METRIC_SECAGG_DROPPED_UNMASK = PREFIX + "secagg.dropped_unmask"
#: 1 when the round was aborted (too few clients at a stage, a failed reconstruction).
METRIC_SECAGG_ABORTED = PREFIX + "secagg.aborted"
#: Secrets the server rebuilt from other shares than their first t, around shares that
#: failed a check (some client sent altered shares) or whose holder did so earlier.
METRIC_SECAGG_OUTVOTED = PREFIX + "secagg.outvoted_secrets"
#: How many survivors clipped their update (a masked count: no client is singled out).
METRIC_SECAGG_CLIPPED = PREFIX + "secagg.clipped"
#: How many survivors' weights exceeded max_weight (masked count).
METRIC_SECAGG_WEIGHT_CAPPED = PREFIX + "secagg.weight_capped"
#: The round's modulus bits m, lattice step, clip norm and the threshold t.
METRIC_SECAGG_MODULUS_BITS = PREFIX + "secagg.modulus_bits"
METRIC_SECAGG_STEP = PREFIX + "secagg.step"
METRIC_SECAGG_CLIP_NORM = PREFIX + "secagg.clip_norm"
METRIC_SECAGG_THRESHOLD = PREFIX + "secagg.threshold"
#: Coordinates of the summed code in the outer quarter of the range (possible wraps).
METRIC_SECAGG_GUARD = PREFIX + "secagg.guard_band"
#: Bits per model coordinate of one masked-input reply as the transport sends it.
METRIC_SECAGG_BITS_PER_COORD = PREFIX + "secagg.bits_per_coordinate"
#: Mean wire bytes a surviving client sent over all four stages of the round.
METRIC_SECAGG_UPLINK_ALL_STAGES = PREFIX + "secagg.uplink_bytes_all_stages"
#: Seconds the server spent in the protocol (not waiting for clients) this round.
METRIC_SECAGG_SERVER_SECONDS = PREFIX + "secagg.server_seconds"

# --- client-side error feedback (``strategies.error_feedback``) -------------------------
#: Train config key: whether the node keeps its residual e and sends encode(update + e)
#: (bool; absent: True for biased methods, False for unbiased ones).
KEY_ERROR_FEEDBACK = PREFIX + "error-feedback"
CONFIG_KEYS = (*CONFIG_KEYS, KEY_ERROR_FEEDBACK)
#: Context.state key of a node's residual e: an ArrayRecord of float32 arrays, one per
#: compressed float array (its key and shape).
STATE_RESIDUAL = PREFIX + "ef.residual"
#: Context.state key of powersgd's warm start: an ArrayRecord of the Q (cols x rank) of
#: every float array sent as factors, under its key.
STATE_POWERSGD_Q = PREFIX + "powersgd.q"
