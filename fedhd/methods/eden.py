"""eden: EDEN (Vargaftik, Ben Basat, Portnoy, Mendelson, Ben-Itzhak, Mitzenmacher, ICML
2022), fixed rate b = 1..8 bits per coordinate.

Per chunk, y' = H D x (shared rotation seed, ``rng.sign_keys``; unnormalized H, so
||y'||^2 = n ||x_c||^2 and y' / ||x_c|| has roughly N(0, 1) coordinates). Each coordinate
goes to the nearest Lloyd-Max centroid of N(0, 1) (``fedhd.lloyd_max``), deterministically;
the decoder multiplies the centroids by EDEN's unbiased scale

    A = ||y'||^2 / <y', c[code]>,

which makes E[x_hat] = x over a uniformly random rotation and gives vNMSE
D_b / (1 - D_b) on Gaussian-like coordinates (D_b the Lloyd-Max distortion): 0.571, 0.133,
0.0358, 0.0096 at b = 1..4. With one HD instead of a uniform rotation the unbiasedness is
approximate (measured in ``python -m fedhd bench vnmse``), and since every client of a
round shares the rotation, their errors are correlated: give clients distinct rotation
seeds when averaging many (fedhd.Aggregator keeps one rotated sum per seed).

Coordinates exactly 0, on the middle threshold, take either neighbouring centroid with
probability 1/2 (from the dither seed's stream): sparse inputs rotate to many exact zeros,
and sending them all to one side is a measurable bias.

Payload: C float32 scales A, then the codes (padded * b / 8 bytes).
"""

from __future__ import annotations

from .rotated import RotatedCodebook


class EDEN(RotatedCodebook):
    name = "eden"
    default_bits = 2
    unbiased = True  # over a uniform rotation; approximately with one HD


METHOD = EDEN()
