"""Sweep configuration: defaults in ``default.toml``, a user TOML, CLI flags, Flower run-config.

Keys are kebab-case in TOML and in Flower's run-config (``flwr run -c 'rounds=5'``) and
snake_case on :class:`SweepConfig`. Flower's run-config holds scalars only, so list-valued
keys (``methods``, ``bits``, ``seeds``, ``method-bits``) also accept comma-separated strings:
``methods = "identity,hd-dither"``, ``method-bits = "hd-dither:1,2,4;eden:2"``.
``seeds`` is a count when it is an integer (``seeds = 3``: seeds 0, 1, 2) and a list when
it is a list or a string (``seeds = "7"``: seed 7).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_TOML = Path(__file__).with_name("default.toml")


def _int_list(value: Any, name: str) -> list[int]:
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected integers, got {value!r}")
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a list of integers, got {value!r}") from None


def _str_list(value: Any, name: str) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        raise ValueError(f"{name}: expected a list of names, got {value!r}")
    return [str(v).strip() for v in value if str(v).strip()]


def parse_seeds(value: Any) -> list[int]:
    """An integer N means N seeds, 0..N-1; a list or a string ("0,1,2", "7") lists them."""
    if isinstance(value, int) and not isinstance(value, bool):
        return list(range(value))
    return _int_list(value, "seeds")


def parse_method_bits(value: Any) -> dict[str, list[int]]:
    """``{"identity": [32]}`` or ``"identity:32;hd-dither-ec:1,2"``."""
    if isinstance(value, dict):
        return {str(k): _int_list(v, f"method-bits.{k}") for k, v in value.items()}
    if isinstance(value, str):
        out: dict[str, list[int]] = {}
        for part in value.split(";"):
            if part.strip():
                name, _, bits = part.partition(":")
                out[name.strip()] = _int_list(bits, f"method-bits.{name.strip()}")
        return out
    raise ValueError(f"method-bits: expected a table or a string, got {value!r}")


@dataclass
class SweepConfig:
    """Everything one sweep needs; see ``default.toml`` for the meaning of each key."""

    task: str = "mnist1d"
    clients: int = 20
    fraction: float = 0.5
    rounds: int = 15
    local_epochs: int = 1
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 0.005
    lr_schedule: str = "cosine"
    momentum: float = 0.9
    alpha: float = 0.5
    num_samples: int = 5000
    methods: list[str] = field(default_factory=lambda: ["identity", "hd-dither"])
    bits: list[int] = field(default_factory=lambda: [1, 2, 4])
    method_bits: dict[str, list[int]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    target_fraction: float = 0.95
    out: str = "results"
    client_cpus: float = 1.0
    quick: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        from .task import LR_SCHEDULES, TASKS

        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.clients < 2:
            raise ValueError("clients must be >= 2")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError("fraction must be in (0, 1]")
        if self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            raise ValueError("rounds, local-epochs and batch-size must be >= 1")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr-schedule must be one of {LR_SCHEDULES}")
        if self.alpha <= 0 or self.lr <= 0:
            raise ValueError("alpha and lr must be > 0")
        if not self.methods or not self.seeds:
            raise ValueError("need at least one method and one seed")
        if not 0.0 < self.target_fraction <= 1.0:
            raise ValueError("target-fraction must be in (0, 1]")
        if self.client_cpus <= 0:
            raise ValueError("client-cpus must be > 0")

    @property
    def clients_per_round(self) -> int:
        return max(2, int(self.clients * self.fraction))

    def to_dict(self) -> dict[str, Any]:
        """Kebab-case dict (TOML / JSON friendly)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """Flat scalar dict for Flower's run-config (lists joined by commas)."""
        out: dict[str, bool | int | float | str] = {}
        for key, value in self.to_dict().items():
            if key == "method-bits":
                out[key] = ";".join(f"{m}:{','.join(map(str, b))}" for m, b in value.items())
            elif isinstance(value, list):
                out[key] = ",".join(map(str, value))
            else:
                out[key] = value
        return out

    def replace(self, **changes: Any) -> SweepConfig:
        return dataclasses.replace(self, **changes)


_CONVERT = {
    "methods": lambda v: _str_list(v, "methods"),
    "bits": lambda v: _int_list(v, "bits"),
    "seeds": parse_seeds,
    "method_bits": parse_method_bits,
}


def from_mapping(data: dict[str, Any], base: SweepConfig | None = None) -> SweepConfig:
    """Overlay a kebab- or snake-case mapping (TOML table, run-config) on ``base``."""
    base = base or SweepConfig()
    names = {f.name: f for f in dataclasses.fields(SweepConfig)}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in names:
            raise ValueError(f"unknown config key {key!r}; known: "
                             f"{sorted(n.replace('_', '-') for n in names)}")
        if name in _CONVERT:
            changes[name] = _CONVERT[name](value)
        else:
            current = getattr(base, name)
            if isinstance(current, bool):
                if isinstance(value, str):
                    value = value.strip().lower() in ("1", "true", "yes", "on")
                changes[name] = bool(value)
            else:
                changes[name] = type(current)(value)
    return dataclasses.replace(base, **changes)


def _read_toml(path: str | Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        return tomllib.load(f)


def load_toml(path: str | Path, base: SweepConfig | None = None) -> SweepConfig:
    """Read a TOML file (keys under ``[sweep]``, or at top level) over ``base``."""
    data = _read_toml(path)
    data = dict(data.get("sweep", data))
    if isinstance(data.get("quick"), dict):  # the [quick] table of a top-level layout
        del data["quick"]
    return from_mapping(data, base)


def default_config() -> SweepConfig:
    """The configuration of ``default.toml`` (the default ``make demo`` run)."""
    return load_toml(DEFAULT_TOML)


def quick(cfg: SweepConfig, path: str | Path | None = None) -> SweepConfig:
    """The ``--quick`` variant of ``cfg``: the ``[quick]`` table of ``path`` (if it has one)
    or of default.toml, applied over ``cfg``."""
    table = _read_toml(path).get("quick") if path is not None else None
    if table is None:
        table = _read_toml(DEFAULT_TOML)["quick"]
    return from_mapping({**table, "quick": True}, cfg)
