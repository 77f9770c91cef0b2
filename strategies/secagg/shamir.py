"""Shamir secret sharing over the prime field GF(2**521 - 1) (a Mersenne prime).

A secret s < 2**512 (here 32-byte seeds and X25519 private keys) is the constant term of a
random polynomial f of degree t - 1; holder x (an integer 1 <= x < p) gets f(x). Any t
shares give s by Lagrange interpolation at 0; any t - 1 shares are consistent with EVERY
secret (for each candidate s' there is exactly one polynomial through them and (0, s')),
so they say nothing about s. No library the project depends on offers this, hence it is
written here; the randomness of the coefficients comes from the caller's ``randbytes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from .crypto import RandBytes

PRIME = (1 << 521) - 1
SHARE_BYTES = 66  # ceil(521 / 8)
MAX_SECRET_BYTES = 64


def _random_element(randbytes: RandBytes) -> int:
    """Uniform on [0, p) by rejection from 521 random bits."""
    while True:
        v = int.from_bytes(randbytes(SHARE_BYTES), "little") & PRIME
        if v < PRIME:
            return v


def split(secret: bytes, threshold: int, xs: Sequence[int], randbytes: RandBytes) -> list[int]:
    """The shares f(x) of ``secret`` for the holders ``xs`` (distinct, in [1, p))."""
    if len(secret) > MAX_SECRET_BYTES:
        raise ValueError(f"a secret is at most {MAX_SECRET_BYTES} bytes")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be in [1, {len(xs)}] (the holders)")
    _check_xs(xs)
    coeffs = [int.from_bytes(secret, "little")] + [_random_element(randbytes)
                                                  for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        shares.append(acc)
    return shares


def combine(points: Sequence[tuple[int, int]], threshold: int) -> int:
    """The secret from at least ``threshold`` shares (x, f(x)); only the first
    ``threshold`` are used. ValueError for too few, repeated or out-of-range shares."""
    if len(points) < threshold:
        raise ValueError(f"{len(points)} shares cannot reconstruct a secret shared with "
                         f"threshold {threshold}")
    pts = list(points)[:threshold]
    xs = tuple(x for x, _ in pts)
    _check_xs(xs)
    if not all(0 <= y < PRIME for _, y in pts):
        raise ValueError("a share value is outside the field")
    lam = lagrange_at_zero(xs)
    return sum(l_i * y for l_i, (_, y) in zip(lam, pts, strict=True)) % PRIME


@lru_cache(maxsize=1024)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Coefficients l_i with f(0) = sum_i l_i f(x_i) for every f of degree < len(xs)."""
    out = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(out)


def _check_xs(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        raise ValueError("share x-coordinates must be distinct")
    if not all(isinstance(x, int) and 1 <= x < PRIME for x in xs):
        raise ValueError("share x-coordinates must be integers in [1, p)")


def to_bytes(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "little")


def from_bytes(data: bytes) -> int:
    """A share value; ValueError when it is not a field element."""
    if len(data) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    v = int.from_bytes(data, "little")
    if v >= PRIME:
        raise ValueError("a share value is outside the field")
    return v
