"""Hostile blobs: a fixed-seed subset of ``benchmarks.fuzz_blobs`` (the CI run of the 10^5
harness) and the known attacks, one field of a re-sealed blob at a time.

CRC-32 is not authentication: a client can set any field of its blob and recompute the CRC
(``benchmarks.fuzz_blobs.reseal``). Decoders must refuse every field value their encoder
cannot produce or that would overflow a float32 sum, with ``fedhd.DecodeError`` and before
touching an ``Aggregator``'s running sum; the strategy must drop such a reply.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

import fedhd
from benchmarks.fuzz_blobs import (
    LOG2_CHUNK,
    StrategyRound,
    field_offset,
    make_base,
    reseal,
    run_fuzz,
    set_field,
)

FUZZ_BLOBS = 3000
FUZZ_SEED = 20_240_601
D = 1000  # six chunks of the 2**10 layout
SEED = 11

#: (method, bits, field, values): each value, written into element 0 of the field of an
#: honest blob and re-sealed, must be refused. Negative values are legal for coordinates
#: (identity, fp16, topk) and hd-sr's lo, never for scales, norms and steps.
SCALE_ATTACK = ("3e38", "inf", "nan", "-1")
VALUE_ATTACK = ("3e38", "-3e38", "inf", "nan")
ATTACKS = [
    ("hd-dither", 2, "scale", SCALE_ATTACK),
    ("eden", 2, "scale", SCALE_ATTACK),
    ("drive", 1, "scale", SCALE_ATTACK),
    ("turboquant", 2, "norm", SCALE_ATTACK),
    ("qsgd", 4, "norm", SCALE_ATTACK),
    ("hd-sr", 4, "lo", VALUE_ATTACK),
    ("hd-sr", 4, "step", SCALE_ATTACK),
    ("hd-dither-ec", 2.0, "scale", SCALE_ATTACK),
    ("hd-dither-ec", 2.0, "step", SCALE_ATTACK),
    ("identity", 32, "value", VALUE_ATTACK),
    ("topk", 8.0, "value", VALUE_ATTACK),
    ("fp16", 16, "value", ("inf", "-inf", "nan")),
    ("scaled-sign", 1, "scale", SCALE_ATTACK),
    ("powersgd", 2.0, "factor", VALUE_ATTACK),
]
CASES = [(m, b, f, v) for m, b, f, values in ATTACKS for v in values]


def _blobs(method: str, bits: float) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [fedhd.encode((0.01 * rng.standard_normal(D)).astype(np.float32), bits=bits,
                         seed=SEED, method=method, dither_seed=j, log2_chunk=LOG2_CHUNK)
            for j in range(4)]


def _kind(method: str) -> str:
    return "f16" if method == "fp16" else "f32"


def test_fuzz_subset_has_no_failures():
    """~3000 mutants of every method through decode, Aggregator and CompressedFedAvg."""
    report = run_fuzz(FUZZ_BLOBS, FUZZ_SEED)
    assert report.blobs == FUZZ_BLOBS
    failures = report.failures
    assert failures == 0, (
        f"{report.table().splitlines()[-1]}\n{report.example_text()}\n"
        f"(python -m benchmarks.fuzz_blobs --seed {FUZZ_SEED} --replay I for one of them)")


def test_attacks_cover_every_registered_method():
    assert {m for m, *_ in ATTACKS} == set(fedhd.methods())


@pytest.mark.parametrize("method", fedhd.methods())
def test_reseal_reproduces_the_encoders_crc(method):
    """The harness's own re-seal must match the encoder, or no mutant reaches a decoder."""
    bits = next(b for m, b, *_ in ATTACKS if m == method)
    for blob in _blobs(method, bits):
        assert reseal(blob) == blob
        assert reseal(blob[:-1] + bytes([blob[-1] ^ 1])) != blob


@pytest.mark.parametrize(("method", "bits", "name", "value"), CASES,
                         ids=[f"{m}-{f}={v}" for m, _, f, v in CASES])
def test_resealed_field_is_refused_and_the_sum_is_unchanged(method, bits, name, value):
    blobs = _blobs(method, bits)
    kind = _kind(method)
    off = field_offset(method, blobs[3], name, 0)
    old = struct.unpack_from("<e" if kind == "f16" else "<f", blobs[3], off)[0]
    # control: re-sealing the field with its own value gives the honest blob back
    assert set_field(blobs[3], off, kind, old) == blobs[3]
    bad = set_field(blobs[3], off, kind, float(value))

    with pytest.raises(fedhd.DecodeError):
        fedhd.decode(bad)

    agg = fedhd.Aggregator(D, seed=SEED, method=method, bits=bits)
    for blob in blobs[:3]:
        agg.add(blob, 1.0)
    before = agg.mean()
    with pytest.raises(ValueError):
        agg.add(bad, 1.0)
    np.testing.assert_array_equal(agg.mean(), before)
    agg.add(blobs[3], 1.0)  # the aggregator still works
    assert np.isfinite(agg.mean()).all()


#: The P1 report: one of four clients sends its blob with the first chunk's scale (or
#: first value) set to 3e38, CRC recomputed; CompressedFedAvg accepted all four replies.
STRATEGY_ATTACKS = [(m, b, f) for m, b, f, _ in ATTACKS if m != "fp16"]


@pytest.mark.parametrize(("method", "bits", "name"), STRATEGY_ATTACKS,
                         ids=[f"{m}-{f}" for m, _, f in STRATEGY_ATTACKS])
def test_strategy_drops_a_resealed_3e38_reply(method, bits, name):
    base = make_base(method, bits, D)
    round_ = StrategyRound(base)
    bad = set_field(base.target, field_offset(method, base.target, name, 0), "f32", 3e38)
    status, failures = round_.check(bad)
    assert not failures, failures
    assert status == "dropped"
    # and the honest 4th reply is still accepted, within bounds
    status, failures = round_.check(base.target)
    assert (status, failures) == ("accepted", [])
