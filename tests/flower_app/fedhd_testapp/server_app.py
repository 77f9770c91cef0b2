"""ServerApp: FedAvg or CompressedFedAvg, chosen by the run config; writes a JSON summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from benchmarks.digits_task import centralized_evaluate, init_arrays
from strategies import CompressedFedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    common = dict(
        fraction_evaluate=float(cfg["fraction-evaluate"]),
        min_train_nodes=int(cfg["min-nodes"]),
        min_evaluate_nodes=1,
        min_available_nodes=int(cfg["min-nodes"]),
    )
    if cfg["strategy"] == "fedavg":
        strategy: FedAvg = FedAvg(**common)
    else:
        down = str(cfg.get("downlink", ""))
        options = dict(downlink=down, downlink_bits=float(cfg["downlink-bits"])) if down else {}
        strategy = CompressedFedAvg(method=str(cfg["method"]), bits=float(cfg["bits"]),
                                    seed=int(cfg["seed"]), **common, **options)
    result = strategy.start(grid, init_arrays(), num_rounds=int(cfg["num-server-rounds"]),
                            evaluate_fn=centralized_evaluate,
                            timeout=float(cfg.get("round-timeout", 3600)))
    path = str(cfg["result-path"])
    if path:
        arrays = result.arrays.to_numpy_ndarrays()
        summary = {
            "strategy": cfg["strategy"],
            "num_nodes": len(list(grid.get_node_ids())),
            "train_metrics": {str(r): dict(m) for r, m in result.train_metrics_clientapp.items()},
            "evaluate_metrics": {
                str(r): dict(m) for r, m in result.evaluate_metrics_clientapp.items()},
            "server_metrics": {
                str(r): dict(m) for r, m in result.evaluate_metrics_serverapp.items()},
            "num_params": int(sum(a.size for a in arrays if a.dtype.kind == "f")),
            "finite": bool(all(np.isfinite(a).all() for a in arrays if a.dtype.kind == "f")),
        }
        Path(path).write_text(json.dumps(summary, indent=1))
