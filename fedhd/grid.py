"""The dithered companded grid of "hd-dither" (the paper's dithered TurboQuant).

Work in the normalized rotated domain, z = y * sqrt(n) / ||x|| (coordinates ~ N(0, 1)).

Compander. t in [0, L-1] (L = 2**b levels) maps to z = h(t) = sigma * Phi^-1(p(t)),
p(t) = Phi(-c/sigma) + t / (L-1) * (Phi(c/sigma) - Phi(-c/sigma)). With sigma = sqrt(3) the
grid density follows the Gaussian f^(1/3) law, whose Panter-Dite error is
(pi sqrt(3) / 2) 4^-b; c is the clip point (the outermost reconstruction mean).

Quantizer. One dither u ~ U[0, 1) per chunk; thresholds theta_m(u) = h(m + u),
m = 0..L-2; the code of z is j = #{m : theta_m(u) < z}.

Reconstruction. r_j(u) = delta(u) + sum_{m<j} h'(m + u). Differentiating
E_u[r_{j(z,u)}(u)] in z shows this is EXACTLY unbiased, E_u[r] = z for every |z| <= c,
whenever the mean of delta over u equals h(0) = -c. Among such offsets we take the one of
least mean squared error for a N(0, 1) coordinate: delta(u) = delta*(u) - mean(delta*) - c,
with delta*(u) = E_z[z - A_j(u)] in closed form. Beyond the clip point E_u[r] = +-c; the
encoder's scale correction (``fedhd.methods.hd_dither``) removes that shrinkage on average.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from scipy.special import ndtr, ndtri

SIGMA = float(np.sqrt(3.0))
#: Clip point c per bit width, chosen by scanning the worst-case vNMSE over the input
#: family (``python -m fedhd bench figures``). The scale correction makes a tight clip
#: cheap, so c is well below the clip of an uncorrected grid.
CLIP = {1: 1.00, 2: 1.80, 3: 2.30, 4: 2.80, 5: 3.20, 6: 3.70, 7: 4.30, 8: 4.60}
#: Compander spread per bit width: sqrt(3) is the f^(1/3) law; at 1 bit a flatter (more
#: uniform) grid has less error.
SPREAD = {b: SIGMA for b in CLIP}
#: Weight lambda of the clip-bias scale correction, kappa' = 1 + lambda (kappa - 1): full
#: correction costs kappa^2 in dither noise, too much at 1 bit (README, "bias").
KAPPA_WEIGHT = {b: 0.9 if b == 1 else 1.0 for b in CLIP}
_QUAD = 4096  # midpoint nodes for the mean of delta* over u


def _phi(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)


class DitheredGrid:
    """Thresholds and reconstruction tables of one bit width."""

    def __init__(self, bits: int, clip: float | None = None, sigma: float | None = None):
        self.bits = bits
        self.levels = 1 << bits
        self.clip = CLIP[bits] if clip is None else clip
        self.sigma = SPREAD[bits] if sigma is None else sigma
        sigma = self.sigma
        self._pa = float(ndtr(-self.clip / sigma))
        self._dp = (float(ndtr(self.clip / sigma)) - self._pa) / (self.levels - 1)
        mid = (np.arange(_QUAD) + 0.5) / _QUAD
        self._mean_delta_star = float(self._delta_star(mid).mean())

    def h(self, t: np.ndarray) -> np.ndarray:
        """Inverse compander: t in [0, L-1] -> z in [-c, c]."""
        return self.sigma * ndtri(self._pa + t * self._dp)

    def _parts(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Thresholds (C, L-1) and cumulative offsets A (C, L) for dithers u (C,)."""
        t = u[:, None] + np.arange(self.levels - 1)[None, :]
        theta = self.h(t)
        dh = self.sigma * self._dp / _phi(theta / self.sigma)
        A = np.zeros((u.shape[0], self.levels))
        np.cumsum(dh, axis=1, out=A[:, 1:])
        return theta, A

    def _delta_star(self, u: np.ndarray) -> np.ndarray:
        theta, A = self._parts(u)
        inf = np.full((u.shape[0], 1), np.inf)
        edges = np.concatenate([-inf, theta, inf], axis=1)
        P = np.diff(ndtr(edges), axis=1)
        M = -np.diff(_phi(edges), axis=1)  # E[z; z in cell j]
        return (M - A * P).sum(axis=1)

    def thresholds(self, u: np.ndarray) -> np.ndarray:
        """theta_m(u), shape (C, L-1), increasing in m."""
        return self._parts(np.asarray(u, np.float64))[0]

    def table(self, u: np.ndarray) -> np.ndarray:
        """Reconstruction points r_j(u), shape (C, L)."""
        u = np.asarray(u, np.float64)
        _, A = self._parts(u)
        delta = self._delta_star(u) - self._mean_delta_star - self.clip
        return A + delta[:, None]


@cache
def grid(bits: int) -> DitheredGrid:
    return DitheredGrid(bits)
