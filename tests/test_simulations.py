"""Tests of the simulations package: data split, models, config, the sweep (in-process on
strategies.LocalGrid, no Ray), the outputs, and one `python -m simulations --quick` run on
Flower's Simulation Engine (slow)."""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from simulations import config as C
from simulations import report
from simulations import task as T
from simulations.server_app import MeteredGrid, plan, run_sweep

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- task


def test_dirichlet_partition_is_a_deterministic_non_iid_split():
    labels = np.repeat(np.arange(10), 100)
    parts = T.dirichlet_partition(labels, 20, 0.5, seed=3)
    again = T.dirichlet_partition(labels, 20, 0.5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    joined = np.concatenate(parts)
    assert len(joined) == len(labels) and len(np.unique(joined)) == len(labels)
    assert min(len(p) for p in parts) >= 10
    # non-IID: some client's label histogram is far from uniform
    skews = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    assert max(skews) > 0.4
    other = T.dirichlet_partition(labels, 20, 0.5, seed=4)
    assert any(not np.array_equal(a, b) for a, b in zip(parts, other))


def test_dirichlet_partition_rejects_impossible_requests():
    with pytest.raises(ValueError):
        T.dirichlet_partition(np.zeros(50, np.int64), 10, 0.5, seed=0)


@pytest.mark.parametrize("task, shape", [("mnist1d", (3, 1, 40)), ("digits", (3, 64))])
def test_models(task, shape):
    model = T.make_model(task, seed=1)
    assert T.num_params(model) >= 20_000
    assert model(torch.zeros(shape)).shape == (3, 10)
    same = T.make_model(task, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 same.state_dict().values()))


def test_data_is_generated_locally_and_cached():
    data = T.load_data("mnist1d", 5000)
    assert data.x.shape == (4000, 1, 40) and data.x_test.shape == (1000, 1, 40)
    assert data.x.dtype == np.float32 and set(np.unique(data.y)) == set(range(10))
    digits = T.load_data("digits")
    assert digits.x.shape[1] == 64


def test_cosine_schedule():
    assert T.scheduled_lr(0.01, "constant", 7, 10) == 0.01
    assert T.scheduled_lr(0.01, "cosine", 1, 10) == pytest.approx(0.01)
    lrs = [T.scheduled_lr(0.01, "cosine", r, 10) for r in range(1, 11)]
    assert all(a > b > 0 for a, b in itertools.pairwise(lrs))


# ---------------------------------------------------------------------------- config


def test_default_config_and_run_config_round_trip():
    cfg = C.default_config()
    assert cfg.clients >= 20 and cfg.alpha == 0.5 and len(cfg.seeds) >= 3
    assert T.num_params(T.make_model(cfg.task)) >= 20_000
    assert C.from_mapping(cfg.to_run_config()) == cfg
    assert C.parse_seeds(3) == [0, 1, 2]
    assert C.parse_seeds("7") == [7]
    assert C.parse_method_bits("identity:32;eden:1,2") == {"identity": [32], "eden": [1, 2]}
    with pytest.raises(ValueError):
        C.from_mapping({"no-such-key": 1})
    with pytest.raises(ValueError):
        C.from_mapping({"fraction": 0.0})


def test_flwr_app_config_mirrors_default_toml():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    with open(ROOT / "simulations" / "flwr_app" / "pyproject.toml", "rb") as f:
        app = tomllib.load(f)["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "simulations.server_app:app",
                                 "clientapp": "simulations.client_app:app"}
    assert app["config"] == C.default_config().to_run_config()


def test_quick_config_is_small():
    cfg = C.quick(C.default_config())
    assert cfg.quick and cfg.clients >= 20
    assert plan(cfg)[0] == [("identity", 32), ("hd-dither", 2)]
    assert len(cfg.seeds) * cfg.rounds <= 3


def test_plan_skips_unregistered_methods():
    cfg = C.default_config().replace(methods=["identity", "hd-dither", "no-such-method"],
                                     bits=[2], method_bits={"identity": [32]})
    pairs, notes = plan(cfg)
    assert pairs == [("identity", 32), ("hd-dither", 2)]
    assert any("no-such-method" in n for n in notes)


def test_cli_plan(capsys):
    from simulations.__main__ import main

    assert main(["--plan", "--methods", "identity,hd-dither,nope", "--bits", "1,2",
                 "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "hd-dither 1b" in out and "hd-dither 2b" in out and "nope" in out
    assert "[0, 1]" in out


# ---------------------------------------------------------------------------- sweep


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """A tiny sweep run in-process over strategies.LocalGrid (same apps, no Ray)."""
    from simulations.client_app import app
    from benchmarks.localgrid import LocalGrid

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("results")
    cfg = C.default_config().replace(
        clients=4, fraction=0.5, rounds=2, local_epochs=1, num_samples=1000,
        methods=["identity", "hd-dither"],
        bits=[1, 2], method_bits={"identity": [32]}, seeds=[0, 1], out=str(out))
    grid = MeteredGrid(LocalGrid(app, num_nodes=cfg.clients, seed=5))
    results = run_sweep(grid, cfg)
    summary = report.write_all(results, cfg, seconds=1.0)
    return cfg, grid, results, summary, out


def test_sweep_runs_every_config_and_meters_the_wire(local_sweep):
    cfg, grid, results, _, _ = local_sweep
    assert [(r.method, r.bits, r.seed) for r in results] == [
        (m, b, s) for s in (0, 1) for m, b in (("identity", 32), ("hd-dither", 1),
                                               ("hd-dither", 2))]
    assert sorted(grid.partition_of.values()) == list(range(cfg.clients))
    for res in results:
        assert [row["round"] for row in res.rows] == list(range(cfg.rounds + 1))
        assert res.rows[0]["uplink_bytes"] == 0
        # the Grid's meter agrees with the strategy's own count, round by round
        assert res.rows[-1]["uplink_bytes"] == sum(r["uplink_bytes_round"] for r in res.rows[1:])
        assert all(r["accepted"] == cfg.clients_per_round and r["dropped"] == 0
                   for r in res.rows[1:])
    fp32 = next(r for r in results if r.method == "identity").rows[-1]["uplink_bytes"]
    two = next(r for r in results if r.bits == 2).rows[-1]["uplink_bytes"]
    assert fp32 / two > 14


def test_sweep_is_reproducible(local_sweep):
    from simulations.client_app import app
    from simulations.server_app import run_one
    from benchmarks.localgrid import LocalGrid

    cfg, _, results, _, _ = local_sweep
    grid = MeteredGrid(LocalGrid(app, num_nodes=cfg.clients, seed=9))  # other node ids
    grid.map_partitions(cfg.clients)
    again = run_one(grid, cfg, "identity", 32, 1)
    first = next(r for r in results if r.method == "identity" and r.seed == 1)
    assert [r["accuracy"] for r in again.rows] == [r["accuracy"] for r in first.rows]


def test_outputs(local_sweep):
    cfg, _, results, summary, out = local_sweep
    assert {p.name for p in out.iterdir()} >= set(report.FILES.values())
    with open(out / "rounds.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(r.rows) for r in results)
    assert {"round", "method", "bits", "seed", "accuracy", "loss", "uplink_bytes",
            "downlink_bytes"} <= set(rows[0])
    data = json.loads((out / "summary.json").read_text())
    assert set(data) >= {"rows", "config"}
    keys = {"method", "bits", "seeds", "final_accuracy_mean", "final_accuracy_std",
            "uplink_bytes_total", "rounds_to_target"}
    assert all(keys <= set(row) for row in data["rows"])
    assert [(r["method"], r["bits"]) for r in data["rows"]] == [
        ("identity", 32), ("hd-dither", 1), ("hd-dither", 2)]
    assert data["rows"][0]["seeds"] == [0, 1]
    assert data["config"]["clients"] == cfg.clients
    md = (out / "summary.md").read_text()
    assert "| hd-dither | 2 |" in md
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    text = report.console(summary, str(out))
    assert len(text.splitlines()) < 40 and "hd-dither" in text


# ---------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_quick_run_on_the_simulation_engine(tmp_path):
    """`python -m simulations --quick`: Ray, 20 virtual clients, outputs, < 2 minutes."""
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "simulations", "--quick", "--no-progress", "--out",
         str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fedhd sweep summary" in proc.stdout
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["config"]["clients"] >= 20 and data["config"]["quick"] is True
    assert {(r["method"], r["bits"]) for r in data["rows"]} == {("identity", 32),
                                                                ("hd-dither", 2)}
    assert all(r["uplink_bytes_total"] > 0 for r in data["rows"])
    assert (tmp_path / "accuracy.png").exists() and (tmp_path / "rounds.csv").exists()
    assert elapsed < 120, f"--quick took {elapsed:.0f} s"
