"""Outputs of a sweep: per-round CSV, summary JSON, markdown table, PNG, console summary.

Works from :mod:`simulations.results` alone: every figure comes from the rows of the
:class:`~simulations.results.RunResult` list (bytes of both directions, CPU seconds,
simulated time), so any task's sweep gets the same report. The baseline every method is
compared with is the uncompressed run (a property of its method, see ``RunResult``), or,
without one, the configuration with the best final accuracy.
"""

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
from .results import ROUND_FIELDS, RunResult

#: Columns of rounds.csv (see ``simulations.results.ROUND_FIELDS`` for their meaning).
CSV_FIELDS = list(ROUND_FIELDS)

FILES = {"csv": "rounds.csv", "json": "summary.json", "md": "summary.md", "png": "accuracy.png"}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _groups(results: list[RunResult]) -> dict[tuple[str, int], list[RunResult]]:
    groups: dict[tuple[str, int], list[RunResult]] = defaultdict(list)
    for res in results:
        groups[(res.method, res.bits)].append(res)
    return groups


def _per_round(runs: list[RunResult], key: str) -> float:
    """Median over the runs' rounds 1.. of a per-round column (missing values skipped): a
    one-off cost in some round (a first call in a process) does not move it."""
    values = [float(row[key]) for r in runs for row in r.rows[1:] if row.get(key) is not None]
    return float(np.median(values)) if values else math.nan


def _to_target(run: RunResult, target: float) -> dict[str, Any] | None:
    """The first row (round >= 1) at or above ``target`` accuracy."""
    return next((row for row in run.rows if row["round"] > 0 and row["accuracy"] >= target),
                None)


def summarize(results: list[RunResult], cfg: SweepConfig) -> dict[str, Any]:
    """``{"rows": [...], "config": {...}}``: one row per (method, bits), over seeds."""
    groups = _groups(results)

    def final_acc(key: tuple[str, int]) -> float:
        return _mean([r.final["accuracy"] for r in groups[key]])

    ref_key = next((k for k, runs in groups.items() if runs[0].uncompressed), None)
    if ref_key is None and groups:  # no uncompressed run: the best final accuracy
        ref_key = max(groups, key=final_acc)
    ref_acc = final_acc(ref_key) if ref_key else math.nan
    ref = groups[ref_key] if ref_key else []
    ref_up = _mean([r.final["uplink_bytes"] for r in ref])
    ref_total = _mean([r.final["total_bytes"] for r in ref])
    target = cfg.target_fraction * ref_acc

    rows: list[dict[str, Any]] = []
    for (method, bits), runs in groups.items():
        accs = [r.final["accuracy"] for r in runs]
        ups = [r.final["uplink_bytes"] for r in runs]
        totals = [r.final["total_bytes"] for r in runs]
        hits = [h for r in runs if (h := _to_target(r, target)) is not None]
        everyone = len(hits) == len(runs)
        replies = sum(row.get("clients") or 0 for r in runs for row in r.rows)
        plain = [r.final.get("fp32_fedavg_uplink_bytes") for r in runs]
        rows.append({
            "method": method,
            "bits": bits,
            "label": runs[0].label,
            "uncompressed": runs[0].uncompressed,
            "seeds": [r.seed for r in runs],
            "final_accuracy_mean": _mean(accs),
            "final_accuracy_std": _std(accs),
            "final_loss_mean": _mean([r.final["loss"] for r in runs]),
            "delta_vs_fp32_points": 100 * (_mean(accs) - ref_acc),
            "uplink_bytes_total": _mean(ups),
            "downlink_bytes_total": _mean([r.final["downlink_bytes"] for r in runs]),
            "total_bytes_total": _mean(totals),
            "uplink_reduction_vs_fp32": ref_up / _mean(ups) if ups else math.nan,
            "total_reduction_vs_fp32": ref_total / _mean(totals) if totals else math.nan,
            "uplink_bits_per_coordinate": (8 * sum(ups) / (replies * runs[0].num_params)
                                           if replies and runs[0].num_params else math.nan),
            "client_compress_cpu_s_per_round": _per_round(runs, "client_compress_cpu_s"),
            "client_train_cpu_s_per_round": _per_round(runs, "client_train_cpu_s"),
            "server_aggregate_cpu_s_per_round": _per_round(runs, "server_aggregate_cpu_s"),
            "sim_time_s_total": _mean([r.final["sim_time_s"] for r in runs]),
            "rounds_to_target": _mean([h["round"] for h in hits]) if everyone else None,
            "target_reached_seeds": len(hits),
            "uplink_bytes_to_target": _mean([h["uplink_bytes"] for h in hits]) if everyone
            else None,
            "total_bytes_to_target": _mean([h["total_bytes"] for h in hits]) if everyone
            else None,
            "sim_time_s_to_target": _mean([h["sim_time_s"] for h in hits]) if everyone
            else None,
            "fp32_fedavg_uplink_bytes_total": (
                _mean([float(p) for p in plain if p is not None])
                if all(p is not None for p in plain) else None),
            "dropped_replies": sum(int(row.get("dropped") or 0) for r in runs for row in r.rows),
            "seconds_per_run": _mean([r.seconds for r in runs]),
        })
    order = {m: i for i, m in enumerate(cfg.methods)}
    rows.sort(key=lambda r: (order.get(r["method"], 99), r["bits"]))
    first = results[0] if results else None
    return {
        "rows": rows,
        "config": {
            **cfg.to_dict(),
            "clients-per-round": cfg.clients_per_round,
            "model-parameters": first.num_params if first else None,
            "target-accuracy": target,
            "reference": groups[ref_key][0].label if ref_key else None,
        },
    }


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


def _mb(n: float | None) -> str:
    return "–" if n is None else f"{n / 1e6:.3f}"


def _sec(s: float | None) -> str:
    return "–" if s is None else f"{s:.1f}"


def markdown(summary: dict[str, Any]) -> str:
    cfg = summary["config"]
    lines = [
        f"Task `{cfg['task']}`: {cfg['clients']} clients (Dirichlet α = {cfg['alpha']} where "
        f"the task splits by label), {cfg['clients-per-round']} per round, {cfg['rounds']} "
        f"rounds, {cfg['model-parameters']:,} parameters, seeds {cfg['seeds']}. Accuracy on "
        f"the held-out test set after the last round, mean ± std over seeds. Bytes: every "
        f"message of a run as Flower transports it; downlink = train messages to the "
        f"sampled clients, uplink = their replies. Simulated time: link model of "
        f"{cfg['downlink-mbps']:g} Mbit/s down, {cfg['uplink-mbps']:g} Mbit/s up, "
        f"{cfg['latency-ms']:g} ms per transfer, client compute = measured CPU seconds x "
        f"{cfg['compute-scale']:g} (simulations/link.py).",
        "",
        "| method | bits | final accuracy (%) | Δ vs baseline (points) | uplink MB | "
        "downlink MB | total MB | fewer uplink bytes | wire bits/coord | "
        "client compress CPU s/round | server aggregate CPU s/round | simulated time (s) | "
        "rounds to target | MB to target | simulated s to target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary["rows"]:
        n = len(r["seeds"])
        miss = f"({r['target_reached_seeds']}/{n} seeds)"
        rtt = f"{r['rounds_to_target']:.1f}" if r["rounds_to_target"] is not None else miss
        btt = _mb(r["total_bytes_to_target"]) if r["rounds_to_target"] is not None else miss
        stt = _sec(r["sim_time_s_to_target"]) if r["rounds_to_target"] is not None else miss
        lines.append(
            f"| {r['method']} | {r['bits']} | {100 * r['final_accuracy_mean']:.2f} ± "
            f"{100 * r['final_accuracy_std']:.2f} | {r['delta_vs_fp32_points']:+.2f} | "
            f"{_mb(r['uplink_bytes_total'])} | {_mb(r['downlink_bytes_total'])} | "
            f"{_mb(r['total_bytes_total'])} | {r['uplink_reduction_vs_fp32']:.1f}x | "
            f"{r['uplink_bits_per_coordinate']:.2f} | "
            f"{r['client_compress_cpu_s_per_round']:.3f} | "
            f"{r['server_aggregate_cpu_s_per_round']:.3f} | {_sec(r['sim_time_s_total'])} | "
            f"{rtt} | {btt} | {stt} |")
    lines += ["", f"Baseline: {cfg['reference']}. To target: the first round at "
              f"{100 * cfg['target-accuracy']:.1f}% ({cfg['target-fraction']} x the "
              f"baseline's final accuracy), mean over seeds of that round, of the total "
              f"(down + up) bytes until then and of the simulated time until then; "
              f"(k/n seeds) when not every seed got there. Wire bits/coord = 8 x uplink "
              f"bytes / (replies x parameters), envelopes included. CPU seconds per round "
              f"(median over rounds and seeds): client = compression (train call minus "
              f"local training) summed over the round's clients; server = decode and "
              f"aggregate (simulations/metering.py)."]
    return "\n".join(lines) + "\n"


def plot(results: list[RunResult], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(results)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 4.8))
    cmap = plt.get_cmap("tab10")
    methods = list(dict.fromkeys(r["method"] for r in summary["rows"] if not r["uncompressed"]))
    styles = {1: ":", 2: "-", 3: "-.", 4: "--"}
    for r in summary["rows"]:
        runs = groups[(r["method"], r["bits"])]
        n = min(len(x.rows) for x in runs)

        def mean(key: str, runs: list[RunResult] = runs, n: int = n) -> np.ndarray:
            return np.mean([[float(row[key]) for row in x.rows[:n]] for x in runs], axis=0)

        acc = mean("accuracy") * 100
        total = mean("total_bytes") / 1e6
        sim = mean("sim_time_s")
        rounds = [row["round"] for row in runs[0].rows[:n]]
        base = r["uncompressed"]
        color = "black" if base else cmap(methods.index(r["method"]) % 10)
        style = "-" if base else styles.get(r["bits"], "-")
        kw = dict(color=color, linestyle=style, marker=".", markersize=4, label=r["label"],
                  linewidth=2.2 if base else 1.4, zorder=3 if base else 2)
        ax1.plot(total[1:], acc[1:], **kw)
        ax2.plot(sim, acc, **kw)
        ax3.plot(rounds, acc, **kw)
    cfg = summary["config"]
    ax1.set_xscale("log")
    ax1.set_xlabel("cumulative bytes, downlink + uplink (MB, on the wire, log scale)")
    ax2.set_xlabel(f"simulated wall-clock (s): {cfg['downlink-mbps']:g} / "
                   f"{cfg['uplink-mbps']:g} Mbit/s, {cfg['latency-ms']:g} ms")
    ax3.set_xlabel("round")
    for ax in (ax1, ax2, ax3):
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
    ax3.legend(fontsize=8, ncol=2, loc="lower right")
    fig.suptitle(f"FedAvg on {cfg['task']}: {cfg['clients']} clients, "
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
    width = 99
    lines = ["", "fedhd sweep summary", "=" * width,
             f"{'method':<13}{'bits':>4}{'accuracy %':>16}{'Δ pts':>7}{'up MB':>9}"
             f"{'down MB':>9}{'÷ up':>7}{'sim s':>8}{'rnd→tgt':>9}{'MB→tgt':>9}"
             f"{'s→tgt':>8}", "-" * width]
    for r in summary["rows"]:
        hit = r["rounds_to_target"] is not None
        miss = f"{r['target_reached_seeds']}/{len(r['seeds'])}"
        rtt = f"{r['rounds_to_target']:.1f}" if hit else miss
        btt = _mb(r["total_bytes_to_target"]) if hit else miss
        stt = _sec(r["sim_time_s_to_target"]) if hit else miss
        acc = f"{100 * r['final_accuracy_mean']:.2f} ± {100 * r['final_accuracy_std']:.2f}"
        lines.append(
            f"{r['method']:<13}{r['bits']:>4}{acc:>16}{r['delta_vs_fp32_points']:>+7.2f}"
            f"{r['uplink_bytes_total'] / 1e6:>9.3f}{r['downlink_bytes_total'] / 1e6:>9.3f}"
            f"{r['uplink_reduction_vs_fp32']:>6.1f}x{r['sim_time_s_total']:>8.1f}"
            f"{rtt:>9}{btt:>9}{stt:>8}")
    lines.append("-" * width)
    cfg = summary["config"]
    lines.append(f"target {100 * cfg['target-accuracy']:.1f}% = {cfg['target-fraction']} x "
                 f"{cfg['reference']}; MB = down + up; sim s: {cfg['downlink-mbps']:g}/"
                 f"{cfg['uplink-mbps']:g} Mbit/s, {cfg['latency-ms']:g} ms")
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
