"""End-to-end: the test app on the Deployment Engine over loopback.

Starts a real ``flower-superlink`` and two ``flower-supernode`` processes (insecure, free
ports, temporary FLWR_HOME), runs the app with ``flwr run`` using CompressedFedAvg, checks
the ServerApp's summary, and stops every process it started (SuperLink, SuperNodes,
flwr-serverapp, flwr-clientapp) in teardown, even on failure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "flower_app"))
import harness

pytest.importorskip("torch")

ROUNDS = 2


@pytest.mark.slow  # ~2 min on 2 shared cores (a ClientApp process per message)
@pytest.mark.timeout(300)
def test_compressed_fedavg_on_the_deployment_engine(tmp_path):
    result_path = tmp_path / "result.json"
    with harness.flower_processes(tmp_path) as (procs, home, env):
        port = harness.free_port()
        harness.write_connection(home, "deploy", port)
        link = procs.start("superlink", [str(harness.BIN / "flower-superlink"), "--insecure",
                                         "--host", "127.0.0.1", "--port", str(port)], env)
        harness.wait_http(port, link)
        for i in range(2):
            procs.start(f"supernode-{i}", [
                str(harness.BIN / "flower-supernode"), "--insecure",
                "--superlink", f"127.0.0.1:{port}",
                "--host", "127.0.0.1", "--port", str(harness.free_port()),
                "--node-config", f"partition-id={i} num-partitions=2",
            ], env)
        run = harness.flwr_run("deploy", {
            "num-server-rounds": ROUNDS, "strategy": "compressed", "method": "hd-dither",
            "bits": 2, "min-nodes": 2, "fraction-evaluate": 0.5,
            "result-path": str(result_path),
        }, env, tmp_path, timeout=170)
        if run.returncode != 0 or not result_path.exists():
            pytest.fail(f"flwr run failed ({run.returncode}):\n"
                        + (tmp_path / "flwr-run.log").read_text()[-4000:] + procs.logs())
    summary = json.loads(result_path.read_text())
    assert summary["num_nodes"] == 2 and summary["finite"]
    for r in range(1, ROUNDS + 1):
        m = summary["train_metrics"][str(r)]
        assert m["fedhd.accepted"] == 2 and m["fedhd.compressed"] == 2
        assert m["fedhd.dropped"] == 0 and m["fedhd.error_replies"] == 0
        assert m["fedhd.compression_ratio"] >= 14
    assert summary["evaluate_metrics"][str(ROUNDS)]["eval_acc"] > 0.5
    assert summary["server_metrics"][str(ROUNDS)]["accuracy"] > 0.8, summary["server_metrics"]
