"""``python -m simulations``: run a sweep and write results/ (see ``--help``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import config as C


def _seeds(text: str) -> int | str:
    return text if "," in text else int(text)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulations",
        description="FedAvg with compressed uplinks on Flower's Simulation Engine: accuracy "
                    "against uplink bytes for every (method, bits, seed). Defaults come from "
                    "simulations/default.toml; --config and the flags below override them.")
    p.add_argument("--config", metavar="TOML", help="a TOML file with a [sweep] table")
    p.add_argument("--quick", action="store_true",
                   help="a small smoke run (< 2 min): the [quick] table of default.toml")
    p.add_argument("--task", choices=["mnist1d", "digits"])
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="Flower's INFO log")
    p.add_argument("--plan", action="store_true",
                   help="print the configuration and the runs, run nothing")
    return p


def build_config(args: argparse.Namespace) -> C.SweepConfig:
    cfg = C.default_config()
    if args.config:
        cfg = C.load_toml(args.config, cfg)
    if args.quick:
        cfg = C.quick(cfg, args.config)
    overrides: dict[str, Any] = {}
    for key in ("task", "clients", "fraction", "rounds", "local_epochs", "lr", "alpha",
                "methods", "bits", "seeds", "out", "client_cpus"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    if "bits" in overrides:  # explicit bits apply to every method (fp32 stays at 32)
        cfg = cfg.replace(method_bits={})
    return C.from_mapping(overrides, cfg) if overrides else cfg


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = build_config(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from . import report
    from .server_app import plan

    pairs, notes = plan(cfg)
    print(f"fedhd sweep: task {cfg.task}, {cfg.clients} clients ({cfg.clients_per_round}/round),"
          f" {cfg.rounds} rounds, seeds {cfg.seeds}")
    print("runs: " + ", ".join(f"{m} {b}b" for m, b in pairs) + f"  (x {len(cfg.seeds)} seeds)")
    for note in notes:
        print(f"note: {note}")
    if args.plan:
        return 0
    from . import sweep

    results, seconds, notes = sweep.run(cfg, progress=not args.no_progress, verbose=args.verbose)
    summary = report.write_all(results, cfg, seconds=seconds, notes=notes)
    print(report.console(summary, cfg.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
