"""``python -m simulations``: run a sweep and write results/ (see ``--help``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import config as C
from .link import PROFILES
from .tasks.base import BUILTIN


def _seeds(text: str) -> int | str:
    return text if "," in text else int(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulations",
        description="FedAvg with compressed uplinks on Flower's Simulation Engine: accuracy "
                    "against the bytes of both directions and against simulated wall-clock "
                    "for every (method, bits, seed). Defaults come from "
                    "simulations/default.toml, then the chosen task's own sweep defaults; "
                    "--config and the flags below override them.")
    p.add_argument("--config", metavar="TOML", help="a TOML file with a [sweep] table")
    p.add_argument("--quick", action="store_true",
                   help="a small smoke run (< 2 min): the [quick] table of default.toml")
    p.add_argument("--task", metavar="NAME|module:Class",
                   help=f"one of {', '.join(BUILTIN)}, or a simulations.tasks.Task subclass "
                   "of your own as package.module:Class")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the task (repeatable), e.g. model=small")
    p.add_argument("--data-dir", help="folder of the task's data files (task option data-dir; "
                   "fmnist: the four IDX .gz files)")
    p.add_argument("--clients", type=int, help="virtual clients (SuperNodes)")
    p.add_argument("--fraction", type=float, help="fraction of clients sampled per round")
    p.add_argument("--rounds", type=int)
    p.add_argument("--local-epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--alpha", type=float, help="Dirichlet concentration of the split")
    p.add_argument("--methods", help="comma-separated, e.g. identity,hd-dither")
    p.add_argument("--bits", help="comma-separated bits per coordinate for every method, e.g. "
                   "1,2,4 (fp32 stays at 32)")
    p.add_argument("--seeds", type=_seeds,
                   help="N (seeds 0..N-1) or a comma-separated list (one seed: '7,')")
    p.add_argument("--out", help="output folder (default results)")
    p.add_argument("--client-cpus", type=float, help="Ray CPUs per ClientApp actor")
    p.add_argument("--link", choices=sorted(PROFILES),
                   help="link profile of the simulated wall-clock (default: mobile)")
    p.add_argument("--downlink-mbps", type=float, help="simulated downlink, Mbit/s")
    p.add_argument("--uplink-mbps", type=float, help="simulated uplink, Mbit/s")
    p.add_argument("--latency-ms", type=float, help="simulated latency per transfer, ms")
    p.add_argument("--compute-scale", type=float,
                   help="simulated client compute = measured CPU seconds x this")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="Flower's INFO log")
    p.add_argument("--run", action="append", default=[], metavar="SPEC",
                   help="a named run with CompressedFedAvg options (repeatable), "
                   "method:bits[:key=value,...][@label], e.g. "
                   "'hd-dither:2:downlink=hd-dither,downlink-bits=2@hd-dither 2b + down 2b'; "
                   "added to the sweep's runs")
    p.add_argument("--resume", action="store_true",
                   help="keep the runs already in --out (same settings) and run only the "
                   "configurations it lacks (e.g. methods registered since), then rewrite "
                   "the report over all of them")
    p.add_argument("--redo", metavar="LABELS",
                   help="with --resume: run these configurations again (labels separated by "
                   "'|'), e.g. after a fix in the strategy they use")
    p.add_argument("--plan", action="store_true",
                   help="print the configuration and the runs, run nothing")
    return p


def build_config(args: argparse.Namespace) -> C.SweepConfig:
    """default.toml, then the task's sweep defaults (when the task is not default.toml's),
    then ``--config``, ``--quick`` and the flags."""
    cfg = C.default_config()
    user = C.read_sweep_table(args.config) if args.config else {}
    task = args.task or user.get("task") or cfg.task
    cfg = C.for_task(str(task), cfg)
    if user:
        cfg = C.from_mapping(user, cfg)
    if args.quick:
        cfg = C.quick(cfg, args.config)
    overrides: dict[str, Any] = {}
    if args.link:
        link = PROFILES[args.link]
        overrides.update(downlink_mbps=link.downlink_mbps, uplink_mbps=link.uplink_mbps,
                         latency_ms=link.latency_ms)
    for key in ("task", "clients", "fraction", "rounds", "local_epochs", "lr", "alpha",
                "methods", "bits", "seeds", "out", "client_cpus", "downlink_mbps",
                "uplink_mbps", "latency_ms", "compute_scale"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    options = dict(cfg.task_options)
    for item in args.task_option:
        options.update(C.parse_task_options(item))
    if args.data_dir:
        options["data-dir"] = args.data_dir
    if options != cfg.task_options:
        overrides["task_options"] = options
    if "bits" in overrides:  # explicit bits apply to every method (fixed-rate ones keep theirs)
        cfg = cfg.replace(method_bits={})
    if args.run:
        overrides["runs"] = [*cfg.runs, *C.parse_runs(";".join(args.run))]
    return C.from_mapping(overrides, cfg) if overrides else cfg


#: Settings that may differ between a finished sweep and a --resume of it.
_RESUMABLE = ("methods", "bits", "method-bits", "runs", "out", "quick")


def _resume(cfg: C.SweepConfig, specs: list[Any], redo: frozenset[str] = frozenset()
            ) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """(runs already in ``cfg.out`` with every seed, the specs still to run, old meta);
    the labels in ``redo`` count as not run."""
    from pathlib import Path

    from . import report

    if not (Path(cfg.out) / report.FILES["json"]).is_file():
        return [], specs, {}
    prior, old, meta = report.load_results(cfg.out)
    a = {k: v for k, v in old.to_dict().items() if k not in _RESUMABLE}
    b = {k: v for k, v in cfg.to_dict().items() if k not in _RESUMABLE}
    if a != b:
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ValueError(f"--resume: {cfg.out} holds a sweep with other settings ({diff})")
    seeds: dict[str, set[int]] = {}
    for r in prior:
        seeds.setdefault(r.label, set()).add(r.seed)
    done = {label for label, s in seeds.items() if set(cfg.seeds) <= s} - redo
    wanted = {s.label for s in specs}
    keep = [r for r in prior if r.label in done and r.label in wanted and r.seed in cfg.seeds]
    return keep, [s for s in specs if s.label not in done], meta


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = build_config(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from . import report
    from .server_app import plan

    specs, notes = plan(cfg)
    prior: list[Any] = []
    old_meta: dict[str, Any] = {}
    if args.resume:
        try:
            redo = frozenset(x.strip() for x in (args.redo or "").split("|") if x.strip())
            unknown = redo - {s.label for s in specs}
            if unknown:
                raise ValueError(f"--redo: no run labelled {sorted(unknown)} in this sweep")
            prior, todo, old_meta = _resume(cfg, specs, redo)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        kept = list(dict.fromkeys(r.label for r in prior))
        if kept:
            print("kept from " + cfg.out + ": " + ", ".join(kept))
    else:
        todo = specs
    options = "".join(f" {k}={v}" for k, v in cfg.task_options.items())
    print(f"fedhd sweep: task {cfg.task}{options}, {cfg.clients} clients "
          f"({cfg.clients_per_round}/round), {cfg.rounds} rounds, seeds {cfg.seeds}; link "
          f"{cfg.downlink_mbps:g}/{cfg.uplink_mbps:g} Mbit/s, {cfg.latency_ms:g} ms")
    print("runs: " + (", ".join(s.label for s in todo) or "none")
          + f"  (x {len(cfg.seeds)} seeds)")
    for note in notes:
        print(f"note: {note}")
    if args.plan:
        return 0
    from . import sweep

    seconds = 0.0
    results: list[Any] = []
    if todo:
        # the specs come labelled from plan(), so a sweep of exactly them runs them again
        part = cfg.replace(methods=[], method_bits={}, runs=list(todo))
        try:
            results, seconds, notes = sweep.run(part, progress=not args.no_progress,
                                                verbose=args.verbose)
        except (FileNotFoundError, ValueError) as e:  # missing data, too many clients, ...
            print(f"error: {e}", file=sys.stderr)
            return 2
    if prior:
        order = {s.label: i for i, s in enumerate(specs)}
        seed_order = {s: i for i, s in enumerate(cfg.seeds)}
        results = sorted(prior + results, key=lambda r: (seed_order.get(r.seed, 0),
                                                         order.get(r.label, 1 << 20)))
        seconds += float(old_meta.get("sweep_seconds") or 0.0)
        notes = [*notes, f"resumed: {len(prior)} runs kept from an earlier sweep into "
                 f"{cfg.out}; sweep time is the sum of the parts"]
    if not results:
        print("nothing to run")
        return 0
    summary = report.write_all(results, cfg, seconds=seconds, notes=notes,
                               extra_cpu_seconds=float(old_meta.get("cpu_seconds") or 0.0)
                               if prior else 0.0)
    print(report.console(summary, cfg.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
