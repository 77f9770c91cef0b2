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


def _groups(results: list[RunResult]) -> dict[str, list[RunResult]]:
    """Runs by label (one configuration, every seed), in the order they first ran."""
    groups: dict[str, list[RunResult]] = defaultdict(list)
    for res in results:
        groups[res.label].append(res)
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


def _reach(runs: list[RunResult], target: float, prefix: str) -> dict[str, Any]:
    """Rounds, bytes and simulated time until ``target`` (means over seeds; None unless
    every seed got there) and how many seeds got there."""
    hits = [h for r in runs if (h := _to_target(r, target)) is not None]
    everyone = len(hits) == len(runs)

    def mean(key: str) -> float | None:
        return _mean([h[key] for h in hits]) if everyone else None

    return {f"rounds_to_{prefix}": mean("round"), f"{prefix}_reached_seeds": len(hits),
            f"uplink_bytes_to_{prefix}": mean("uplink_bytes"),
            f"total_bytes_to_{prefix}": mean("total_bytes"),
            f"sim_time_s_to_{prefix}": mean("sim_time_s")}


def _reach_mean(runs: list[RunResult], target: float) -> dict[str, Any]:
    """Rounds, bytes and simulated time until the seed-mean accuracy curve first reaches
    ``target`` (None if it never does): one seed ending low does not void the figure."""
    n = min(len(r.rows) for r in runs) if runs else 0
    for i in range(1, n):
        if _mean([r.rows[i]["accuracy"] for r in runs]) >= target:
            return {"rounds_to_within": runs[0].rows[i]["round"],
                    "uplink_bytes_to_within": _mean([r.rows[i]["uplink_bytes"] for r in runs]),
                    "total_bytes_to_within": _mean([r.rows[i]["total_bytes"] for r in runs]),
                    "sim_time_s_to_within": _mean([r.rows[i]["sim_time_s"] for r in runs])}
    return {"rounds_to_within": None, "uplink_bytes_to_within": None,
            "total_bytes_to_within": None, "sim_time_s_to_within": None}


def _down_per_round(runs: list[RunResult], key: str) -> float | None:
    """Mean over rounds and seeds of a compressed-downlink column (None without one)."""
    values = [float(row[key]) for r in runs for row in r.rows[1:]
              if row.get(key) not in (None, "")]
    return float(np.mean(values)) if values else None


def summarize(results: list[RunResult], cfg: SweepConfig) -> dict[str, Any]:
    """``{"rows": [...], "config": {...}}``: one row per configuration (label), over seeds.

    Two targets: ``target`` = ``target-fraction`` x the baseline's final accuracy (rounds,
    bytes and time until each seed first reaches it, means over seeds), and ``within`` =
    the baseline's final accuracy minus ``target-points`` points (rounds, bytes and time
    until the seed-mean accuracy curve first reaches it, and the reduction against the
    baseline's bytes to it)."""
    groups = _groups(results)

    def final_acc(key: str) -> float:
        return _mean([r.final["accuracy"] for r in groups[key]])

    ref_key = next((k for k, runs in groups.items() if runs[0].uncompressed), None)
    if ref_key is None and groups:  # no uncompressed run: the best final accuracy
        ref_key = max(groups, key=final_acc)
    ref_acc = final_acc(ref_key) if ref_key else math.nan
    ref = groups[ref_key] if ref_key else []
    ref_up = _mean([r.final["uplink_bytes"] for r in ref])
    ref_total = _mean([r.final["total_bytes"] for r in ref])
    target = cfg.target_fraction * ref_acc
    within = ref_acc - cfg.target_points / 100.0
    ref_within = _reach_mean(ref, within)["total_bytes_to_within"] if ref else None

    rows: list[dict[str, Any]] = []
    for label, runs in groups.items():
        accs = [r.final["accuracy"] for r in runs]
        ups = [r.final["uplink_bytes"] for r in runs]
        totals = [r.final["total_bytes"] for r in runs]
        replies = sum(row.get("clients") or 0 for r in runs for row in r.rows)
        plain = [r.final.get("fp32_fedavg_uplink_bytes") for r in runs]
        reach = _reach(runs, target, "target")
        near = _reach_mean(runs, within)
        to_within = near["total_bytes_to_within"]
        rows.append({
            "method": runs[0].method,
            "bits": runs[0].bits,
            "label": label,
            "options": runs[0].options,
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
            **reach,
            **near,
            "total_reduction_to_within": (ref_within / to_within
                                          if ref_within and to_within else None),
            "down_keyframes_per_round": _down_per_round(runs, "down_keyframes"),
            "down_delta_messages_per_round": _down_per_round(runs, "down_delta_messages"),
            "down_blob_bytes_per_round": _down_per_round(runs, "down_blob_bytes"),
            "down_catchup_bytes_per_round": _down_per_round(runs, "down_catchup_bytes"),
            "down_keyframe_bytes_per_round": _down_per_round(runs, "down_keyframe_bytes"),
            "fp32_fedavg_uplink_bytes_total": (
                _mean([float(p) for p in plain if p is not None])
                if all(p is not None for p in plain) else None),
            "dropped_replies": sum(int(row.get("dropped") or 0) for r in runs for row in r.rows),
            "seconds_per_run": _mean([r.seconds for r in runs]),
        })
    first = results[0] if results else None
    return {
        "rows": rows,
        "config": {
            **cfg.to_dict(),
            "clients-per-round": cfg.clients_per_round,
            "model-parameters": first.num_params if first else None,
            "target-accuracy": target,
            "within-accuracy": within,
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


def _x(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.1f}x"


def markdown(summary: dict[str, Any]) -> str:
    cfg = summary["config"]
    rows = summary["rows"]
    n_seeds = len(cfg["seeds"])
    within = cfg.get("within-accuracy")
    lines = [
        f"Task `{cfg['task']}`: {cfg['clients']} clients (Dirichlet α = {cfg['alpha']} where "
        f"the task splits by label), {cfg['clients-per-round']} per round, {cfg['rounds']} "
        f"rounds, {cfg['model-parameters']:,} parameters, seeds {cfg['seeds']}. Accuracy on "
        f"the held-out test set after the last round, mean ± std over seeds. Bytes: every "
        f"message of a run as Flower transports it (MB = 10^6 bytes, per run); downlink = "
        f"train messages to the sampled clients (as sent: with a compressed downlink, the "
        f"deltas or keyframes), uplink = their replies. Simulated time: link model of "
        f"{cfg['downlink-mbps']:g} Mbit/s down, {cfg['uplink-mbps']:g} Mbit/s up, "
        f"{cfg['latency-ms']:g} ms per transfer, client compute = measured CPU seconds x "
        f"{cfg['compute-scale']:g} (simulations/link.py).",
        "",
        "| configuration | final accuracy (%) | Δ vs baseline (points) | uplink MB | "
        "downlink MB | total MB | fewer uplink bytes | fewer total bytes | wire bits/coord | "
        "MB to target | simulated s to target | MB to within | fewer bytes to within | "
        "client compress CPU s/round | server aggregate CPU s/round |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        n = len(r["seeds"])

        def miss(prefix: str, r: dict[str, Any] = r, n: int = n) -> str:
            return f"({r[f'{prefix}_reached_seeds']}/{n} seeds)"

        hit = r["rounds_to_target"] is not None
        btt = _mb(r["total_bytes_to_target"]) if hit else miss("target")
        stt = _sec(r["sim_time_s_to_target"]) if hit else miss("target")
        near = r.get("rounds_to_within") is not None
        btw = _mb(r["total_bytes_to_within"]) if near else "not reached"
        lines.append(
            f"| {r['label']} | {100 * r['final_accuracy_mean']:.2f} ± "
            f"{100 * r['final_accuracy_std']:.2f} | {r['delta_vs_fp32_points']:+.2f} | "
            f"{_mb(r['uplink_bytes_total'])} | {_mb(r['downlink_bytes_total'])} | "
            f"{_mb(r['total_bytes_total'])} | {_x(r['uplink_reduction_vs_fp32'])} | "
            f"{_x(r['total_reduction_vs_fp32'])} | {r['uplink_bits_per_coordinate']:.2f} | "
            f"{btt} | {stt} | {btw} | {_x(r.get('total_reduction_to_within'))} | "
            f"{r['client_compress_cpu_s_per_round']:.3f} | "
            f"{r['server_aggregate_cpu_s_per_round']:.3f} |")
    lines += ["", f"Baseline: {cfg['reference']}. To target: the first round at "
              f"{100 * cfg['target-accuracy']:.1f}% ({cfg['target-fraction']} x the "
              f"baseline's final accuracy) in each seed; MB (total, down + up) and simulated "
              f"seconds until then, mean over seeds; (k/{n_seeds} seeds) when not every seed "
              f"got there. To within: the first round at which the mean accuracy over seeds "
              f"is within {cfg.get('target-points', 1.0):g} point(s) of the baseline's final "
              f"accuracy ({100 * within:.2f}%), total MB until then, and the baseline's MB to "
              f"the same point divided by it. Wire "
              f"bits/coord = 8 x uplink bytes / (replies x parameters), envelopes included. "
              f"CPU seconds per round (median over rounds and seeds): client = compression "
              f"(train call minus local training) summed over the round's clients; server = "
              f"decode and aggregate (simulations/metering.py)."
              if within is not None else ""]
    down = [r for r in rows if r.get("down_keyframes_per_round") is not None]
    if down:
        lines += ["", "Compressed downlink, per round (mean over rounds and seeds; "
                  "CompressedFedAvg's `fedhd.down.*` train metrics):", "",
                  "| configuration | keyframes | delta messages | newest delta KB | "
                  "catch-up KB | keyframe KB | downlink KB (metered) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in down:
            per_round = r["downlink_bytes_total"] / max(cfg["rounds"], 1)
            lines.append(
                f"| {r['label']} | {r['down_keyframes_per_round']:.2f} | "
                f"{r['down_delta_messages_per_round']:.2f} | "
                f"{r['down_blob_bytes_per_round'] / 1e3:.1f} | "
                f"{r['down_catchup_bytes_per_round'] / 1e3:.1f} | "
                f"{r['down_keyframe_bytes_per_round'] / 1e3:.1f} | {per_round / 1e3:.1f} |")
    return "\n".join(lines) + "\n"


def compact(summary: dict[str, Any]) -> str:
    """The README's table of a sweep: accuracy, bytes of both directions, to target, to
    within (``python -m simulations.report --compact DIR``)."""
    cfg = summary["config"]
    n_seeds = len(cfg["seeds"])
    lines = ["| configuration | final accuracy (%) | Δ (points) | uplink MB | downlink MB | "
             "total MB | ÷ uplink | MB to target | simulated s to target | "
             f"MB to within {cfg.get('target-points', 1.0):g} pt | ÷ total to within |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in summary["rows"]:
        hit = r["rounds_to_target"] is not None
        miss = f"({r['target_reached_seeds']}/{n_seeds} seeds)"
        near = r.get("rounds_to_within") is not None
        lines.append(
            f"| {r['label']} | {100 * r['final_accuracy_mean']:.2f} ± "
            f"{100 * r['final_accuracy_std']:.2f} | {r['delta_vs_fp32_points']:+.2f} | "
            f"{_mb1(r['uplink_bytes_total'])} | {_mb1(r['downlink_bytes_total'])} | "
            f"{_mb1(r['total_bytes_total'])} | {_x(r['uplink_reduction_vs_fp32'])} | "
            f"{_mb1(r['total_bytes_to_target']) if hit else miss} | "
            f"{_sec(r['sim_time_s_to_target']) if hit else miss} | "
            f"{_mb1(r['total_bytes_to_within']) if near else 'not reached'} | "
            f"{_x(r.get('total_reduction_to_within')) if near else '–'} |")
    return "\n".join(lines) + "\n"


def _mb1(n: float | None) -> str:
    if n is None:
        return "–"
    return f"{n / 1e6:.1f}" if n >= 1e8 else f"{n / 1e6:.2f}"


def plot(results: list[RunResult], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups(results)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(18, 5.2))
    others = [r["label"] for r in summary["rows"] if not r["uncompressed"]]
    cmap = plt.get_cmap("tab10" if len(others) <= 10 else "tab20")
    for r in summary["rows"]:
        runs = groups[r["label"]]
        n = min(len(x.rows) for x in runs)

        def mean(key: str, runs: list[RunResult] = runs, n: int = n) -> np.ndarray:
            return np.mean([[float(row[key]) for row in x.rows[:n]] for x in runs], axis=0)

        acc = mean("accuracy") * 100
        total = mean("total_bytes") / 1e6
        sim = mean("sim_time_s")
        rounds = [row["round"] for row in runs[0].rows[:n]]
        base = r["uncompressed"]
        color = "black" if base else cmap(others.index(r["label"]) % cmap.N)
        downlink = bool(dict(r.get("options") or {}).get("downlink"))
        style = "-" if base else ("--" if downlink else "-")
        kw = dict(color=color, linestyle=style, marker=".", markersize=4, label=r["label"],
                  linewidth=2.2 if base else 1.4, zorder=3 if base else 2)
        ax1.plot(total[1:], acc[1:], **kw)
        ax2.plot(sim, acc, **kw)
        ax3.plot(rounds, acc, **kw)
    cfg = summary["config"]
    ax1.set_xscale("log")
    ax1.set_xlabel("cumulative bytes, downlink + uplink (MB, on the wire, log scale)")
    ax2.set_xscale("log")
    ax2.set_xlabel(f"simulated wall-clock (s, log scale): {cfg['downlink-mbps']:g} / "
                   f"{cfg['uplink-mbps']:g} Mbit/s, {cfg['latency-ms']:g} ms")
    ax3.set_xlabel("round")
    from matplotlib.ticker import NullFormatter

    for ax in (ax1, ax2):  # decades only: the minor labels of a log axis overlap
        ax.xaxis.set_minor_formatter(NullFormatter())
    for ax in (ax1, ax2, ax3):
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
        finals = [100 * r["final_accuracy_mean"] for r in summary["rows"]]
        if finals:  # the interesting part: from well below the worst final accuracy up
            top = max(finals)
            ax.set_ylim(max(0.0, min(min(finals) - 10.0, top - 30.0)), top + 2.0)
    ax3.legend(fontsize=7, ncol=2, loc="lower right")
    fig.suptitle(f"FedAvg on {cfg['task']}: {cfg['clients']} clients, "
                 f"{cfg['clients-per-round']}/round, mean of {len(cfg['seeds'])} seeds "
                 f"(dashed: compressed downlink too)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(results: list[RunResult], cfg: SweepConfig, seconds: float | None = None,
              notes: list[str] | None = None, extra_cpu_seconds: float = 0.0
              ) -> dict[str, Any]:
    """Write every output under ``cfg.out``; returns the summary dict. ``extra_cpu_seconds``:
    CPU of earlier parts of a resumed sweep (their runs carry none)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results, cfg)
    cpus = [r.cpu_seconds for r in results if r.cpu_seconds is not None]
    summary["meta"] = {
        "sweep_seconds": seconds,
        "cpu_seconds": (max(cpus) if cpus else 0.0) + extra_cpu_seconds or None,
        "cpu_count": os.cpu_count(),
        "notes": notes or [],
        "python": platform.python_version(),
        "machine": platform.machine(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_csv(results, out / FILES["csv"])
    _write_summary(results, summary, out)
    return summary


def _write_summary(results: list[RunResult], summary: dict[str, Any], out: Path) -> None:
    """``summary.json``, ``summary.md`` and ``accuracy.png`` of ``summary`` under ``out``."""
    with open(out / FILES["json"], "w") as f:
        json.dump(_jsonable(summary), f, indent=2)
        f.write("\n")
    (out / FILES["md"]).write_text(markdown(summary))
    plot(results, summary, out / FILES["png"])


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
             f"{'configuration':<17}{'accuracy %':>16}{'Δ pts':>7}{'up MB':>9}"
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
            f"{r['label'][:16]:<17}{acc:>16}{r['delta_vs_fp32_points']:>+7.2f}"
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


# --------------------------------------------------------------------------------------
# Rebuilding the report of a finished sweep from its files


def _cell(text: str) -> Any:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


_DERIVED = ("clients-per-round", "model-parameters", "target-accuracy", "within-accuracy",
            "reference")


def load_results(folder: str | Path) -> tuple[list[RunResult], SweepConfig, dict[str, Any]]:
    """The runs, configuration and meta of a sweep's output folder (``rounds.csv`` and
    ``summary.json``), so that its report can be rebuilt without running it again."""
    from .config import from_mapping

    folder = Path(folder)
    saved = json.loads((folder / FILES["json"]).read_text())
    config = {k: v for k, v in saved["config"].items() if k not in _DERIVED}
    cfg = from_mapping(config).replace(out=str(folder))
    by_label = {r.get("label"): r for r in saved["rows"]}
    params = int(saved["config"].get("model-parameters") or 0)
    runs: dict[tuple[str, int], RunResult] = {}
    with open(folder / FILES["csv"], newline="") as f:
        for raw in csv.DictReader(f):
            row = {k: _cell(v) for k, v in raw.items()}
            label = row.get("label") or (
                f"{row['method']} (uncompressed)" if row["method"] == saved["config"].get(
                    "reference", "").split(" ")[0] else f"{row['method']} {row['bits']}b")
            row["label"] = label
            key = (str(label), int(row["seed"]))
            if key not in runs:
                info = by_label.get(label, {})
                runs[key] = RunResult(
                    str(row["method"]), row["bits"], int(row["seed"]), task=cfg.task,
                    num_params=params, clients_per_round=cfg.clients_per_round,
                    uncompressed=bool(info.get("uncompressed", False)), name=str(label),
                    options=dict(info.get("options") or {}),
                    seconds=float(info.get("seconds_per_run") or 0.0))
            runs[key].rows.append(row)
    return list(runs.values()), cfg, saved.get("meta", {})


def rebuild(folder: str | Path) -> dict[str, Any]:
    """Rewrite ``summary.json``, ``summary.md`` and ``accuracy.png`` of a finished sweep
    from its ``rounds.csv`` (``rounds.csv`` itself is kept as it is)."""
    results, cfg, meta = load_results(folder)
    out = Path(folder)
    summary = summarize(results, cfg)
    summary["meta"] = meta
    _write_summary(results, summary, out)
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m simulations.report DIR [DIR ...]``: rebuild each sweep's report."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m simulations.report",
                                description="Rebuild summary.json, summary.md and "
                                "accuracy.png of finished sweeps from their rounds.csv.")
    p.add_argument("folders", nargs="+", metavar="DIR")
    p.add_argument("--compact", action="store_true",
                   help="print the README's compact table of each instead of the console "
                   "summary (the files are rewritten either way)")
    args = p.parse_args(argv)
    for folder in args.folders:
        summary = rebuild(folder)
        print(compact(summary) if args.compact else console(summary, str(folder)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
