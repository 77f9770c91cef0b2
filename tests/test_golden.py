"""Golden blobs: the SHA-256 of every registered method's blob on fixed inputs and seeds.

These hashes pin the wire format byte for byte. A change that alters any of them is a
wire-format change: bump ``fedhd.wire.VERSION``, or for a change inside one method's
payload that method's own format field (hd-dither-ec's coder format), and regenerate the
table together (``python tests/test_golden.py`` prints it). Inputs are built from integer
arithmetic on SplitMix64 outputs, so they are the same on every platform and numpy version.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import fedhd
from fedhd import rng

#: (d, log2_chunk): a single coordinate, one padded chunk, an awkward binary tail, and
#: multi-chunk layouts (full chunks + tail) at the default and at a small chunk length.
SHAPES = [(1, 16), (100, 16), (1000, 16), (70_001, 16), (5_000, 10)]
#: (method, bits) pairs covering every registered method.
CASES = [
    ("identity", 32), ("hd-dither", 1), ("hd-dither", 2), ("hd-dither", 4),
    ("hd-dither-ec", 1.0), ("hd-dither-ec", 2.5), ("fp16", 16), ("qsgd", 2), ("qsgd", 4),
    ("hd-sr", 4), ("drive", 1), ("eden", 2), ("turboquant", 2), ("topk", 2.0),
    ("scaled-sign", 1), ("powersgd", 2.0), ("powersgd", 8.0),
]


def golden_input(d: int) -> np.ndarray:
    """Deterministic float32 input: dyadic values from SplitMix64, plus two spikes."""
    k = rng.splitmix(np.uint64(12345), np.arange(d, dtype=np.uint64))
    x = ((k >> np.uint64(40)).astype(np.int64) - (1 << 23)).astype(np.float32) / 2**21
    x[0] += 64.0
    x[d // 2] -= 32.0
    return x


def blob_hash(method: str, bits: float, d: int, log2_chunk: int) -> str:
    blob = fedhd.encode(golden_input(d), bits=bits, seed=2024, dither_seed=7, method=method,
                        log2_chunk=log2_chunk)
    return hashlib.sha256(blob).hexdigest()[:32]


GOLDEN: dict[str, str] = {  # SHA-256 prefixes; regenerate with python tests/test_golden.py
    "identity/32/1/16": "47eebbf07e542b44c1a4a6e8fbc837e3",
    "identity/32/100/16": "3c7fa0a09f9e2cac35812de49f1f8040",
    "identity/32/1000/16": "5911b1a8af1e9522a89e89732a815f99",
    "identity/32/70001/16": "b1bf0d8be1d6536042d85bb70773c3c2",
    "identity/32/5000/10": "f1ac96d7be7384f1da1c4b31730bc4da",
    "hd-dither/1/1/16": "fa93ab11762f4e01a39d4d315ae74858",
    "hd-dither/1/100/16": "7f77d46232328915602053026a9676cb",
    "hd-dither/1/1000/16": "8ae5d1edc8d1d9b58fc37611e1f19709",
    "hd-dither/1/70001/16": "288db422851008a5cc1d4f1c03cc4a5c",
    "hd-dither/1/5000/10": "85daf15183c42b596e41f3fb30c5a285",
    "hd-dither/2/1/16": "4bcb74c415248a5246e4a83a1f531b00",
    "hd-dither/2/100/16": "0223127bda12303b4d49edf983b792ab",
    "hd-dither/2/1000/16": "51b50636d9b100e44dc2d882e30bd9a8",
    "hd-dither/2/70001/16": "2c56acf7edafef367a88127d7309d64f",
    "hd-dither/2/5000/10": "96f5a81e08266f657d2346e4c7a46180",
    "hd-dither/4/1/16": "f6da72a3ef2576efc3b65a49cae9c588",
    "hd-dither/4/100/16": "410bbc1c112d15e6a0fc7829b927e0bd",
    "hd-dither/4/1000/16": "e865f50e08bc900455ecdf5a2a412a6c",
    "hd-dither/4/70001/16": "c901feaecc572dd58594ae0d69be736d",
    "hd-dither/4/5000/10": "2318831f41824540ac3d73f7af37e12c",
    "hd-dither-ec/1.0/1/16": "baab57434c1e8dd9bf82dfd7c97125f3",
    "hd-dither-ec/1.0/100/16": "ee9131eabb4cb78bc52788934c300aa5",
    "hd-dither-ec/1.0/1000/16": "ea6538fb7f06eaf23ba4998dd82d7df3",
    "hd-dither-ec/1.0/70001/16": "f73ffd0f6f5db3baf78114e9307fffa5",
    "hd-dither-ec/1.0/5000/10": "d4d70d86728d6fe616ef29f1bc416582",
    "hd-dither-ec/2.5/1/16": "0e232ee0aa8e481001666025ac715dfd",
    "hd-dither-ec/2.5/100/16": "69673e3459df6f2baa1d568ae1a9db13",
    "hd-dither-ec/2.5/1000/16": "c6f49549842331743c89180e8ec68873",
    "hd-dither-ec/2.5/70001/16": "b085585cc3ef4162b5f4fcb90a20b486",
    "hd-dither-ec/2.5/5000/10": "f5c617459d4d4e5958728da83fbc08fc",
    "fp16/16/1/16": "b62bf35eae069cb5a6d0c8684e8ecb26",
    "fp16/16/100/16": "a3f323f2c8f157061bfe03cd6683c277",
    "fp16/16/1000/16": "ba2035e67127aa1e4dfeca91b12525f5",
    "fp16/16/70001/16": "c7d5375445c547902c02d35a85add1a5",
    "fp16/16/5000/10": "57932f885a4141763cf825d2dc470ef4",
    "qsgd/2/1/16": "634e1db5e7a80c7f67b52bc88733b0d4",
    "qsgd/2/100/16": "c2a61f8aa2f31159d53ada82b30e2af6",
    "qsgd/2/1000/16": "15a19b338e43ecaf11be9f44576b933a",
    "qsgd/2/70001/16": "9b078e5b45fed5eb1f315dfe558b6d70",
    "qsgd/2/5000/10": "067a124f774f7f84acd59a98e2c1bf2e",
    "qsgd/4/1/16": "e972920d739814227a19b0fc6dabfe5a",
    "qsgd/4/100/16": "3429bf5b09b6f9f3c55df439465b66d0",
    "qsgd/4/1000/16": "711fdb554596aa17bd0f41900fadfc38",
    "qsgd/4/70001/16": "2fc072c1ad96e6e56c5e621b9f4f7d26",
    "qsgd/4/5000/10": "75833d06f55c2494803aaa8a3e3d8ff7",
    "hd-sr/4/1/16": "c49e0bb6c3089c0c466af21aa59a5452",
    "hd-sr/4/100/16": "33c2d959ca803cda2d35e7b87ff7b6f6",
    "hd-sr/4/1000/16": "455312a9d359cb9fc2353de91b35e17e",
    "hd-sr/4/70001/16": "3e4dc87b69899eba48e8bf650ecfb413",
    "hd-sr/4/5000/10": "b8ef91920698e3edac523af49bd10878",
    "drive/1/1/16": "7d9e94f2ea63cecd7252912d49a69396",
    "drive/1/100/16": "90edbfdac67c4e39a19f68c28dd9196e",
    "drive/1/1000/16": "40b3f02aa1a58607bb53cc2cf14a80f5",
    "drive/1/70001/16": "5b109fd78315a31223778fe1f1eb54a5",
    "drive/1/5000/10": "341e735ed4a1a10691a51b64e3f86baf",
    "eden/2/1/16": "b90a2c306c584a77a132344df9b3043b",
    "eden/2/100/16": "9c041cea017b437ca06c87bf735d6007",
    "eden/2/1000/16": "d3bf909a418cdcd8329bf85aa6cbb257",
    "eden/2/70001/16": "e69534e522abfa86fd603a22ad8d9d9b",
    "eden/2/5000/10": "f31cc586cf57caff197c195b2facb05f",
    "turboquant/2/1/16": "6d6bbfbbb82c6c834b757585549452fd",
    "turboquant/2/100/16": "004ae10d1e3ef212b87152b1c61d19ac",
    "turboquant/2/1000/16": "848aa617296fb3051c088cd6fbee0826",
    "turboquant/2/70001/16": "d7c3c212e1bbea1f670154c8f7e3f6bb",
    "turboquant/2/5000/10": "0896866d515a8fce1f71b1a446481ffa",
    "topk/2.0/1/16": "5ae744e72b9412ff01e3fb0ba20a07f5",
    "topk/2.0/100/16": "c8e5e57518450973b3ddbdbaa1383a45",
    "topk/2.0/1000/16": "4b207c172d383e75a64466841061bb38",
    "topk/2.0/70001/16": "064fd88149dbf3a9d9b3f2b494e11462",
    "topk/2.0/5000/10": "df641c08ed269ee8a6d14c13df5c32b0",
    "scaled-sign/1/1/16": "7616f15f4dd754c12f1436a647b22594",
    "scaled-sign/1/100/16": "1d0bd7629b01915f60a8928182134c88",
    "scaled-sign/1/1000/16": "13d692aa1f3e1bb78639245908d108dd",
    "scaled-sign/1/70001/16": "b7b475cc1c1dcff88812785afa9608bb",
    "scaled-sign/1/5000/10": "74533e513249c68f04a4a86f3f1c8f13",
    "powersgd/2.0/1/16": "ff3bb409122f7f8789cc75f8c38d3850",
    "powersgd/2.0/100/16": "75308e9053a5f1fb49e36f2c77fedae8",
    "powersgd/2.0/1000/16": "b881bd7fc7b1548ba5be379202e0d534",
    "powersgd/2.0/70001/16": "5ac6f942b4ebddd764efe2a42afdb51b",
    "powersgd/2.0/5000/10": "4e46245e60891cf3aa3c6b0398556bf8",
    "powersgd/8.0/1/16": "24fa4a2270d8824fe7d0459d82d5b66d",
    "powersgd/8.0/100/16": "a0a33cba3c92f42f73f1af9a16b4d51d",
    "powersgd/8.0/1000/16": "be6467454036c16aadc15ba6b31ca5df",
    "powersgd/8.0/70001/16": "f15ed6e6502a1e4c98a669b0363eb1e9",
    "powersgd/8.0/5000/10": "8e95440e6e5b891ff0c0d87e9dac2c46",
}


def _key(method: str, bits: float, d: int, log2_chunk: int) -> str:
    return f"{method}/{bits}/{d}/{log2_chunk}"


def test_every_method_is_pinned():
    assert {m for m, _ in CASES} == set(fedhd.methods())


@pytest.mark.parametrize("d,log2_chunk", SHAPES)
@pytest.mark.parametrize("method,bits", CASES)
def test_golden_blob(method, bits, d, log2_chunk):
    key = _key(method, bits, d, log2_chunk)
    assert blob_hash(method, bits, d, log2_chunk) == GOLDEN[key], (
        f"{key}: the blob changed; a wire change must bump fedhd.wire.VERSION (or the "
        f"method's own format field) and this table")


if __name__ == "__main__":  # print the table
    print("GOLDEN: dict[str, str] = {")
    for m, b in CASES:
        for d, lc in SHAPES:
            print(f'    "{_key(m, b, d, lc)}": "{blob_hash(m, b, d, lc)}",')
    print("}")
