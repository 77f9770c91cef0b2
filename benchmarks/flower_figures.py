"""Uplink bytes and accuracy of CompressedFedAvg against plain FedAvg on a small task.

    python -m benchmarks.flower_figures            # 8 nodes, 5 rounds, hd-dither at 2 bits
    python -m benchmarks.flower_figures --json results/strategies_figures.json

The task is ``benchmarks.digits_task``: an 85,002-parameter PyTorch MLP on scikit-learn's
digits, IID over the nodes, one local epoch per round, accuracy of the global model on a
held-out 20 %. Every run goes through ``LocalGrid`` (in-process, messages deflated and
inflated as the transport does; no Ray). Wire bytes are measured on every train reply as
its node sends it (``strategies.message_wire_bytes``), so FedAvg's figure is measured too,
not inferred.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.serverapp.strategy import FedAvg, Strategy

from strategies import CompressedFedAvg, message_wire_bytes
from strategies import constants as C
from strategies.mod_support import is_train

from .digits_task import centralized_evaluate, init_arrays, make_client_app
from .localgrid import LocalGrid


def run_one(strategy: Strategy, num_nodes: int, rounds: int, seed: int = 0) -> dict:
    """One federated run; returns accuracy per round, train-reply wire bytes, arrays."""
    sizes: list[int] = []

    def measure(reply: Message) -> Message:
        if is_train(reply) and reply.has_content():
            sizes.append(message_wire_bytes(reply))
        return reply

    grid = LocalGrid(make_client_app(compress=True), num_nodes, seed=seed, reply_hook=measure)
    t = time.perf_counter()
    result = strategy.start(grid, init_arrays(seed), num_rounds=rounds,
                            evaluate_fn=centralized_evaluate)
    return {
        "seconds": time.perf_counter() - t,
        "accuracy": [float(result.evaluate_metrics_serverapp[r]["accuracy"])  # type: ignore[arg-type]
                     for r in range(rounds + 1)],
        "uplink_bytes_per_reply": float(np.mean(sizes)),
        "train_metrics": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
        "arrays": {k: a.numpy() for k, a in result.arrays.items()},
    }


def run_figures(num_nodes: int = 8, rounds: int = 5, method: str = C.DEFAULT_METHOD,
                bits: float = 2, seed: int = 0) -> dict:
    """FedAvg, CompressedFedAvg(method, bits) and CompressedFedAvg("identity")."""
    from flwr.common.logger import FLOWER_LOGGER

    FLOWER_LOGGER.setLevel("WARNING")
    common: dict[str, Any] = dict(fraction_evaluate=0.0, min_train_nodes=num_nodes,
                                  min_available_nodes=num_nodes)
    runs = {
        "fedavg": run_one(FedAvg(**common), num_nodes, rounds, seed),
        "compressed": run_one(CompressedFedAvg(method, bits, seed, **common),
                              num_nodes, rounds, seed),
        "identity": run_one(CompressedFedAvg("identity", None, seed, **common),
                            num_nodes, rounds, seed),
    }
    ref = runs["fedavg"]
    identity_diff = max(
        float(np.max(np.abs(runs["identity"]["arrays"][k].astype(np.float64) - v)))
        for k, v in ref["arrays"].items())
    n_params = sum(v.size for v in ref["arrays"].values() if v.dtype.kind == "f")
    last = runs["compressed"]["train_metrics"][rounds]
    return {
        "num_nodes": num_nodes, "rounds": rounds, "method": method, "bits": bits,
        "num_params": int(n_params),
        "fedavg_uplink_bytes": ref["uplink_bytes_per_reply"],
        "compressed_uplink_bytes": runs["compressed"]["uplink_bytes_per_reply"],
        "wire_ratio": ref["uplink_bytes_per_reply"] / runs["compressed"]["uplink_bytes_per_reply"],
        "metric_compression_ratio": float(last[C.METRIC_COMPRESSION_RATIO]),
        "fedavg_accuracy": ref["accuracy"],
        "compressed_accuracy": runs["compressed"]["accuracy"],
        "identity_accuracy": runs["identity"]["accuracy"],
        "accuracy_gap_points": 100 * (ref["accuracy"][-1] - runs["compressed"]["accuracy"][-1]),
        "identity_max_abs_diff": identity_diff,
        "seconds": {k: r["seconds"] for k, r in runs.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--method", default=C.DEFAULT_METHOD)
    parser.add_argument("--bits", type=float, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    r = run_figures(args.nodes, args.rounds, args.method, args.bits, args.seed)
    print(f"{r['num_params']:,}-parameter MLP on digits, {r['num_nodes']} nodes, "
          f"{r['rounds']} rounds, {r['method']} at {r['bits']:g} bits")
    print(f"  uplink wire bytes per train reply: FedAvg {r['fedavg_uplink_bytes']:,.0f}, "
          f"compressed {r['compressed_uplink_bytes']:,.0f}  ->  {r['wire_ratio']:.2f}x fewer")
    print(f"  final accuracy: FedAvg {r['fedavg_accuracy'][-1]:.4f}, compressed "
          f"{r['compressed_accuracy'][-1]:.4f} (gap {r['accuracy_gap_points']:+.2f} points), "
          f"identity {r['identity_accuracy'][-1]:.4f}")
    print(f"  identity vs FedAvg, max |difference| of the final arrays: "
          f"{r['identity_max_abs_diff']:.2e}")
    print("  accuracy per round (FedAvg / compressed):",
          " ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(r["fedavg_accuracy"],
                                                       r["compressed_accuracy"], strict=True)))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=1) + "\n")


if __name__ == "__main__":
    main()
