"""What the simulations need to know about a compression method, read from fedhd's registry.

The sweep never tests a method's name: which bits a method runs at and whether it is the
uncompressed baseline follow from properties every method declares (``min_bits``,
``max_bits``; ``fedhd.methods`` registry, read-only).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Traits:
    name: str
    #: The single rate of a fixed-rate method (min_bits == max_bits), else None.
    fixed_bits: float | None

    @property
    def uncompressed(self) -> bool:
        """A fixed rate of 32 bits per coordinate: the update's float32 values, exactly."""
        return self.fixed_bits is not None and self.fixed_bits >= 32


def available() -> list[str]:
    """Names of the registered methods (``fedhd.methods()``)."""
    import fedhd

    return list(fedhd.methods())


def traits(name: str) -> Traits:
    """The :class:`Traits` of a registered method (ValueError for an unknown name)."""
    import importlib

    registry = importlib.import_module("fedhd.methods")  # the package (fedhd.methods the
    method = registry.get(name)  # attribute is the function that lists the names)
    lo, hi = getattr(method, "min_bits", None), getattr(method, "max_bits", None)
    return Traits(name=name, fixed_bits=float(lo) if lo is not None and lo == hi else None)


def bits_ok(name: str, bits: float) -> bool:
    """Whether ``fedhd.Codec(name, bits)`` accepts the rate."""
    import fedhd

    try:
        fedhd.Codec(name, bits)
    except (ValueError, TypeError):
        return False
    return True


def warm_up(pairs: list[tuple[str, float]], x: object) -> None:
    """Encode and decode ``x`` (a float32 vector) once with every (method, bits), so that
    one-off costs (kernel compilation, first imports) fall outside the measured rounds."""
    import fedhd

    for name, bits in pairs:
        fedhd.decode(fedhd.encode(x, bits, method=name))
