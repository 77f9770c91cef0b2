"""Run a sweep on Flower's Simulation Engine (Ray backend) in one ``run_simulation`` call."""

from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Any

from .config import SweepConfig
from .results import RunResult
from .server_app import check_clients, make_server_app, plan


def backend_config(cfg: SweepConfig, verbose: bool = False) -> dict[str, Any]:
    """Ray: every core for ClientApp actors of ``client-cpus`` CPUs each; quiet logs
    unless ``verbose`` (ClientApp failures still reach the server as error replies)."""
    cpus = os.cpu_count() or 1
    return {
        "client_resources": {"num_cpus": cfg.client_cpus, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "num_gpus": 0, "logging_level": "ERROR",
                      "log_to_driver": verbose, "include_dashboard": False},
    }


def run(cfg: SweepConfig, progress: bool = True, verbose: bool = False
        ) -> tuple[list[RunResult], float, list[str]]:
    """Run the sweep; returns (results, seconds, notes). Ray is shut down before returning."""
    import torch
    from flwr.simulation import run_simulation

    # Ray starts its workers at nice 15: on a shared machine any other job would take the
    # cores from the ClientApps and the sweep's timings would measure that. Same priority
    # as the driver instead (the environment can still say otherwise).
    os.environ.setdefault("RAY_worker_niceness", "0")

    from .client_app import app as client_app

    specs, notes = plan(cfg)
    if not specs:
        raise SystemExit("nothing to run: " + "; ".join(notes))
    total = len(specs) * len(cfg.seeds) * cfg.rounds
    torch.set_num_threads(1)  # the server thread evaluates; the actors own the other cores
    from . import tasks

    task = tasks.load(cfg.task, cfg.task_options)
    task.prepare()  # data read or generated once here; the actors read any cache it writes
    check_clients(cfg)
    _export_task_path(cfg.task)

    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="round", dynamic_ncols=True,
                   desc=f"{len(specs)} configs x {len(cfg.seeds)} seeds")

    def on_round(row: dict[str, Any]) -> None:
        if bar is not None:
            bar.set_postfix_str(f"{row['label']} seed {row['seed']} "
                                f"acc {100 * row['accuracy']:.1f}%", refresh=False)
            bar.update(1)

    sink: list[RunResult] = []
    cpu_start = tree_cpu_seconds()

    def on_run(res: RunResult) -> None:
        sink.append(res)
        cpu = tree_cpu_seconds()
        if cpu is not None and cpu_start is not None:
            res.cpu_seconds = cpu - cpu_start  # cumulative since the sweep started

    server_app = make_server_app(cfg, on_run, on_round=on_round)
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:  # the progress bar replaces Flower's per-round log; dropped replies are
        flwr_logger.setLevel(logging.ERROR)  # counted in the outputs (`dropped`)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_simulation(server_app=server_app, client_app=client_app,
                           num_supernodes=cfg.clients, backend_config=backend_config(cfg, verbose),
                           verbose_logging=verbose)
    finally:
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        flwr_logger.setLevel(level)
        _shutdown_ray()
    expected = len(specs) * len(cfg.seeds)
    if len(sink) != expected:
        raise RuntimeError(f"the simulation finished {len(sink)} of {expected} runs; "
                           "rerun with --verbose for Flower's log")
    return sink, seconds, notes


def _export_task_path(spec: str) -> None:
    """Put the folder that holds a user's task module (``module:Class``) and the current
    folder on ``PYTHONPATH``, which the Ray workers inherit, so they import it as the
    driver did."""
    import importlib
    import sys

    from .tasks.base import BUILTIN

    if spec in BUILTIN:
        return
    module_name = spec.partition(":")[0]
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    entries = [os.getcwd()]
    origin = getattr(module, "__file__", None)
    if origin:
        root = os.path.dirname(os.path.abspath(origin))
        levels = module_name.count(".") + (os.path.basename(origin) == "__init__.py")
        for _ in range(levels):  # up from the module to its top package
            root = os.path.dirname(root)
        entries.insert(0, root)
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(entries + current))


def tree_cpu_seconds(root: int | None = None) -> float | None:
    """User + system CPU seconds of a process and all its live descendants (Linux /proc;
    None elsewhere). Ray's workers descend from the driver, so this is the sweep's CPU."""
    root = os.getpid() if root is None else root
    try:
        tick = os.sysconf("SC_CLK_TCK")
        stats: dict[int, tuple[int, float]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # fields[1] = ppid, [11] utime, [12] stime, [13] cutime, [14] cstime (clock ticks)
            stats[int(name)] = (int(fields[1]),
                                sum(int(v) for v in fields[11:15]) / tick)
    except (OSError, ValueError, AttributeError):
        return None
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        if pid in stats:
            total += stats[pid][1]
        stack.extend(children.get(pid, []))
    return total


def _shutdown_ray() -> None:
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()
