"""The dithered companded grid is EXACTLY unbiased inside its clip range.

For a fixed z the decoded value r_{j(z,u)}(u) is smooth in u except at the one dither
value where a threshold crosses z, so Gauss-Legendre quadrature on the two pieces gives
E_u[r] to ~1e-12: no sampling noise.
"""

import numpy as np
import pytest
from scipy.special import ndtr

from fedhd.grid import CLIP, DitheredGrid

NODES, WEIGHTS = np.polynomial.legendre.leggauss(40)


def _expected_decode(g: DitheredGrid, z: float) -> float:
    t = (ndtr(z / g.sigma) - g._pa) / g._dp  # compander: z -> t in [0, L-1]
    t = min(max(t, 0.0), g.levels - 1.0)
    f = t - np.floor(t) if t < g.levels - 1 else 1.0
    total = 0.0
    for lo, hi in ((0.0, f), (f, 1.0)):
        if hi - lo < 1e-15:
            continue
        u = lo + (hi - lo) * (NODES + 1) / 2
        th, tb = g.thresholds(u), g.table(u)
        j = (th < z).sum(axis=1)
        total += (hi - lo) / 2 * float(WEIGHTS @ tb[np.arange(len(u)), j])
    return total


@pytest.mark.parametrize("bits", sorted(CLIP))
def test_exactly_unbiased_inside_and_clipped_outside(bits):
    g = DitheredGrid(bits)
    c = g.clip
    for z in np.linspace(-0.999 * c, 0.999 * c, 23):
        assert abs(_expected_decode(g, z) - z) < 1e-6 * max(1.0, c)
    for z in (1.5 * c, 3 * c):
        assert abs(_expected_decode(g, z) - c) < 1e-6 * c
        assert abs(_expected_decode(g, -z) + c) < 1e-6 * c


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_tables_sorted_and_symmetric(bits):
    g = DitheredGrid(bits)
    u = np.linspace(0.01, 0.99, 9)
    th, tb = g.thresholds(u), g.table(u)
    assert (np.diff(th, axis=1) > 0).all() and (np.diff(tb, axis=1) > 0).all()
    # negating z and reflecting the dither u -> 1-u mirrors the grid
    np.testing.assert_allclose(g.thresholds(1 - u)[:, ::-1], -th, atol=1e-9)
    np.testing.assert_allclose(g.table(1 - u)[:, ::-1], -tb, atol=1e-7)
