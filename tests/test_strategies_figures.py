"""The issue's figures as assertions: an 85k-parameter PyTorch model, 8 nodes, 5 rounds,
in-process (LocalGrid, no Ray): wire bytes, accuracy against FedAvg, identity == FedAvg."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")


@pytest.mark.slow
def test_figures_bits2_against_fedavg():
    from benchmarks.flower_figures import run_figures

    r = run_figures(num_nodes=8, rounds=5, bits=2)
    assert 80_000 <= r["num_params"] <= 90_000
    assert r["wire_ratio"] >= 14, r
    assert r["metric_compression_ratio"] == pytest.approx(r["wire_ratio"], rel=0.01)
    assert r["fedavg_accuracy"][-1] > 0.85, r["fedavg_accuracy"]
    assert abs(r["accuracy_gap_points"]) <= 3, r
    assert r["identity_max_abs_diff"] <= 1e-6
