"""Tests of the simulations package: data split, models, config, the sweep (in-process on
benchmarks.localgrid.LocalGrid, no Ray), the outputs, and one `python -m simulations --quick`
run on Flower's Simulation Engine (slow). Tasks: tests/test_sim_tasks.py; metering and the
link model: tests/test_sim_metering.py."""

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
from simulations import tasks as T
from simulations.metering import MeteredGrid
from simulations.server_app import plan, run_sweep
from simulations.tasks.base import scheduled_lr

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


@pytest.mark.parametrize("task, shape, params", [("mnist1d", (3, 1, 40), 106_378),
                                                 ("digits", (3, 64), 26_122)])
def test_models(task, shape, params):
    model = T.build_model(T.load(task), seed=1)
    assert T.num_params(model) == params
    assert model(torch.zeros(shape)).shape == (3, 10)
    same = T.build_model(T.load(task), seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 same.state_dict().values()))
    other = T.build_model(T.load(task), seed=2)
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                     other.state_dict().values()))


def test_data_is_generated_locally_and_cached():
    task = T.load("mnist1d", {"num-samples": 5000})
    task.prepare()
    train = task.client_data(0, 20, alpha=0.5, seed=0)
    test = task.test_data(20, seed=0)
    assert test.x.shape == (1000, 1, 40) and train.x.shape[1:] == (1, 40)
    assert train.x.dtype == np.float32 and set(np.unique(test.y)) == set(range(10))
    shards = [len(task.client_data(i, 20, alpha=0.5, seed=0)) for i in range(20)]
    assert sum(shards) == 4000
    digits = T.load("digits").test_data(4, seed=0)
    assert digits.x.shape[1] == 64


def test_cosine_schedule():
    assert scheduled_lr(0.01, "constant", 7, 10) == 0.01
    assert scheduled_lr(0.01, "cosine", 1, 10) == pytest.approx(0.01)
    lrs = [scheduled_lr(0.01, "cosine", r, 10) for r in range(1, 11)]
    assert all(a > b > 0 for a, b in itertools.pairwise(lrs))


# ---------------------------------------------------------------------------- config


def test_default_config_and_run_config_round_trip():
    cfg = C.default_config()
    assert cfg.clients >= 20 and cfg.alpha == 0.5 and len(cfg.seeds) >= 3
    assert T.num_params(T.build_model(T.load(cfg.task))) >= 20_000
    assert C.from_mapping(cfg.to_run_config()) == cfg
    opts = cfg.replace(task_options={"num-samples": 3000})
    assert C.from_mapping(opts.to_run_config()) == opts
    assert C.parse_task_options("model=small;max-train-windows=500;x=0.5") == {
        "model": "small", "max-train-windows": 500, "x": 0.5}
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
    assert [s.pair for s in plan(cfg)[0]] == [("identity", 32), ("hd-dither", 2)]
    assert len(cfg.seeds) * cfg.rounds <= 3


def test_plan_skips_unregistered_methods():
    cfg = C.default_config().replace(methods=["identity", "hd-dither", "no-such-method"],
                                     bits=[2], method_bits={"identity": [32]})
    specs, notes = plan(cfg)
    assert [s.pair for s in specs] == [("identity", 32), ("hd-dither", 2)]
    assert [s.label for s in specs] == ["identity (uncompressed)", "hd-dither 2b"]
    assert any("no-such-method" in n for n in notes)


def test_run_specs_from_toml_tables_and_strings():
    tables = [{"label": "hd-dither 2b + down 2b", "method": "hd-dither", "bits": 2,
               "options": {"downlink": "hd-dither", "downlink-bits": 2}},
              {"method": "topk", "bits": 1.0625, "options": {"error_feedback": True}}]
    specs = C.parse_runs(tables)
    assert specs[0].kwargs == {"downlink": "hd-dither", "downlink_bits": 2}
    assert specs[0].label == "hd-dither 2b + down 2b" and specs[1].label == ""
    assert specs[1].named().label == "topk 1.0625b + EF"
    assert C.parse_runs("hd-dither:2:downlink=hd-dither,downlink-bits=2@hd-dither 2b + down 2b;"
                        "topk:1.0625:error-feedback=true") == specs
    assert C.parse_runs(specs[0].to_string()) == specs[:1]
    assert C.RunSpec("hd-dither", 1, (("downlink", "hd-dither"), ("downlink-bits", 1))
                     ).named().label == "hd-dither 1b + down hd-dither 1b"
    cfg = C.default_config().replace(runs=specs)
    assert C.from_mapping(cfg.to_run_config()) == cfg
    for bad in ("hd-dither", "hd-dither:2:downlink", [{"method": "x"}],
                [{"method": "x", "bits": 2, "nope": 1}]):
        with pytest.raises(ValueError):
            C.parse_runs(bad)
    with pytest.raises(ValueError, match="unique"):
        C.default_config().replace(runs=[specs[0], specs[0]])


def test_plan_with_runs_labels_them_and_skips_what_cannot_run():
    runs = C.parse_runs([
        {"label": "down", "method": "hd-dither", "bits": 2,
         "options": {"downlink": "hd-dither", "downlink-bits": 2}},
        {"label": "ghost", "method": "no-such-method", "bits": 2},
        {"label": "odd option", "method": "hd-dither", "bits": 2,
         "options": {"no-such-option": 1}},
        {"label": "bad downlink", "method": "hd-dither", "bits": 2,
         "options": {"downlink": "no-such-method"}}])
    cfg = C.default_config().replace(methods=["identity"], method_bits={}, runs=runs)
    specs, notes = plan(cfg)
    assert [s.label for s in specs] == ["identity (uncompressed)", "down"]
    assert specs[1].kwargs == {"downlink": "hd-dither", "downlink_bits": 2}
    for label in ("ghost", "odd option", "bad downlink"):
        assert any(n.startswith(label + ":") for n in notes), notes
    only_runs = cfg.replace(methods=[])
    assert [s.label for s in plan(only_runs)[0]] == ["down"]


def test_plan_runs_fixed_rate_methods_at_their_rate():
    """No method name is special-cased: a method with min_bits == max_bits runs once, there."""
    from simulations import methods

    fixed = [m for m in methods.available() if methods.traits(m).fixed_bits is not None]
    assert "identity" in fixed and methods.traits("identity").uncompressed
    cfg = C.default_config().replace(methods=[*fixed, "hd-dither"], bits=[1, 2], method_bits={})
    pairs, _ = plan(cfg)
    pairs = [s.pair for s in pairs]
    for m in fixed:
        assert [b for n, b in pairs if n == m] == [int(methods.traits(m).fixed_bits)]
    assert [b for n, b in pairs if n == "hd-dither"] == [1, 2]
    assert not methods.traits("hd-dither").uncompressed


def test_cli_plan(capsys):
    from simulations.__main__ import main

    assert main(["--plan", "--methods", "identity,hd-dither,nope", "--bits", "1,2",
                 "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "hd-dither 1b" in out and "hd-dither 2b" in out and "nope" in out
    assert "[0, 1]" in out
    assert main(["--plan", "--methods", "identity", "--run",
                 "hd-dither:2:downlink=hd-dither,downlink-bits=2@both ways"]) == 0
    assert "identity (uncompressed), both ways" in capsys.readouterr().out


def test_grid_configs_plan():
    """The committed grids parse and plan (methods missing from fedhd.methods() are skipped
    with a note, not an error)."""
    from simulations.__main__ import build_config, parser

    for path in sorted((ROOT / "simulations" / "grids").glob("*.toml")):
        cfg = build_config(parser().parse_args(["--config", str(path)]))
        specs, _ = plan(cfg)
        assert specs and len(cfg.seeds) >= 2, path
        assert cfg.out == f"results/{path.stem}"


def test_cli_task_defaults_layering():
    """Choosing a task applies its sweep defaults; the user's flags still win."""
    from simulations.__main__ import build_config, parser
    from simulations.tasks.fmnist import FashionMNIST

    cfg = build_config(parser().parse_args(["--task", "fmnist", "--rounds", "2",
                                            "--data-dir", "/tmp/x", "--link", "broadband"]))
    assert cfg.clients == FashionMNIST.sweep_defaults["clients"] == 100
    assert cfg.rounds == 2 and cfg.task_options == {"data-dir": "/tmp/x"}
    assert (cfg.downlink_mbps, cfg.uplink_mbps, cfg.latency_ms) == (86.0, 46.0, 21.0)
    with pytest.raises(ValueError, match="unknown option"):
        build_config(parser().parse_args(["--task", "digits", "--task-option", "nope=1"]))
    with pytest.raises(ValueError, match=r"package\.module:Class"):
        build_config(parser().parse_args(["--task", "no-such-task"]))


# ---------------------------------------------------------------------------- sweep


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    """A tiny sweep run in-process over strategies.LocalGrid (same apps, no Ray)."""
    from benchmarks.localgrid import LocalGrid
    from simulations.client_app import app

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("results")
    cfg = C.default_config().replace(
        clients=4, fraction=0.5, rounds=2, local_epochs=1, task_options={"num-samples": 1000},
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
        assert res.rows[0]["uplink_bytes"] == res.rows[0]["downlink_bytes"] == 0
        assert res.num_params == 106_378 and res.uncompressed == (res.method == "identity")
        for row in res.rows[1:]:
            # the Grid's meter agrees with the strategy's own count, round by round
            assert row["uplink_bytes_round"] == row["strategy_uplink_bytes_round"]
            assert row["clients"] == row["accepted"] == cfg.clients_per_round
            assert row["dropped"] == 0
            # the global model goes down uncompressed: at least 4 bytes per parameter each
            assert row["downlink_bytes_round"] > 4 * res.num_params * cfg.clients_per_round
            assert row["client_compress_cpu_s"] > 0 and row["server_aggregate_cpu_s"] > 0
            assert row["sim_round_s"] > 0
        assert res.rows[-1]["uplink_bytes"] == sum(r["uplink_bytes_round"] for r in res.rows)
        assert res.rows[-1]["downlink_bytes"] == sum(r["downlink_bytes_round"] for r in res.rows)
        assert res.rows[-1]["total_bytes"] == (res.rows[-1]["uplink_bytes"]
                                               + res.rows[-1]["downlink_bytes"])
        assert res.rows[-1]["sim_time_s"] == pytest.approx(sum(r["sim_round_s"]
                                                               for r in res.rows))
    fp32 = next(r for r in results if r.method == "identity").rows[-1]["uplink_bytes"]
    two = next(r for r in results if r.bits == 2).rows[-1]["uplink_bytes"]
    assert fp32 / two > 14


def test_sweep_is_reproducible(local_sweep):
    from benchmarks.localgrid import LocalGrid
    from simulations.client_app import app
    from simulations.server_app import run_one

    cfg, _, results, _, _ = local_sweep
    grid = MeteredGrid(LocalGrid(app, num_nodes=cfg.clients, seed=9))  # other node ids
    grid.map_partitions(cfg.clients)
    again = run_one(grid, cfg, "identity", 32, 1)
    first = next(r for r in results if r.method == "identity" and r.seed == 1)
    assert [r["accuracy"] for r in again.rows] == [r["accuracy"] for r in first.rows]


def test_outputs(local_sweep):
    cfg, _, results, _summary, out = local_sweep
    assert {p.name for p in out.iterdir()} >= set(report.FILES.values())
    with open(out / "rounds.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(r.rows) for r in results)
    assert {"round", "method", "bits", "seed", "accuracy", "loss", "uplink_bytes",
            "downlink_bytes", "uplink_bytes_round", "downlink_bytes_round", "total_bytes",
            "client_compress_cpu_s", "server_aggregate_cpu_s", "sim_time_s"} <= set(rows[0])
    data = json.loads((out / "summary.json").read_text())
    assert set(data) >= {"rows", "config"}
    keys = {"method", "bits", "seeds", "final_accuracy_mean", "final_accuracy_std",
            "uplink_bytes_total", "downlink_bytes_total", "total_bytes_total",
            "rounds_to_target", "total_bytes_to_target", "sim_time_s_to_target",
            "client_compress_cpu_s_per_round", "server_aggregate_cpu_s_per_round"}
    assert all(keys <= set(row) for row in data["rows"])
    assert [(r["method"], r["bits"]) for r in data["rows"]] == [
        ("identity", 32), ("hd-dither", 1), ("hd-dither", 2)]
    assert data["rows"][0]["seeds"] == [0, 1]
    assert data["config"]["clients"] == cfg.clients
    assert data["config"]["reference"] == "identity (uncompressed)"
    assert data["config"]["model-parameters"] == 106_378
    base = data["rows"][0]
    assert base["uncompressed"] and base["delta_vs_fp32_points"] == 0
    for row in data["rows"]:  # the downlink (the global model) is the same for every method
        assert row["downlink_bytes_total"] == pytest.approx(base["downlink_bytes_total"],
                                                            rel=1e-3)
    md = (out / "summary.md").read_text()
    assert "| hd-dither 2b |" in md and "downlink MB" in md and "simulated s to target" in md
    assert "MB to within" in md


def test_report_rebuilds_from_the_files(local_sweep, tmp_path):
    import shutil

    _, _, _results, summary, out = local_sweep
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    again = report.rebuild(copy)
    assert [r["label"] for r in again["rows"]] == [r["label"] for r in summary["rows"]]
    for a, b in zip(again["rows"], summary["rows"]):
        assert a["final_accuracy_mean"] == pytest.approx(b["final_accuracy_mean"], abs=1e-6)
        assert a["total_bytes_total"] == pytest.approx(b["total_bytes_total"])
        assert a["total_bytes_to_within"] == pytest.approx(b["total_bytes_to_within"])
    assert (copy / "summary.md").read_text() == (out / "summary.md").read_text()
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    text = report.console(summary, str(out))
    assert len(text.splitlines()) < 40 and "hd-dither" in text and "down MB" in text
    assert max(len(line) for line in text.splitlines() if not line.startswith("outputs:")) <= 100


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
    assert all(r["uplink_bytes_total"] > 0 and r["downlink_bytes_total"] > 0
               for r in data["rows"])
    assert "down MB" in proc.stdout
    assert (tmp_path / "accuracy.png").exists() and (tmp_path / "rounds.csv").exists()
    assert elapsed < 120, f"--quick took {elapsed:.0f} s"


# ---------------------------------------------------------------------------- architecture


def _imports_of_simulations() -> dict[str, set[str]]:
    """simulations module -> the simulations modules it imports (top level or in functions)."""
    import ast

    pkg = ROOT / "simulations"
    graph: dict[str, set[str]] = {}
    for path in pkg.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        base = name if rel.name == "__init__" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                    mod = f"{anchor}.{node.module}" if node.module else anchor
                    names = [f"{mod}.{a.name}" for a in node.names] if not node.module else []
                    deps.update([mod, *names])
                elif node.module and node.module.startswith("simulations"):
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("simulations"))
        graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_simulations_has_no_import_cycles_and_report_reads_results_only():
    graph = _imports_of_simulations()
    assert graph["simulations.report"] <= {"simulations.results", "simulations.config"}
    assert "simulations.server_app" not in graph["simulations.metering"]
    assert "simulations.server_app" not in graph["simulations.results"]

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, "import cycle: " + " -> ".join((*path, node))
        for dep in graph[node]:
            if dep != "simulations":  # the package's own __init__ imports nothing
                visit(dep, (*path, node))

    for module in graph:
        visit(module, ())


def test_resume_keeps_finished_runs_and_redoes_on_request(local_sweep):
    from simulations.__main__ import _resume

    cfg, _, results, _, _ = local_sweep
    specs, _ = plan(cfg)
    more = cfg.replace(runs=C.parse_runs("hd-dither:2:downlink=hd-dither@new"))
    kept, todo, meta = _resume(more, plan(more)[0])
    assert len(kept) == len(results) and [s.label for s in todo] == ["new"]
    assert meta["sweep_seconds"] == 1.0
    kept, todo, _ = _resume(cfg, specs, frozenset({"hd-dither 2b"}))
    assert [s.label for s in todo] == ["hd-dither 2b"]
    assert {r.label for r in kept} == {"identity (uncompressed)", "hd-dither 1b"}
    with pytest.raises(ValueError, match="other settings"):
        _resume(cfg.replace(rounds=cfg.rounds + 1), specs)
