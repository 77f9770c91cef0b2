"""Outputs of a sweep: per-round CSV, summary JSON, markdown table, PNG, console summary."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .config import SweepConfig
from .server_app import RunResult

#: Per-round CSV: ``uplink_bytes`` / ``downlink_bytes`` are cumulative wire bytes of the run
#: (train replies / train messages, metered at the Grid); ``uplink_bytes_round`` is the
#: strategy's own count for the round; ``fp32_fedavg_uplink_bytes`` (cumulative) is what the
#: same replies would cost as plain float32 FedAvg arrays.
CSV_FIELDS = ["round", "method", "bits", "seed", "accuracy", "loss", "uplink_bytes",
              "downlink_bytes", "uplink_bytes_round", "fp32_fedavg_uplink_bytes", "train_loss",
              "accepted", "dropped"]

FILES = {"csv": "rounds.csv", "json": "summary.json", "md": "summary.md", "png": "accuracy.png"}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _label(method: str, bits: int) -> str:
    return "fp32 (identity)" if method == "identity" else f"{method} {bits}b"


def summarize(results: list[RunResult], cfg: SweepConfig) -> dict[str, Any]:
    """``{"rows": [...], "config": {...}}``: one row per (method, bits), over seeds."""
    groups: dict[tuple[str, int], list[RunResult]] = defaultdict(list)
    for res in results:
        groups[(res.method, res.bits)].append(res)

    def final(res: RunResult) -> dict[str, Any]:
        return res.rows[-1]

    ref_key = ("identity", 32) if ("identity", 32) in groups else None
    if ref_key is None and groups:  # no fp32 run: the best final accuracy is the reference
        ref_key = max(groups, key=lambda k: _mean([final(r)["accuracy"] for r in groups[k]]))
    ref_acc = _mean([final(r)["accuracy"] for r in groups[ref_key]]) if ref_key else math.nan
    ref_up = _mean([final(r)["uplink_bytes"] for r in groups[ref_key]]) if ref_key else math.nan
    target = cfg.target_fraction * ref_acc

    rows: list[dict[str, Any]] = []
    for (method, bits), runs in groups.items():
        accs = [final(r)["accuracy"] for r in runs]
        ups = [final(r)["uplink_bytes"] for r in runs]
        downs = [final(r)["downlink_bytes"] for r in runs]
        reach = []
        reach_bytes = []
        for r in runs:
            hit = next((row for row in r.rows if row["round"] > 0 and row["accuracy"] >= target),
                       None)
            if hit is not None:
                reach.append(hit["round"])
                reach_bytes.append(hit["uplink_bytes"])
        plain = [final(r).get("fp32_fedavg_uplink_bytes") for r in runs]
        rows.append({
            "method": method,
            "bits": bits,
            "label": _label(method, bits),
            "seeds": [r.seed for r in runs],
            "final_accuracy_mean": _mean(accs),
            "final_accuracy_std": _std(accs),
            "final_loss_mean": _mean([final(r)["loss"] for r in runs]),
            "delta_vs_fp32_points": 100 * (_mean(accs) - ref_acc),
            "uplink_bytes_total": _mean(ups),
            "downlink_bytes_total": _mean(downs),
            "uplink_reduction_vs_fp32": ref_up / _mean(ups) if ups else math.nan,
            "uplink_bits_per_coordinate": 8 * _mean(ups) / (
                cfg.rounds * cfg.clients_per_round * _num_params(cfg)),
            "rounds_to_target": _mean(reach) if len(reach) == len(runs) else None,
            "target_reached_seeds": len(reach),
            "uplink_bytes_to_target": _mean(reach_bytes) if len(reach) == len(runs) else None,
            "fp32_fedavg_uplink_bytes_total": (
                _mean([float(p) for p in plain if p is not None])
                if all(p is not None for p in plain) else None),
            "dropped_replies": sum(int(row.get("dropped") or 0) for r in runs for row in r.rows),
            "seconds_per_run": _mean([r.seconds for r in runs]),
        })
    order = {m: i for i, m in enumerate(cfg.methods)}
    rows.sort(key=lambda r: (order.get(r["method"], 99), r["bits"]))
    return {
        "rows": rows,
        "config": {
            **cfg.to_dict(),
            "clients-per-round": cfg.clients_per_round,
            "model-parameters": _num_params(cfg),
            "target-accuracy": target,
            "reference": _label(*ref_key) if ref_key else None,
        },
    }


def _num_params(cfg: SweepConfig) -> int:
    from .task import make_model, num_params

    return num_params(make_model(cfg.task))


def write_csv(results: list[RunResult], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for res in results:
            for row in res.rows:
                writer.writerow({k: _fmt(row.get(k)) for k in CSV_FIELDS})


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def _mb(n: float) -> str:
    return f"{n / 1e6:.3f}"


def markdown(summary: dict[str, Any]) -> str:
    cfg = summary["config"]
    lines = [
        f"Task `{cfg['task']}`: {cfg['clients']} clients (Dirichlet α = {cfg['alpha']}), "
        f"{cfg['clients-per-round']} per round, {cfg['rounds']} rounds, "
        f"{cfg['model-parameters']:,} parameters, seeds {cfg['seeds']}. "
        f"Accuracy on the held-out test set after the last round, mean ± std over seeds; "
        f"uplink = bytes of all train replies as Flower transports them, per run.",
        "",
        "| method | bits | final accuracy (%) | Δ vs fp32 (points) | uplink MB | "
        "fewer bytes than fp32 | wire bits/coord | rounds to target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["rows"]:
        rtt = (f"{r['rounds_to_target']:.1f}" if r["rounds_to_target"] is not None
               else f"({r['target_reached_seeds']}/{len(r['seeds'])} seeds)")
        lines.append(
            f"| {r['method']} | {r['bits']} | {100 * r['final_accuracy_mean']:.2f} ± "
            f"{100 * r['final_accuracy_std']:.2f} | {r['delta_vs_fp32_points']:+.2f} | "
            f"{_mb(r['uplink_bytes_total'])} | {r['uplink_reduction_vs_fp32']:.1f}x | "
            f"{r['uplink_bits_per_coordinate']:.2f} | {rtt} |")
    lines += ["", f"Rounds to target: first round at {100 * cfg['target-accuracy']:.1f}% "
              f"({cfg['target-fraction']} x the final accuracy of {cfg['reference']}), mean "
              f"over seeds; (k/n seeds) when not every seed got there. Wire bits/coord = "
              f"8 x uplink bytes / (replies x parameters), envelopes included."]
    return "\n".join(lines) + "\n"


def plot(results: list[RunResult], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, int], list[RunResult]] = defaultdict(list)
    for res in results:
        groups[(res.method, res.bits)].append(res)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    cmap = plt.get_cmap("tab10")
    methods = list(dict.fromkeys(r["method"] for r in summary["rows"]))
    styles = {1: ":", 2: "-", 3: "-.", 4: "--"}
    for r in summary["rows"]:
        runs = groups[(r["method"], r["bits"])]
        n = min(len(x.rows) for x in runs)
        acc = np.mean([[row["accuracy"] for row in x.rows[:n]] for x in runs], axis=0) * 100
        up = np.mean([[row["uplink_bytes"] for row in x.rows[:n]] for x in runs], axis=0) / 1e6
        rounds = [row["round"] for row in runs[0].rows[:n]]
        color = "black" if r["method"] == "identity" else cmap(methods.index(r["method"]) % 10)
        style = "-" if r["method"] == "identity" else styles.get(r["bits"], "-")
        main = r["method"] in ("identity", "hd-dither")
        kw = dict(color=color, linestyle=style, marker=".", markersize=4, label=r["label"],
                  linewidth=2.0 if main else 1.2, zorder=3 if main else 2)
        ax1.plot(up[1:], acc[1:], **kw)
        ax2.plot(rounds, acc, **kw)
    cfg = summary["config"]
    ax1.set_xscale("log")
    ax1.set_xlabel("cumulative uplink (MB, on the wire, log scale)")
    ax2.set_xlabel("round")
    for ax in (ax1, ax2):
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8, ncol=2, loc="lower right")
    fig.suptitle(f"FedAvg on {cfg['task']}: {cfg['clients']} clients, Dirichlet α={cfg['alpha']}, "
                 f"{cfg['clients-per-round']}/round, mean of {len(cfg['seeds'])} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(results: list[RunResult], cfg: SweepConfig, seconds: float | None = None,
              notes: list[str] | None = None) -> dict[str, Any]:
    """Write every output under ``cfg.out``; returns the summary dict."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results, cfg)
    cpus = [r.cpu_seconds for r in results if r.cpu_seconds is not None]
    summary["meta"] = {
        "sweep_seconds": seconds,
        "cpu_seconds": max(cpus) if cpus else None,
        "cpu_count": os.cpu_count(),
        "notes": notes or [],
        "python": platform.python_version(),
        "machine": platform.machine(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_csv(results, out / FILES["csv"])
    with open(out / FILES["json"], "w") as f:
        json.dump(_jsonable(summary), f, indent=2)
        f.write("\n")
    (out / FILES["md"]).write_text(markdown(summary))
    plot(results, summary, out / FILES["png"])
    return summary


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float):
        return round(x, 6) if math.isfinite(x) else None
    if isinstance(x, np.generic):
        return x.item()
    return x


def console(summary: dict[str, Any], out: str) -> str:
    """A one-screen summary of the sweep."""
    meta = summary.get("meta", {})
    lines = ["", "fedhd sweep summary", "=" * 78,
             f"{'method':<16}{'bits':>5}{'accuracy %':>16}{'Δ pts':>8}{'uplink MB':>12}"
             f"{'÷ fp32':>9}{'rounds→tgt':>12}", "-" * 78]
    for r in summary["rows"]:
        rtt = (f"{r['rounds_to_target']:.1f}" if r["rounds_to_target"] is not None
               else f"{r['target_reached_seeds']}/{len(r['seeds'])}")
        lines.append(
            f"{r['method']:<16}{r['bits']:>5}"
            f"{100 * r['final_accuracy_mean']:>9.2f} ± {100 * r['final_accuracy_std']:<4.2f}"
            f"{r['delta_vs_fp32_points']:>+8.2f}{r['uplink_bytes_total'] / 1e6:>12.3f}"
            f"{r['uplink_reduction_vs_fp32']:>8.1f}x{rtt:>12}")
    lines.append("-" * 78)
    dropped = sum(r.get("dropped_replies", 0) for r in summary["rows"])
    if dropped:
        lines.append(f"warning: {dropped} train replies were dropped or failed (see rounds.csv)")
    for note in meta.get("notes", []):
        lines.append(f"note: {note}")
    if meta.get("sweep_seconds") is not None:
        cpu = meta.get("cpu_seconds")
        lines.append(f"sweep time: {meta['sweep_seconds']:.0f} s" + (
            f" (CPU {cpu:.0f} s over {meta.get('cpu_count')} cores)" if cpu else ""))
    lines.append(f"outputs: {out}/{{{','.join(FILES.values())}}}")
    return "\n".join(lines)
