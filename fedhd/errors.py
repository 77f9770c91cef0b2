"""Typed errors raised by fedhd."""


class DecodeError(ValueError):
    """A blob is malformed, truncated, extended, corrupted or inconsistent with its header."""


class NormExceeded(ValueError):
    """An update's L2 norm is above the bound the server set (``max_norm``)."""

    def __init__(self, norm: float, bound: float):
        super().__init__(f"update norm {norm:.4g} exceeds the bound {bound:.4g}")
        self.norm, self.bound = norm, bound
