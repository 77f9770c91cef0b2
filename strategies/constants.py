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
CONFIG_KEYS = (KEY_METHOD, KEY_BITS, KEY_SEED, KEY_LOG2_CHUNK, KEY_EXACT)

#: Patterns for ``exact=`` that keep PyTorch BatchNorm running statistics uncompressed.
#: Compression noise is spread evenly over a chunk, so a small running variance can turn
#: negative after a noisy round (NaN in eval mode); sending them exactly avoids that.
BATCHNORM_STATS = ("*running_mean", "*running_var")

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
#: Replies that were aggregated.
METRIC_ACCEPTED = PREFIX + "accepted"
#: Of the accepted replies, how many were compressed.
METRIC_COMPRESSED = PREFIX + "compressed"
#: Replies that came back as Flower errors (e.g. a failed precondition in the mod).
METRIC_ERROR_REPLIES = PREFIX + "error_replies"
