"""Server-side aggregation benchmark: decode-after-sum vs plain FedAvg vs decoding each client.

    python -m benchmarks.aggregation --method hd-dither   # 100 clients, d = 10**6, 2 bits
    python -m benchmarks.aggregation --clients 20 --d 100000 --json results/strategies_bench.json
    python -m benchmarks.aggregation --threads 1          # only with fedhd's kernels on one thread

All timings come from the same run, on the same machine, best of ``--repeat``, once per
thread setting of fedhd's kernels (``fedhd.kernels.set_threads``; the default, then 1):

- ``fedavg``: ``flwr.serverapp.strategy.FedAvg.aggregate_train`` on the uncompressed
  replies (the same arrays, as numpy Arrays);
- ``decode_after_sum``: ``CompressedFedAvg.aggregate_train`` on the compressed replies
  (header checks, one rotated-domain accumulation per client, ONE inverse Hadamard
  transform per chunk), without wire accounting;
- ``decode_each``: the naive server: ``fedhd.decode`` of every blob (one inverse
  transform per client) and a weighted sum, without any validation;
- ``wire_accounting``: the extra time ``wire_accounting=True`` adds (hashing every reply).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

import fedhd
from fedhd.bench.speed import best_time
from strategies import CompressedFedAvg, compression_mod
from strategies import constants as C

from .localgrid import LocalGrid


def _shapes(d: int) -> dict[str, tuple[int, ...]]:
    """Three arrays (two matrices and a bias) totalling d coordinates."""
    cols = 1000 if d >= 10_000 else 10
    bias = cols
    rows_total = (d - bias) // cols
    rest = d - bias - rows_total * cols
    a = int(rows_total * 0.8)
    shapes: dict[str, tuple[int, ...]] = {"w1": (a, cols), "w2": (rows_total - a, cols),
                                          "b": (bias + rest,)}
    return {k: s for k, s in shapes.items() if int(np.prod(s)) > 0}


def build_replies(clients: int, d: int, method: str, bits: float | None, seed: int = 0
                  ) -> tuple[CompressedFedAvg, FedAvg, list[Message], list[Message], int]:
    """A configured round: (compressed strategy, FedAvg, compressed replies, plain replies,
    round). The compressed replies come out of ``compression_mod``."""
    rng = np.random.default_rng(seed)
    shapes = _shapes(d)
    global_arrays = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    grid = LocalGrid(ClientApp(), clients, seed=seed)
    strategy = CompressedFedAvg(method=method, bits=bits, seed=seed, wire_accounting=False,
                                min_train_nodes=clients, min_available_nodes=clients)
    fedavg = FedAvg(min_train_nodes=clients, min_available_nodes=clients)
    server_round = 1
    record = ArrayRecord({k: Array(v) for k, v in global_arrays.items()})
    messages = list(strategy.configure_train(server_round, record, ConfigRecord(), grid))
    compressed, plain = [], []
    for i, msg in enumerate(messages):
        msg.metadata.__dict__["_message_id"] = f"{i:064x}"
        local = {k: (v + 0.01 * rng.standard_normal(v.shape)).astype(np.float32)
                 for k, v in global_arrays.items()}

        def app(m: Message, ctx: Context, local=local, i=i) -> Message:
            content = RecordDict({
                "arrays": ArrayRecord({k: Array(v) for k, v in local.items()}),
                "metrics": MetricRecord({"num-examples": 100 + i, "train_loss": 1.0}),
            })
            return Message(content, reply_to=m)

        ctx = Context(1, msg.metadata.dst_node_id, {}, RecordDict(), {})
        plain.append(app(msg, ctx))
        compressed.append(compression_mod(msg, ctx, app))
    return strategy, fedavg, compressed, plain, server_round


def decode_each(replies: list[Message], d: int) -> np.ndarray:
    """The naive server: decode every blob separately, then a weighted sum."""
    total = np.zeros(d, np.float64)
    buf = np.empty(d, np.float32)
    weight_sum = 0.0
    for msg in replies:
        w = float(msg.content.metric_records["metrics"]["num-examples"])  # type: ignore[arg-type]
        blob = msg.content.array_records["arrays"][C.BLOB_KEY].data
        total += w * fedhd.decode(blob, out=buf)
        weight_sum += w
    return (total / weight_sum).astype(np.float32)


def run(clients: int = 100, d: int = 10**6, method: str = C.DEFAULT_METHOD,
        bits: float | None = 2, repeat: int = 3,
        threads: list[int | None] | None = None) -> dict[str, Any]:
    """Time the three aggregations once per thread setting of fedhd's kernels (None: the
    default), on the same replies; returns the figures (seconds and ratios) per setting."""
    from flwr.common.logger import FLOWER_LOGGER

    from fedhd import kernels

    FLOWER_LOGGER.setLevel("WARNING")
    t0 = time.perf_counter()
    strategy, fedavg, compressed, plain, rnd = build_replies(clients, d, method, bits)
    setup = time.perf_counter() - t0
    default_threads = kernels.get_threads()
    # warm up the compiled kernels once before timing
    strategy.aggregate_train(rnd, compressed[:2])
    decode_each(compressed[:2], d)

    out: dict[str, Any] = {
        "clients": clients, "d": d, "method": method, "bits": float(strategy.bits),
        "cpus": os.cpu_count() or 0, "setup_s": setup,
        "blob_bytes": len(compressed[0].content.array_records["arrays"][C.BLOB_KEY].data),
        "runs": [],
    }
    for n in threads or [None]:
        kernels.set_threads(default_threads if n is None else n)
        t_fedavg = best_time(lambda: fedavg.aggregate_train(rnd, plain), repeat)
        t_das = best_time(lambda: strategy.aggregate_train(rnd, compressed), repeat)
        t_each = best_time(lambda: decode_each(compressed, d), repeat)
        strategy.compressor.wire_accounting = True
        t_wire = best_time(lambda: strategy.aggregate_train(rnd, compressed), 1) - t_das
        strategy.compressor.wire_accounting = False
        out["runs"].append({
            "threads": kernels.get_threads(),
            "fedavg_s": t_fedavg, "decode_after_sum_s": t_das, "decode_each_s": t_each,
            "wire_accounting_s": max(t_wire, 0.0),
            "decode_after_sum_over_fedavg": t_das / t_fedavg,
            "speedup_over_decode_each": t_each / t_das,
        })
    kernels.set_threads(default_threads)

    # the two compressed aggregations agree
    arrays, _ = strategy.aggregate_train(rnd, compressed)
    assert arrays is not None
    st = strategy.compressor._round
    assert st is not None
    das_mean = np.concatenate([arrays[k].numpy().ravel() for k in st.float_keys]) - st.vector
    out["max_abs_diff_das_vs_each"] = float(np.max(np.abs(das_mean - decode_each(compressed, d))))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--d", type=int, default=10**6)
    parser.add_argument("--method", default=C.DEFAULT_METHOD)
    parser.add_argument("--bits", type=float, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", default="default,1",
                        help="comma-separated thread counts for fedhd's kernels, each timed "
                             "in turn ('default' = FEDHD_THREADS or the cores; default,1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    threads: list[int | None] = [None if t == "default" else int(t)
                                 for t in args.threads.split(",")]
    r = run(args.clients, args.d, args.method, args.bits, args.repeat, threads)
    print(f"server aggregation, {r['clients']} clients, d = {r['d']:,}, {r['method']} at "
          f"{r['bits']:g} bits ({r['blob_bytes']:,}-byte blobs), {r['cpus']} CPUs, "
          f"best of {args.repeat}")
    for run_ in r["runs"]:
        print(f" fedhd kernels on {run_['threads']} thread(s):")
        print(f"  plain FedAvg aggregate_train        {run_['fedavg_s'] * 1e3:9.1f} ms")
        print(f"  CompressedFedAvg (decode-after-sum) {run_['decode_after_sum_s'] * 1e3:9.1f} ms"
              f"   = {run_['decode_after_sum_over_fedavg']:.2f} x FedAvg")
        print(f"  decode each client, then sum        {run_['decode_each_s'] * 1e3:9.1f} ms"
              f"   decode-after-sum is {run_['speedup_over_decode_each']:.2f} x faster")
        print(f"  + wire accounting                   {run_['wire_accounting_s'] * 1e3:9.1f} ms")
    print(f" max |decode-after-sum - decode-each| = {r['max_abs_diff_das_vs_each']:.2e}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=1) + "\n")


if __name__ == "__main__":
    main()
