"""Wire ids of the compression methods: the one table that maps a method name to the
``method id`` byte of the blob header (``fedhd.wire``). An id, once released, is never
reused for another method; add new methods at the end.

``DEFAULT_METHOD`` is the method ``fedhd.encode`` and the Flower strategies use when none
is named: hd-dither-ec, exactly unbiased for every input.
"""

from __future__ import annotations

METHOD_IDS: dict[str, int] = {
    "identity": 0,
    "hd-dither": 1,
    "hd-dither-ec": 2,
    "fp16": 3,
    "qsgd": 4,
    "hd-sr": 5,
    "drive": 6,
    "eden": 7,
    "turboquant": 8,
    "topk": 9,
    "scaled-sign": 11,
    "powersgd": 12,
}
assert len(set(METHOD_IDS.values())) == len(METHOD_IDS), "method ids must be unique"

DEFAULT_METHOD = "hd-dither-ec"
