"""The round's compression settings: what the server writes into a train config and the
client mod reads back (keys in ``strategies.constants``), in one place for both sides."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, ConfigRecordValues, RecordDict
from flwr.common.constant import SType

import fedhd
from fedhd.methods import get as get_method

from . import constants as C


class PreconditionError(ValueError):
    """A train message or its reply cannot be compressed as asked."""


@dataclass(frozen=True)
class Settings:
    """What the server asks for in a round's train config."""

    method: str
    bits: float
    seed: int
    log2_chunk: int | None
    exact: tuple[str, ...] = ()
    #: Client-side error feedback (``strategies.error_feedback``); None: the method's
    #: default, on for biased methods (``default_error_feedback``).
    error_feedback: bool | None = None

    @property
    def uses_error_feedback(self) -> bool:
        """Whether the node keeps a residual and adds it to its update this round."""
        if self.error_feedback is None:
            return default_error_feedback(self.method)
        return self.error_feedback

    @classmethod
    def from_config(cls, config: ConfigRecord) -> Settings:
        """Read and validate the ``fedhd.*`` keys; PreconditionError when malformed."""
        method = config.get(C.KEY_METHOD)
        bits = config.get(C.KEY_BITS)
        seed = config.get(C.KEY_SEED)
        log2_chunk = config.get(C.KEY_LOG2_CHUNK)
        exact = config.get(C.KEY_EXACT, [])
        error_feedback = config.get(C.KEY_ERROR_FEEDBACK)
        if not isinstance(method, str):
            raise PreconditionError(f"'{C.KEY_METHOD}' must be a str, got {method!r}")
        if method not in fedhd.methods():
            raise PreconditionError(
                f"method {method!r} is not available in this fedhd "
                f"({fedhd.__version__}); known: {fedhd.methods()}"
            )
        if isinstance(bits, bool) or not isinstance(bits, (int, float)):
            raise PreconditionError(f"'{C.KEY_BITS}' must be a number, got {bits!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise PreconditionError(f"'{C.KEY_SEED}' must be an int in [0, 2**64), got {seed!r}")
        if log2_chunk is not None and (
            isinstance(log2_chunk, bool) or not isinstance(log2_chunk, int)
        ):
            raise PreconditionError(f"'{C.KEY_LOG2_CHUNK}' must be an int, got {log2_chunk!r}")
        if not isinstance(exact, list) or not all(isinstance(p, str) for p in exact):
            raise PreconditionError(f"'{C.KEY_EXACT}' must be a list of str, got {exact!r}")
        if error_feedback is not None and not isinstance(error_feedback, bool):
            raise PreconditionError(
                f"'{C.KEY_ERROR_FEEDBACK}' must be a bool, got {error_feedback!r}")
        try:
            codec = make_codec(method, float(bits), log2_chunk)
        except (TypeError, ValueError) as e:
            raise PreconditionError(str(e)) from None
        return cls(method, codec.bits, seed, log2_chunk, tuple(str(p) for p in exact),
                   error_feedback)

    def to_config(self) -> dict[str, ConfigRecordValues]:
        """The ``fedhd.*`` train config keys of these settings."""
        cfg: dict[str, ConfigRecordValues] = {
            C.KEY_METHOD: self.method,
            C.KEY_BITS: float(self.bits),
            C.KEY_SEED: self.seed,
        }
        if self.log2_chunk is not None:
            cfg[C.KEY_LOG2_CHUNK] = int(self.log2_chunk)
        if self.exact:
            cfg[C.KEY_EXACT] = list(self.exact)
        cfg[C.KEY_ERROR_FEEDBACK] = self.uses_error_feedback
        return cfg

    def codec(self) -> fedhd.Codec:
        return make_codec(self.method, self.bits, self.log2_chunk)


def default_error_feedback(method: str) -> bool:
    """Error feedback is on by default for the biased methods (``Method.unbiased`` False:
    topk, scaled-sign, powersgd, turboquant, fp16), off for the unbiased ones."""
    return not get_method(method).unbiased


def make_codec(method: str, bits: float | None, log2_chunk: int | None) -> fedhd.Codec:
    """A fedhd Codec; ``log2_chunk=None`` keeps fedhd's default chunk size."""
    if log2_chunk is None:
        return fedhd.Codec(method, bits)
    return fedhd.Codec(method, bits, log2_chunk)


def find_settings_record(content: RecordDict) -> ConfigRecord | None:
    """The ConfigRecord of ``content`` that carries the ``fedhd.*`` keys, if any."""
    for record in content.config_records.values():
        if C.KEY_METHOD in record:
            return record
    return None


def is_exact(key: str, patterns: tuple[str, ...]) -> bool:
    """Whether a float array is sent exactly rather than compressed."""
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def numpy_arrays(record: ArrayRecord, what: str = "array") -> dict[str, np.ndarray]:
    """The record's arrays as numpy; ValueError for one that is not a numpy array."""
    out: dict[str, np.ndarray] = {}
    for key, arr in record.items():
        if arr.stype != SType.NUMPY:
            raise ValueError(f"{what} '{key}' has stype {arr.stype!r}; fedhd compression "
                             f"needs {SType.NUMPY!r} arrays")
        out[key] = arr.numpy()
    return out


def float_keys(arrays: dict[str, np.ndarray], exact: tuple[str, ...]) -> list[str]:
    """The keys of the float arrays that are compressed: float, and no ``exact`` pattern."""
    return [k for k, a in arrays.items() if a.dtype.kind == "f" and not is_exact(k, exact)]
