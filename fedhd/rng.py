"""Counter-based shared randomness: SplitMix64, identical on every backend.

Every random value is a pure function of (seed, stream, index), so a client and a
server, on numpy, numba, torch or CuPy, derive the same bits without sharing state.

Definitions (all arithmetic modulo 2**64):

- ``mix64(z)``: the SplitMix64 output finalizer (Stafford's variant 13).
- ``splitmix(state, i) = mix64(state + (i + 1) * GAMMA)``: the i-th SplitMix64 output.
- ``stream_key(seed, stream, j) = splitmix(splitmix(seed, stream), j)``.
- Rotation signs of chunk ``c``: ``key = stream_key(seed, STREAM_SIGNS, c)``; coordinate
  ``i`` of the chunk is negated iff bit ``i % 64`` of ``splitmix(key, i // 64)`` is 1.
- Dither of chunk ``c`` (hd-dither): ``u = (stream_key(dither_seed, STREAM_DITHER, c) >> 11)
  * 2**-53``, uniform on [0, 1) (``dithers``).
- Rounding uniforms (qsgd, hd-sr) and tie-breaking bits (eden, drive, turboquant): with
  ``base = splitmix(dither_seed, STREAM_METHOD)`` (``rounding_key``), padded coordinate g
  uses ``splitmix(base, g)``: its 53 high bits as a uniform, or its low bit as a coin.
- Per-coordinate dithers of hd-dither-ec, chunk ``c``: key
  ``stream_key(dither_seed, STREAM_METHOD, c)`` (``coordinate_dither_keys``; how a key
  becomes dithers is in ``fedhd.kernels.rans``).
- Pilot dithers of hd-dither-ec's rate controller, chunk ``c``: key
  ``stream_key(seed, STREAM_PILOT, c)`` (``pilot_keys``): from the ROTATION seed, never the
  dither seed, so the chosen steps are independent of the real dithers.
- Seeds of rounds and clients (``derive_seed(base, *keys)``): round r's rotation seed is
  ``round_seed(base, r) = derive_seed(base, r)``; a client's dither seed in a round is
  ``client_dither_seed(round_seed, node_id, partition_id)`` =
  ``derive_seed(round_seed, PARTITION_DOMAIN, partition_id)`` when the node has a
  partition id (stable across runs), else ``derive_seed(round_seed, node_id)``.
- Downlink (the server's broadcast of model deltas): version v's rotation seed is
  ``derive_seed(base, DOWNLINK_DOMAIN, v)`` and its dither seed
  ``derive_seed(base, DOWNLINK_DOMAIN, v, 1)`` (``downlink_seeds``).
- Summable secure-aggregation codes (``fedhd.modular``): the round's coordinate
  permutation ``perm = argsort(k)`` (a stable sort) of the keys
  ``k_g = stream_key(seed, STREAM_PERMUTATION, g)``, from the ROTATION seed, the permuted
  vector being ``v[perm]`` (``permutation``); a client's per-coordinate subtractive dithers
  ``(stream_key(dither_seed, STREAM_MODULAR_DITHER, g) >> 11) * 2**-53`` on [0, 1)
  (``modular_dithers``), with the dither seed
  ``derive_seed(round_seed, MODULAR_DOMAIN, client_id)`` from the node id the server
  addresses (``modular_dither_seed``): the server removes the dithers of the survivors.
- Zero coordinates of scaled-sign take the tie-breaking coin above: the low bit of
  ``splitmix(rounding_key(dither_seed), g)`` for coordinate g.
- powersgd's starting Q of matrix view v (when no warm start is given): entry j (row-major
  over cols x r) is ``2 u - 1`` with ``u = (splitmix(stream_key(dither_seed,
  STREAM_POWERSGD, v), j) >> 11) * 2**-53`` (``powersgd_start``).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import ArrayLike

GAMMA = 0x9E3779B97F4A7C15
MUL1 = 0xBF58476D1CE4E5B9
MUL2 = 0x94D049BB133111EB
STREAM_SIGNS = 1
STREAM_DITHER = 2
STREAM_METHOD = 3  # rounding uniforms, tie-breaks, hd-dither-ec's coordinate dithers
STREAM_PILOT = 0xEC_0001  # hd-dither-ec's pilot dithers (from the rotation seed)
MASK64 = (1 << 64) - 1

_U = np.uint64


def mix64(z: ArrayLike) -> np.ndarray:
    """SplitMix64 finalizer on a uint64 array (wrapping arithmetic)."""
    v = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        v = (v ^ (v >> _U(30))) * _U(MUL1)
        v = (v ^ (v >> _U(27))) * _U(MUL2)
    return v ^ (v >> _U(31))


def splitmix(state: ArrayLike, i: ArrayLike) -> np.ndarray:
    """The i-th output (0-based) of SplitMix64 started at ``state``."""
    s = np.asarray(state, dtype=np.uint64)
    k = np.asarray(i, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return mix64(s + (k + _U(1)) * _U(GAMMA))


def check_seed(seed: int, name: str = "seed") -> int:
    """Validate a seed: an integer in [0, 2**64)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed <= MASK64:
        raise ValueError(f"{name} must be in [0, 2**64), got {seed}")
    return seed


def stream_keys(seed: int, stream: int, count: int) -> np.ndarray:
    """``stream_key(seed, stream, j)`` for j = 0..count-1, as uint64."""
    base = splitmix(np.uint64(seed), stream)
    return splitmix(base, np.arange(count, dtype=np.uint64))


def uniforms(seed: int, stream: int, count: int) -> np.ndarray:
    """``count`` float64 uniforms on [0, 1) from (seed, stream): 53 high bits of each key."""
    return (stream_keys(seed, stream, count) >> _U(11)).astype(np.float64) * 2.0**-53


def dithers(dither_seed: int, chunks: int) -> np.ndarray:
    """The scalar dither u_c ~ U[0, 1) of each chunk, float64."""
    return uniforms(dither_seed, STREAM_DITHER, chunks)


def rounding_key(dither_seed: int) -> np.uint64:
    """The base key of the rounding uniforms and tie-breaking coins of a client."""
    return np.uint64(splitmix(int(dither_seed), STREAM_METHOD))


def coordinate_dither_keys(dither_seed: int, chunks: int) -> np.ndarray:
    """Per-chunk keys of hd-dither-ec's per-coordinate dithers, uint64."""
    return stream_keys(dither_seed, STREAM_METHOD, chunks)


def pilot_keys(seed: int, chunks: int) -> np.ndarray:
    """Per-chunk keys of hd-dither-ec's pilot dithers (rotation seed), uint64."""
    return stream_keys(seed, STREAM_PILOT, chunks)


def sign_keys(seed: int, chunks: int) -> np.ndarray:
    """The per-chunk keys of the rotation signs, uint64."""
    return stream_keys(seed, STREAM_SIGNS, chunks)


def signs(key: int, n: int) -> np.ndarray:
    """Reference (numpy) rotation signs of one chunk of n coordinates: float32 of +-1."""
    words = splitmix(np.uint64(key), np.arange((n + 63) // 64, dtype=np.uint64))
    bits = np.unpackbits(words.astype("<u8").view(np.uint8), bitorder="little")[:n]
    return (1.0 - 2.0 * bits).astype(np.float32)


# --- numba twins, used inside the fused kernels -------------------------------------------


@njit(inline="always", cache=True)
def mix64_nb(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MUL1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MUL2)
    return z ^ (z >> np.uint64(31))


@njit(inline="always", cache=True)
def splitmix_nb(state, i):
    return mix64_nb(state + (np.uint64(i) + np.uint64(1)) * np.uint64(GAMMA))


def derive_seed(base: int, *keys: int) -> int:
    """A 64-bit seed derived from ``base`` and integer keys (e.g. round, client id):
    ``splitmix`` chained over the keys. Use it to give each client its own dither seed."""
    s = np.asarray(check_seed(base, "base"), dtype=np.uint64)
    for k in keys:
        s = splitmix(s, int(k) & MASK64)
    return int(s)


#: Separates partition-derived dither seeds from node-id-derived ones ("partitn").
PARTITION_DOMAIN = 0x7061727469746E


def round_seed(base: int, server_round: int) -> int:
    """The rotation seed every client of ``server_round`` shares."""
    return derive_seed(base, server_round)


def client_dither_seed(round_seed: int, node_id: int, partition_id: int | None = None) -> int:
    """The dither seed of one client in one round: from its partition id when it has one
    (unique per node in simulations and in ``--node-config "partition-id=..."``
    deployments, and the same in every run), else from its node id."""
    if partition_id is None:
        return derive_seed(round_seed, node_id)
    return derive_seed(round_seed, PARTITION_DOMAIN, partition_id)


#: Separates the downlink's seeds from the rounds' ("downlink").
DOWNLINK_DOMAIN = 0x646F776E6C696E6B


def downlink_seeds(base: int, version: int) -> tuple[int, int]:
    """(rotation seed, dither seed) of the downlink delta that makes public version v."""
    return derive_seed(base, DOWNLINK_DOMAIN, version), derive_seed(base, DOWNLINK_DOMAIN,
                                                                     version, 1)


# --- streams of fedhd.modular (summable codes for secure aggregation) --------------------

STREAM_PERMUTATION = 0x5A_0001  # the round's coordinate permutation (rotation seed)
STREAM_MODULAR_DITHER = 0x5A_0002  # a client's per-coordinate subtractive dithers
#: Separates the modular codes' dither seeds from the other per-client seeds ("summabl").
MODULAR_DOMAIN = 0x73756D6D61626C


def permutation(seed: int, n: int) -> np.ndarray:
    """The round's permutation of n coordinates (int64): ``argsort`` (stable) of the keys
    ``stream_key(seed, STREAM_PERMUTATION, g)``; a permuted vector is ``v[perm]``."""
    return np.argsort(stream_keys(check_seed(seed), STREAM_PERMUTATION, n), kind="stable")


def modular_dithers(dither_seed: int, n: int) -> np.ndarray:
    """The per-coordinate subtractive dithers v_g ~ U[0, 1) of one client, float64."""
    return uniforms(check_seed(dither_seed, "dither_seed"), STREAM_MODULAR_DITHER, n)


def modular_dither_seed(round_seed: int, client_id: int) -> int:
    """The dither seed of one client's summable code in one round (from its node id)."""
    return derive_seed(round_seed, MODULAR_DOMAIN, client_id)


# --- streams of powersgd -------------------------------------------------------------------

STREAM_POWERSGD = 0x50_0001  # powersgd's starting Q, per matrix view (dither seed)


def powersgd_start(dither_seed: int, view: int, count: int) -> np.ndarray:
    """``count`` float64 values uniform on [-1, 1): the starting Q of powersgd's matrix
    view ``view`` (row-major), from the client's dither seed."""
    key = splitmix(splitmix(np.uint64(check_seed(dither_seed, "dither_seed")),
                            STREAM_POWERSGD), view)
    u = (splitmix(key, np.arange(count, dtype=np.uint64)) >> _U(11)).astype(np.float64)
    return u * 2.0**-52 - 1.0
