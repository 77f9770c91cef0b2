"""Typed errors raised by fedhd."""


class DecodeError(ValueError):
    """A blob is malformed, truncated, extended, corrupted or inconsistent with its header."""
