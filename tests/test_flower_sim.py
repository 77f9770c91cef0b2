"""End-to-end: the test app on the Simulation Engine (Ray), 4 nodes, CompressedFedAvg with
the compressed downlink (hd-dither both ways).

Starts ``flower-superlink --simulation`` on a free loopback port with a temporary
FLWR_HOME, submits the app with ``flwr run``, checks the ServerApp's summary, and stops
every process it started (SuperLink, flwr-simulation, Ray) in teardown, even on failure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "flower_app"))
import harness

pytest.importorskip("ray")
pytest.importorskip("torch")

NUM_NODES = 4
ROUNDS = 3


@pytest.mark.slow  # ~70 s on 2 shared cores (Ray start-up dominates)
@pytest.mark.timeout(300)
def test_compressed_fedavg_on_the_simulation_engine(tmp_path):
    result_path = tmp_path / "result.json"
    with harness.flower_processes(tmp_path) as (procs, home, env):
        port = harness.free_port()
        harness.write_connection(
            home, "sim", port,
            f"options.num-supernodes = {NUM_NODES}\n"
            "options.backend.client-resources.num-cpus = 1\n"
            "options.backend.init-args.num-cpus = 2\n")
        link = procs.start("superlink", [str(harness.BIN / "flower-superlink"), "--insecure",
                                         "--simulation", "--host", "127.0.0.1",
                                         "--port", str(port)], env)
        harness.wait_http(port, link)
        run = harness.flwr_run("sim", {
            "num-server-rounds": ROUNDS, "strategy": "compressed", "method": "hd-dither",
            "bits": 2, "min-nodes": NUM_NODES, "result-path": str(result_path),
            "downlink": "hd-dither", "downlink-bits": 2,
        }, env, tmp_path, timeout=170)
        if run.returncode != 0 or not result_path.exists():
            pytest.fail(f"flwr run failed ({run.returncode}):\n"
                        + (tmp_path / "flwr-run.log").read_text()[-4000:] + procs.logs())
    summary = json.loads(result_path.read_text())
    assert summary["num_nodes"] == NUM_NODES and summary["finite"]
    for r in range(1, ROUNDS + 1):
        m = summary["train_metrics"][str(r)]
        assert m["fedhd.accepted"] == NUM_NODES and m["fedhd.compressed"] == NUM_NODES
        assert m["fedhd.dropped"] == 0 and m["fedhd.error_replies"] == 0
        assert m["fedhd.compression_ratio"] >= 14
        # the downlink: keyframes in round 1 only; later, deltas to the nodes that did not
        # already get this version with the previous round's evaluate message (half do)
        assert m["fedhd.down.keyframes"] == (NUM_NODES if r == 1 else 0)
        if r > 1:
            assert NUM_NODES // 2 <= m["fedhd.down.delta_messages"] <= NUM_NODES
            assert 0 < m["fedhd.down.blob_bytes"] < m["fedhd.uplink_bytes"]
    assert summary["evaluate_metrics"]["1"]["eval_acc"] > 0  # fraction_evaluate=0.5 ran
    accuracy = summary["server_metrics"][str(ROUNDS)]["accuracy"]
    assert accuracy > 0.85, summary["server_metrics"]
