"""drive: DRIVE (Vargaftik, Ben Basat, Portnoy, Mendelson, Ben-Itzhak, Mitzenmacher,
NeurIPS 2021), 1 bit per coordinate.

Per chunk, y' = H D x (shared rotation seed); the signs of y' are sent with DRIVE's
unbiased scale S = ||y'||^2 / ||y'||_1, and the decoder returns D H (S sign(y')) / n.
vNMSE pi/2 - 1 = 0.571 on Gaussian-like coordinates; unbiased over a uniformly random
rotation, approximately with one HD (see ``eden``, of which DRIVE is the b = 1 case).
Coordinates of y' that are exactly 0 (common after rotating sparse inputs) get a fair
random sign from the dither seed's stream (``fedhd.kernels.rounding.nearest_quantize``).

Payload: C float32 scales S, then one bit per padded coordinate.
"""

from __future__ import annotations

import numpy as np

from .rotated import RotatedCodebook

_SIGNS = np.array([-1.0, 1.0])
_SIGNS.setflags(write=False)
_ZERO = np.zeros(1)
_ZERO.setflags(write=False)


class DRIVE(RotatedCodebook):
    name = "drive"
    min_bits = 1
    max_bits = 1
    default_bits = 1
    unbiased = True  # over a uniform rotation; approximately with one HD

    def codebook(self, bits: int) -> tuple[np.ndarray, np.ndarray]:
        return _SIGNS, _ZERO


METHOD = DRIVE()
