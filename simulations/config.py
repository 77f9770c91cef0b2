"""Sweep configuration: defaults in ``default.toml``, a user TOML, CLI flags, Flower run-config.

Keys are kebab-case in TOML and in Flower's run-config (``flwr run -c 'rounds=5'``) and
snake_case on :class:`SweepConfig`. Flower's run-config holds scalars only, so list-valued
keys (``methods``, ``bits``, ``seeds``, ``method-bits``, ``task-options``, ``runs``) also
accept strings: ``methods = "identity,hd-dither"``, ``method-bits = "hd-dither:1,2,4;eden:2"``,
``task-options = "model=small;max-train-windows=500"``,
``runs = "hd-dither:2:downlink=hd-dither,downlink-bits=2;topk:1.1:error-feedback=true"``.
``seeds`` is a count when it is an integer (``seeds = 3``: seeds 0, 1, 2) and a list when
it is a list or a string (``seeds = "7"``: seed 7).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .link import MOBILE, Link

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


def _scalar(text: str) -> bool | int | float | str:
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_task_options(value: Any) -> dict[str, bool | int | float | str]:
    """``{"model": "small"}`` or ``"model=small;max-train-windows=500"`` (the task converts
    each value to the type of its default)."""
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, str):
        out: dict[str, bool | int | float | str] = {}
        for part in value.split(";"):
            if part.strip():
                key, sep, text = part.partition("=")
                if not sep:
                    raise ValueError(f"task-options: expected KEY=VALUE, got {part!r}")
                out[key.strip()] = _scalar(text)
        return out
    raise ValueError(f"task-options: expected a table or a string, got {value!r}")


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


@dataclass(frozen=True)
class RunSpec:
    """One configuration of a sweep: a method at a rate, with ``CompressedFedAvg`` options.

    ``options`` are keyword arguments of ``strategies.CompressedFedAvg`` (kebab- or
    snake-case keys; ``downlink``, ``downlink-bits``, ``error-feedback``, ...); ``label``
    names the configuration in the report, the CSV and the plots (default: see
    :func:`default_label`).
    """

    method: str
    bits: float
    options: tuple[tuple[str, Any], ...] = ()
    label: str = ""

    @property
    def kwargs(self) -> dict[str, Any]:
        """``options`` as snake-case keyword arguments of ``CompressedFedAvg``."""
        return {k.replace("-", "_"): v for k, v in self.options}

    @property
    def pair(self) -> tuple[str, float]:
        return (self.method, self.bits)

    def named(self, uncompressed: bool = False) -> RunSpec:
        """This spec with its label filled in (:func:`default_label`) when it has none."""
        if self.label:
            return self
        return dataclasses.replace(self, label=default_label(self, uncompressed))

    def to_string(self) -> str:
        """The run-config form ``method:bits[:key=value,...][@label]``."""
        text = f"{self.method}:{_num(self.bits)}"
        if self.options:
            text += ":" + ",".join(f"{k}={_text(v)}" for k, v in self.options)
        return text + (f"@{self.label}" if self.label else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return _num(v) if isinstance(v, int | float) else str(v)


def default_label(spec: RunSpec, uncompressed: bool = False) -> str:
    """``identity (uncompressed)``, ``hd-dither 2b``, ``topk 1.1b + EF``,
    ``hd-dither 2b + down hd-dither 2b``, other options as ``key=value``."""
    if uncompressed and not spec.options:
        return f"{spec.method} (uncompressed)"
    parts = [f"{spec.method} {_num(spec.bits)}b"]
    opts = spec.kwargs
    down = opts.pop("downlink", None)
    down_bits = opts.pop("downlink_bits", None)
    if opts.pop("error_feedback", False):
        parts.append("EF")
    if down not in (None, False):
        name = "default" if down is True else str(down)
        parts.append(f"down {name}" + (f" {_num(down_bits)}b" if down_bits is not None else ""))
    parts += [f"{k.replace('_', '-')}={_text(v)}" for k, v in opts.items()]
    return " + ".join(parts)


def parse_runs(value: Any) -> list[RunSpec]:
    """``[{"method": "hd-dither", "bits": 2, "label": "...", "options": {...}}, ...]`` (TOML
    ``[[sweep.runs]]``) or ``"method:bits[:key=value,...][@label];..."`` (run-config)."""
    if isinstance(value, str):
        value = [_run_from_string(part) for part in value.split(";") if part.strip()]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"runs: expected a list of tables or a string, got {value!r}")
    out = []
    for item in value:
        if isinstance(item, RunSpec):
            out.append(item)
            continue
        if not isinstance(item, dict) or "method" not in item or "bits" not in item:
            raise ValueError(f"runs: each run needs a method and bits, got {item!r}")
        unknown = set(item) - {"method", "bits", "options", "label"}
        if unknown:
            raise ValueError(f"runs: unknown key(s) {sorted(unknown)} in {item!r}; known: "
                             "method, bits, options, label")
        options = item.get("options") or {}
        if not isinstance(options, dict):
            raise ValueError(f"runs: options must be a table, got {options!r}")
        bits = item["bits"]
        if isinstance(bits, bool) or not isinstance(bits, int | float):
            raise ValueError(f"runs: bits must be a number, got {bits!r}")
        out.append(RunSpec(str(item["method"]), int(bits) if float(bits).is_integer()
                           else float(bits),
                           tuple((str(k).replace("_", "-"), v) for k, v in options.items()),
                           str(item.get("label", ""))))
    return out


def _run_from_string(text: str) -> dict[str, Any]:
    body, _, label = text.strip().partition("@")
    method, _, rest = body.partition(":")
    bits, _, opts = rest.partition(":")
    if not method.strip() or not bits.strip():
        raise ValueError(f"runs: expected method:bits[:key=value,...][@label], got {text!r}")
    options: dict[str, Any] = {}
    for part in opts.split(","):
        if part.strip():
            key, sep, val = part.partition("=")
            if not sep:
                raise ValueError(f"runs: expected key=value, got {part!r} in {text!r}")
            options[key.strip()] = _scalar(val)
    value = _scalar(bits)
    return {"method": method.strip(), "bits": value, "options": options,
            "label": label.strip()}


@dataclass
class SweepConfig:
    """Everything one sweep needs; see ``default.toml`` for the meaning of each key."""

    task: str = "mnist1d"
    task_options: dict[str, bool | int | float | str] = field(default_factory=dict)
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
    methods: list[str] = field(default_factory=lambda: ["identity", "hd-dither"])
    bits: list[int] = field(default_factory=lambda: [1, 2, 4])
    method_bits: dict[str, list[int]] = field(default_factory=dict)
    runs: list[RunSpec] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    target_fraction: float = 0.95
    target_points: float = 1.0
    out: str = "results"
    client_cpus: float = 1.0
    downlink_mbps: float = MOBILE.downlink_mbps
    uplink_mbps: float = MOBILE.uplink_mbps
    latency_ms: float = MOBILE.latency_ms
    compute_scale: float = 1.0
    quick: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        from .tasks.base import LR_SCHEDULES, load

        load(self.task, self.task_options)  # unknown task, module:Class or option: ValueError
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
        if not (self.methods or self.runs) or not self.seeds:
            raise ValueError("need at least one method (or run) and one seed")
        labels = [r.label for r in self.runs if r.label]
        if len(labels) != len(set(labels)):
            raise ValueError(f"runs: labels must be unique, got {labels}")
        if not 0.0 < self.target_fraction <= 1.0:
            raise ValueError("target-fraction must be in (0, 1]")
        if self.target_points < 0:
            raise ValueError("target-points must be >= 0")
        if self.client_cpus <= 0:
            raise ValueError("client-cpus must be > 0")
        self.link  # noqa: B018  (validates bandwidths, latency and compute scale)

    @property
    def link(self) -> Link:
        """The link model of the simulated wall-clock (:mod:`simulations.link`)."""
        return Link(downlink_mbps=self.downlink_mbps, uplink_mbps=self.uplink_mbps,
                    latency_ms=self.latency_ms, compute_scale=self.compute_scale)

    @property
    def clients_per_round(self) -> int:
        return max(2, int(self.clients * self.fraction))

    def to_dict(self) -> dict[str, Any]:
        """Kebab-case dict (TOML / JSON friendly; ``runs`` as tables)."""
        out = {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}
        out["runs"] = [{"method": r.method, "bits": r.bits, "options": dict(r.options),
                        **({"label": r.label} if r.label else {})} for r in self.runs]
        return out

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """Flat scalar dict for Flower's run-config (lists joined by commas)."""
        out: dict[str, bool | int | float | str] = {}
        for key, value in self.to_dict().items():
            if key == "method-bits":
                out[key] = ";".join(f"{m}:{','.join(map(str, b))}" for m, b in value.items())
            elif key == "task-options":
                out[key] = ";".join(f"{k}={v}" for k, v in value.items())
            elif key == "runs":
                out[key] = ";".join(r.to_string() for r in self.runs)
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
    "task_options": parse_task_options,
    "runs": parse_runs,
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


def read_sweep_table(path: str | Path) -> dict[str, Any]:
    """The sweep keys of a TOML file (under ``[sweep]``, or at top level)."""
    data = _read_toml(path)
    data = dict(data.get("sweep", data))
    if isinstance(data.get("quick"), dict):  # the [quick] table of a top-level layout
        del data["quick"]
    return data


def load_toml(path: str | Path, base: SweepConfig | None = None) -> SweepConfig:
    """Read a TOML file (keys under ``[sweep]``, or at top level) over ``base``."""
    return from_mapping(read_sweep_table(path), base)


def default_config() -> SweepConfig:
    """The configuration of ``default.toml`` (the default ``make demo`` run)."""
    return load_toml(DEFAULT_TOML)


def for_task(task: str, base: SweepConfig) -> SweepConfig:
    """``base`` switched to ``task``: the task's ``sweep_defaults`` over ``base`` and no task
    options (options belong to a task). ``base`` itself when the task is the same."""
    if task == base.task:
        return base
    from .tasks.base import resolve

    defaults = dict(resolve(task).sweep_defaults)
    return from_mapping({**defaults, "task": task, "task-options": {}}, base)


def quick(cfg: SweepConfig, path: str | Path | None = None) -> SweepConfig:
    """The ``--quick`` variant of ``cfg``: the ``[quick]`` table of ``path`` (if it has one)
    or of default.toml, applied over ``cfg``."""
    table = _read_toml(path).get("quick") if path is not None else None
    if table is None:
        table = _read_toml(DEFAULT_TOML)["quick"]
    return from_mapping({**table, "quick": True}, cfg)
