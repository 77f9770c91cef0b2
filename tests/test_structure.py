"""The shapes the architecture promises: method ids from one table, the device seam picked
once, packaging that takes ranges (the exact pins live in .ci/constraints.txt)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import tomllib

import fedhd
from fedhd.methods import METHOD_IDS, by_id, get
from fedhd.methods.base import Method

ROOT = Path(__file__).resolve().parent.parent


def test_every_registered_method_takes_its_id_from_the_table():
    assert sorted(METHOD_IDS) == sorted(fedhd.methods())
    for name, method_id in METHOD_IDS.items():
        assert get(name).method_id == method_id and by_id(method_id) is get(name)


def test_a_method_class_without_a_name_or_an_id_fails_at_definition():
    with pytest.raises(TypeError, match="must set a name"):
        type("Nameless", (Method,), {})
    with pytest.raises(TypeError, match="no wire id"):
        type("Unlisted", (Method,), {"name": "not-in-the-table"})


def test_one_default_method_for_library_and_strategies():
    from strategies import constants

    assert constants.DEFAULT_METHOD is fedhd.DEFAULT_METHOD
    blob = fedhd.encode(np.ones(64, np.float32))
    assert fedhd.header(blob).method_id == METHOD_IDS[fedhd.DEFAULT_METHOD]


def test_methods_hold_no_host_or_device_branches():
    """The CPU/GPU choice is made in api.py / aggregate.py (fedhd.backend), not in methods."""
    for path in (ROOT / "fedhd" / "methods").glob("*.py"):
        src = path.read_text()
        assert "isinstance(x, np.ndarray)" not in src and "backend.cuda" not in src, path
        assert "import gpu" not in src and "CudaBackend" not in src, path


def test_package_metadata_takes_ranges_not_this_machines_pins():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"]) + [r for extra in meta["optional-dependencies"].values()
                                         for r in extra]
    for req in reqs:
        name = re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0]
        if name in ("torch", "flwr"):
            assert "==" not in req, f"{req}: the library's metadata must take a range"
    pins = (ROOT / ".ci" / "constraints.txt").read_text()
    assert "torch==2.13.0" in pins  # the CPU wheel CI installs


def test_simulations_import_no_cycle_between_report_and_server_app():
    def imports(module: str) -> set[str]:
        tree = ast.parse((ROOT / "simulations" / f"{module}.py").read_text())
        return {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}

    assert not any("server_app" in m for m in imports("report"))
    assert not any("report" in m for m in imports("server_app"))


def test_option_lists_name_exactly_the_keywords_they_pass_through():
    """The strategies pass their options on by name lists; a list that drifts from the
    signature it feeds would send a keyword to FedAvg (TypeError) or drop it."""
    import inspect

    from strategies.round import OPTIONS, RoundCompressor
    from strategies.secagg.strategy import SECAGG_OPTIONS, SecureAggregator

    def keywords(cls, positional):
        return [p for p in inspect.signature(cls.__init__).parameters
                if p not in ("self", *positional)]

    assert keywords(SecureAggregator, ("clip_norm", "bits")) == list(SECAGG_OPTIONS)
    assert set(keywords(RoundCompressor, ("method", "bits", "seed"))) == set(OPTIONS)
