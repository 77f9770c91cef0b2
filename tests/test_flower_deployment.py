"""End-to-end: the test app on the Deployment Engine over loopback.

Starts a real ``flower-superlink`` and two ``flower-supernode`` processes (insecure, free
ports, temporary FLWR_HOME), runs the app with ``flwr run`` using CompressedFedAvg, checks
the ServerApp's summary, and stops every process it started (SuperLink, SuperNodes,
flwr-serverapp, flwr-clientapp) in teardown, even on failure.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "flower_app"))
import harness

pytest.importorskip("torch")

ROUNDS = 2


def _start_node(procs, name, port, partition, env):
    return procs.start(name, [
        str(harness.BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
        "--host", "127.0.0.1", "--port", str(harness.free_port()),
        "--node-config", f"partition-id={partition} num-partitions=2",
    ], env)


def _start_federation(procs, home, env) -> int:
    """A SuperLink on a free loopback port and two SuperNodes; returns the port."""
    port = harness.free_port()
    harness.write_connection(home, "deploy", port)
    link = procs.start("superlink", [str(harness.BIN / "flower-superlink"), "--insecure",
                                     "--host", "127.0.0.1", "--port", str(port)], env)
    harness.wait_http(port, link)
    for i in range(2):
        _start_node(procs, f"supernode-{i}", port, i, env)
    return port


@pytest.mark.slow  # ~2 min on 2 shared cores (a ClientApp process per message)
@pytest.mark.timeout(300)
def test_compressed_fedavg_on_the_deployment_engine(tmp_path):
    result_path = tmp_path / "result.json"
    with harness.flower_processes(tmp_path) as (procs, home, env):
        _start_federation(procs, home, env)
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


@pytest.mark.slow  # ~4 min on 2 shared cores
@pytest.mark.timeout(600)
def test_compressed_downlink_survives_a_supernode_restart(tmp_path):
    """Both directions compressed; SuperNode 1 is stopped during round 3 and started again
    with an empty state: it comes back as a new node, gets a keyframe, and training goes
    on to the end with every node on the server's public model (the mod checks its hash)."""
    rounds = 6
    result_path = tmp_path / "result.json"
    with harness.flower_processes(tmp_path) as (procs, home, env):
        port = _start_federation(procs, home, env)
        node_1 = next(p for p in procs.procs if p.args[-1].startswith("partition-id=1"))
        overrides = " ".join(f"{k}={json.dumps(v)}" for k, v in {
            "num-server-rounds": rounds, "strategy": "compressed", "method": "hd-dither",
            "bits": 2, "min-nodes": 1, "fraction-evaluate": 0.0, "downlink": "hd-dither",
            "downlink-bits": 2, "round-timeout": 45, "result-path": str(result_path)}.items())
        run = procs.start("flwr-run", [str(harness.BIN / "flwr"), "run", str(harness.APP_DIR),
                                       "deploy", "--stream", "--run-config", overrides], env)
        log_path = tmp_path / "flwr-run.log"
        deadline = time.monotonic() + 400
        while b"[ROUND 3/" not in log_path.read_bytes():
            assert run.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        procs.stop(node_1)  # SuperNode 1 leaves during round 3 ...
        _start_node(procs, "supernode-1-restarted", port, 1, env)  # ... and comes back empty
        while run.poll() is None:
            assert time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(1)
        if run.returncode != 0 or not result_path.exists():
            pytest.fail(f"flwr run failed ({run.returncode}):\n"
                        + log_path.read_text()[-4000:] + procs.logs())
    summary = json.loads(result_path.read_text())
    assert summary["finite"]
    m = summary["train_metrics"]
    assert sorted(m, key=int) == [str(r) for r in range(1, rounds + 1)]
    keyframes = sum(m[str(r)]["fedhd.down.keyframes"] for r in range(1, rounds + 1))
    assert keyframes >= 3  # two at the start, one (at least) for the restarted node
    assert m[str(rounds)]["fedhd.accepted"] >= 1 and m[str(rounds)]["fedhd.dropped"] == 0
    # the last round's messages went to up-to-date nodes: deltas, no keyframe
    assert m[str(rounds)]["fedhd.down.keyframes"] == 0
    assert summary["server_metrics"][str(rounds)]["accuracy"] > 0.8, summary["server_metrics"]
