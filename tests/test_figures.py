"""The issue's error figures for hd-dither, as statistical tests with fixed seeds.

vNMSE: the worst case over the input family must stay under the target multiple of
C_b = (pi sqrt(3)/2) 4^-b. Estimates use N seeds each; for the low-dimensional error of
k-sparse inputs the standard error of a mean of N = 200 is about sqrt(2/200) = 10%, so the
targets are checked with the margin measured in README (1.17 vs 1.30 at b = 1).

Bias: for an unbiased estimator, R = ||mean of N decodes - x||^2 / (vNMSE ||x||^2 / N) is
a chi-square divided by its degrees of freedom, ~1 +- sqrt(2/dof); for a Gaussian input
(dof ~ d = 1024) R > 1.3 has probability < 1e-9. A bias b_rel = ||E x_hat - x||^2/||x||^2
adds N b_rel / vNMSE, so R <= 2.5 at N = 1500 caps b_rel at vNMSE / 1000.
"""

import numpy as np
import pytest

from fedhd.bench.inputs import input_family
from fedhd.bench.stats import c_b, vnmse_and_bias

TARGET = {1: 1.30, 2: 1.12, 3: 1.06, 4: 1.06, 8: 1.06}


@pytest.mark.slow
@pytest.mark.parametrize("bits", sorted(TARGET))
def test_worst_case_vnmse_over_input_family(bits):
    worst = 0.0
    for d in (1000, 1024):
        for x in input_family(d).values():
            v, _ = vnmse_and_bias(x, "hd-dither", bits, 200)
            worst = max(worst, v / c_b(bits))
    assert worst <= TARGET[bits]


@pytest.mark.slow
@pytest.mark.parametrize("bits, bound", [(2, 2.5), (3, 2.5), (4, 2.5), (1, 6.0)])
def test_bias_of_mean_of_1500_decodes_gaussian(bits, bound):
    """b >= 2: indistinguishable from unbiased. b = 1 keeps a small measured bias (README):
    its scale correction is damped (lambda = 0.9) to meet the 1-bit vNMSE bound."""
    x = input_family(1024)["gaussian"]
    v, bias = vnmse_and_bias(x, "hd-dither", bits, 1500)
    assert bias / (v / 1500) <= bound


@pytest.mark.slow
@pytest.mark.parametrize("bits", [3, 4])
def test_bias_ratio_structured_inputs(bits):
    """Constant and multi-scale block inputs (many error degrees of freedom)."""
    fam = input_family(1000)
    for name in ("constant", "blocks"):
        v, bias = vnmse_and_bias(fam[name], "hd-dither", bits, 1500)
        assert bias / (v / 1500) <= 2.5, name


def test_error_shrinks_like_one_over_n():
    """Averaging N independent encodings of a fixed x: the error of the mean is vNMSE/N."""
    x = np.random.default_rng(1).standard_normal(2048).astype(np.float32)
    for n in (16, 256):
        v, bias = vnmse_and_bias(x, "hd-dither", 2, n, seed0=1000)
        # chi-square with ~2048 dof / 2048: within +-25% at far beyond 5 sigma
        assert 0.75 <= bias / (v / n) <= 1.25
