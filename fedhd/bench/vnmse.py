"""``python -m fedhd bench vnmse``: error, bias and wire size of every registered method.

For every method of ``fedhd.methods()``, every rate b (integer rates for fixed-rate
methods; the same values as budgets in bits per coordinate for budgeted methods such as
topk; the one rate of fixed-size methods such as fp16 and identity), every dimension d,
and every input of ``fedhd.bench.inputs.input_family`` (plus a real model update):

- vNMSE = E ||x_hat - x||^2 / ||x||^2, the mean over seeds (rotation seed and dither seed
  both change from seed to seed) for each input; reported for the Gaussian input, as
  the mean over the family and as the worst case over it (with the input that attains it);
- bias ratio = (||mean of N decodes - x||^2 / ||x||^2) / (vNMSE / N), worst over the
  family, at the smallest d (N = --bias-seeds): about 1 for an unbiased method (the
  1/N shrinkage of the mean's error), ~N for a deterministic one, 0 where the decode is
  exact up to float32 round-off (vNMSE < 1e-10);
- bits per coordinate actually sent, 8 * len(blob) / d (header, scales, padding).

The model update is the difference of two checkpoints of a small MLP trained locally on
sklearn's bundled digits (no download).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import fedhd
from fedhd.bench.inputs import input_family
from fedhd.methods import Method
from fedhd.methods import get as get_method
from fedhd.rng import derive_seed

PANTER_DITE = math.pi * math.sqrt(3) / 2  # hd-dither's fixed-rate constant
EC_CONST = math.pi * math.e / 6  # ~1.42, entropy-coded uniform lattice
BASE_SEED = 20260513
EXACT = 1e-10  # vNMSE at float32 round-off level (an exact reconstruction)
DEFAULT_DIMS = (1 << 10, 1 << 16, 10**6)
DEFAULT_BITS = (1.0, 2.0, 3.0, 4.0, 8.0)


def rates_for(method: Method, bits: Sequence[float]) -> list[float]:
    """The rates at which a method is measured."""
    if method.min_bits == method.max_bits:
        return [float(method.min_bits)]
    out = []
    for b in bits:
        if not method.min_bits <= b <= method.max_bits:
            continue
        if method.integer_bits and b != int(b):
            continue
        out.append(float(b))
    return out


def seed_pair(s: int) -> tuple[int, int]:
    return derive_seed(BASE_SEED, s, 0), derive_seed(BASE_SEED, s, 1)


def measure(codec: fedhd.Codec, x: np.ndarray, seeds: int) -> dict[str, float]:
    """vNMSE, bias ratio and wire bits of one codec on one input over ``seeds`` seeds."""
    x64 = x.astype(np.float64)
    xx = float(x64 @ x64)
    total = np.zeros_like(x64)
    err = 0.0
    nbytes = 0
    out = np.empty(x.shape[0], np.float32)
    for s in range(seeds):
        seed, dseed = seed_pair(s)
        blob = codec.encode(x, seed=seed, dither_seed=dseed)
        nbytes += len(blob)
        xh = codec.decode(blob, out=out).astype(np.float64)
        total += xh
        diff = xh - x64
        err += float(diff @ diff)
    vnmse = err / seeds / xx
    mean_err = total / seeds - x64
    bias = float(mean_err @ mean_err) / xx
    # below EXACT the decode is exact up to float32 round-off: nothing to measure
    ratio = bias / (vnmse / seeds) if vnmse > EXACT else 0.0
    return {"vnmse": vnmse, "bias": bias, "bias_ratio": ratio,
            "bits_per_coord": 8.0 * nbytes / seeds / x.shape[0]}


def model_update(steps: int = 40) -> np.ndarray | None:
    """Difference of two checkpoints of an MLP (64-256-256-10) trained on sklearn digits:
    ``steps`` SGD steps, checkpoint A, ``steps`` more, checkpoint B; returns B - A."""
    try:
        import torch
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - optional extras
        return None
    torch.set_num_threads(1)
    torch.manual_seed(0)
    X, y = load_digits(return_X_y=True)
    Xt = torch.tensor(X / 16.0, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.long)
    net = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)

    def train(n: int) -> None:
        for _ in range(n):
            idx = torch.randint(0, Xt.shape[0], (64,), generator=gen)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(Xt[idx]), yt[idx]).backward()
            opt.step()

    def flat() -> np.ndarray:
        return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).numpy().copy()

    train(steps)
    a = flat()
    train(steps)
    return (flat() - a).astype(np.float32)


def run(methods: Sequence[str], bits: Sequence[float], dims: Sequence[int], seeds: int,
        bias_seeds: int, model: bool,
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """All measurements as a JSON-ready dict (see the module docstring)."""
    log = log or (lambda s: None)
    rows: list[dict[str, Any]] = []
    bias_d = min(dims) if dims else None
    sets: list[tuple[str, int, dict[str, np.ndarray]]] = [
        ("family", d, input_family(d, seed=0)) for d in dims
    ]
    if model:
        upd = model_update()
        if upd is not None:
            sets.append(("mlp-update", upd.shape[0], {"mlp-update": upd}))
    for set_name, d, inputs in sets:
        n_seeds = bias_seeds if d == bias_d and set_name == "family" else seeds
        for name in methods:
            method = get_method(name)
            for b in rates_for(method, bits):
                t0 = time.perf_counter()
                row: dict[str, Any] = {
                    "method": name, "bits": b, "d": d, "inputs": set_name, "seeds": n_seeds,
                    "claimed_unbiased": bool(method.unbiased),
                }
                try:
                    codec = fedhd.Codec(name, b)
                    res = {k: measure(codec, x, n_seeds) for k, x in inputs.items()}
                except Exception as e:  # keep going: report the failure in the row
                    row["error"] = f"{type(e).__name__}: {e}"
                    rows.append(row)
                    log(f"{set_name} d={d} {name} b={b}: ERROR {row['error']}")
                    continue
                worst = max(res, key=lambda k: res[k]["vnmse"])
                row.update({
                    # the most any input of the family cost (entropy-coded methods send less
                    # for inputs whose chunks are mostly zero)
                    "bits_per_coord": max(r["bits_per_coord"] for r in res.values()),
                    "per_input_bits": {k: r["bits_per_coord"] for k, r in res.items()},
                    "vnmse_gaussian": res["gaussian"]["vnmse"] if "gaussian" in res else None,
                    "vnmse_mean": float(np.mean([r["vnmse"] for r in res.values()])),
                    "vnmse_worst": res[worst]["vnmse"],
                    "worst_input": worst,
                    "per_input": {k: r["vnmse"] for k, r in res.items()},
                    "seconds": time.perf_counter() - t0,
                })
                if set_name == "mlp-update":
                    row["vnmse_gaussian"] = None
                if n_seeds == bias_seeds and set_name == "family":
                    bworst = max(res, key=lambda k: res[k]["bias_ratio"])
                    row["bias_ratio"] = res[bworst]["bias_ratio"]
                    row["bias_worst_input"] = bworst
                    row["bias_ratio_gaussian"] = res["gaussian"]["bias_ratio"]
                rows.append(row)
                log(f"{set_name} d={d} {name} b={b:g}: bits {row['bits_per_coord']:.3f} "
                    f"vnmse worst {row['vnmse_worst']:.4g} ({worst}) "
                    f"bias {row.get('bias_ratio', float('nan')):.3g} "
                    f"[{row['seconds']:.1f}s]")
    return {
        "config": {"methods": list(methods), "bits": list(bits), "dims": list(dims),
                   "seeds": seeds, "bias_seeds": bias_seeds, "bias_d": bias_d,
                   "base_seed": BASE_SEED, "fedhd": fedhd.__version__,
                   "python": platform.python_version(), "numpy": np.__version__},
        "rows": rows,
    }


def _g(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isinf(v):
            return "inf"
        return f"{v:.{digits}g}"
    return str(v)


def _dname(d: int) -> str:
    if d >= 10**6 and d % 10**6 == 0:
        return f"10^{round(math.log10(d))}" if d in (10**6, 10**7) else str(d)
    if d & (d - 1) == 0:
        return f"2^{d.bit_length() - 1}"
    return str(d)


def summary_markdown(result: dict[str, Any]) -> str:
    """One line per (method, b): bits sent at every d, Gaussian vNMSE and bias at the
    smallest d, worst-case vNMSE at the larger ones, vNMSE of the model update."""
    rows = [r for r in result["rows"] if "error" not in r]
    fam = [r for r in rows if r["inputs"] == "family"]
    if not fam:
        return ""
    dims = sorted({r["d"] for r in fam})
    d0, big = dims[0], dims[1:] or dims[:1]
    by = {(r["method"], r["bits"], r["d"], r["inputs"]): r for r in rows}
    model = [r for r in rows if r["inputs"] != "family"]
    mname = model[0]["inputs"] if model else None
    head = ["method", "b", "bits/coord sent, d = " + " / ".join(_dname(d) for d in dims),
            f"vNMSE Gaussian, d = {_dname(d0)}"]
    head += [f"vNMSE worst, d = {_dname(d)} (input)" for d in big]
    head += [f"bias ratio worst, d = {_dname(d0)} (input)"]
    if mname:
        head += [f"vNMSE {mname} (d = {model[0]['d']})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in fam:
        if r["d"] != d0:
            continue
        m, b = r["method"], r["bits"]
        others = [by.get((m, b, d, "family")) for d in dims]
        cells = [m, _g(b), " / ".join(f"{o['bits_per_coord']:.3f}" if o else "–"
                                      for o in others), _g(r["vnmse_gaussian"])]
        for d in big:
            o = by.get((m, b, d, "family"))
            cells.append(f"{_g(o['vnmse_worst'])} ({o['worst_input']})" if o else "–")
        cells.append(f"{_g(r.get('bias_ratio'))} ({r.get('bias_worst_input', '')})")
        if mname:
            o = by.get((m, b, model[0]["d"], mname))
            cells.append(_g(o["vnmse_worst"]) if o else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_markdown(result: dict[str, Any]) -> str:
    rows = [r for r in result["rows"] if "error" not in r]
    cfg = result["config"]
    lines: list[str] = ["#### Summary", "", summary_markdown(result)]
    groups: list[tuple[str, int]] = []
    for r in rows:
        key = (r["inputs"], r["d"])
        if key not in groups:
            groups.append(key)
    for set_name, d in groups:
        sub = [r for r in rows if (r["inputs"], r["d"]) == (set_name, d)]
        with_bias = any("bias_ratio" in r for r in sub)
        if set_name == "family":
            title = f"d = {_dname(d)} ({d}), {sub[0]['seeds']} seeds per input"
        else:
            title = f"real model update ({set_name}, d = {d}), {sub[0]['seeds']} seeds"
        lines += [f"#### {title}", ""]
        head = ["method", "b", "bits/coord sent"]
        if set_name == "family":
            head += ["vNMSE Gaussian", "vNMSE family mean", "vNMSE worst (input)"]
        else:
            head += ["vNMSE"]
        if with_bias:
            head += ["bias ratio Gaussian", "bias ratio worst (input)"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for r in sub:
            cells = [r["method"], _g(r["bits"]), f"{r['bits_per_coord']:.3f}"]
            if set_name == "family":
                cells += [_g(r["vnmse_gaussian"], 4), _g(r["vnmse_mean"], 4),
                          f"{_g(r['vnmse_worst'], 4)} ({r['worst_input']})"]
            else:
                cells += [_g(r["vnmse_worst"], 4)]
            if with_bias:
                cells += [_g(r.get("bias_ratio_gaussian")),
                          f"{_g(r.get('bias_ratio'))} ({r.get('bias_worst_input', '')})"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    errs = [r for r in result["rows"] if "error" in r]
    if errs:
        lines += ["Failed runs:", ""]
        lines += [f"- {r['method']} b={r['bits']} d={r['d']}: {r['error']}" for r in errs]
        lines.append("")
    lines.append(
        f"Bias ratio = (||mean of N decodes - x||² / ||x||²) / (vNMSE / N), N = "
        f"{cfg['bias_seeds']} seeds at d = {cfg['bias_d']}: ≈ 1 unbiased, ≈ N deterministic, "
        "0 exact (vNMSE < 1e-10). Bits per coordinate count every byte of the blob (the "
        "most any input of the family cost)."
    )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: str) -> None:
    """vNMSE against bits per coordinate sent (log-log) at d = 2^16 (or the largest d):
    Gaussian input and worst case over the family, with the reference lines. Points off
    the axes (fp16, exact identity, QSGD at 1 bit) are listed in a note."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "error" not in r and r["inputs"] == "family"]
    dims = sorted({r["d"] for r in rows})
    if not dims:
        return
    d = (1 << 16) if (1 << 16) in dims else dims[-1]
    rows = [r for r in rows if r["d"] == d]
    xlim, ylim = (0.8, 10.0), (1e-5, 1e3)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6), sharey=True)
    R = np.geomspace(*xlim, 200)
    names = list(dict.fromkeys(r["method"] for r in rows))
    markers = "os^vD<>ph*XP"
    off: list[str] = []
    for ax, key, title in ((axes[0], "vnmse_gaussian", "Gaussian input"),
                           (axes[1], "vnmse_worst", "worst case over the input family")):
        ax.plot(R, PANTER_DITE * 4.0**-R, "k--", lw=1, label="C_b = (π√3/2)·4^-b")
        ax.plot(R, EC_CONST * 4.0**-R, "k-.", lw=1, label="1.42·4^-R")
        ax.plot(R, 4.0**-R, "k:", lw=1, label="4^-R (Shannon)")
        for i, name in enumerate(names):
            pts = sorted((r["bits_per_coord"], r[key]) for r in rows
                         if r["method"] == name and r[key] is not None)
            inside = [(x, y) for x, y in pts
                      if xlim[0] <= x <= xlim[1] and ylim[0] <= y <= ylim[1]]
            if key == "vnmse_gaussian":
                off += [f"{name}: {x:.2f} bits, vNMSE {y:.2g}" for x, y in pts
                        if (x, y) not in inside]
            if inside:
                xs, ys = zip(*inside, strict=True)
                ax.plot(xs, ys, marker=markers[i % len(markers)], label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_xticks([1, 2, 3, 4, 6, 8, 10], ["1", "2", "3", "4", "6", "8", "10"])
        ax.set_xlabel("bits per coordinate sent (8·len(blob)/d)")
        ax.set_title(f"{title}, d = {_dname(d)}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("vNMSE = E||x̂ - x||² / ||x||²")
    axes[1].legend(fontsize=8, loc="upper right")
    if off:
        fig.text(0.01, 0.01, "off the axes (Gaussian): " + "; ".join(off), fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _finite(v: Any) -> Any:
    """JSON-safe copy: non-finite floats become None."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v.strip()]


def _ints(s: str) -> list[int]:
    return [int(float(v)) for v in s.split(",") if v.strip()]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m fedhd bench vnmse", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, help="write the results here")
    p.add_argument("--md", help="write the markdown tables here")
    p.add_argument("--png", help="write the vNMSE vs bits plot here")
    p.add_argument("--quick", action="store_true",
                   help="small fast run: d in {2^10, 2^14}, b in {1, 2, 4}, few seeds")
    p.add_argument("--methods", help="comma-separated names (default: every registered one)")
    p.add_argument("--bits", help="comma-separated rates (default 1,2,3,4,8)")
    p.add_argument("--dims", help="comma-separated dimensions (default 1024,65536,1000000)")
    p.add_argument("--seeds", type=int, help="seeds per input above the smallest d (default 4)")
    p.add_argument("--bias-seeds", type=int,
                   help="seeds per input at the smallest d, where bias is measured (default 500)")
    p.add_argument("--no-model", action="store_true", help="skip the real model update")
    a = p.parse_args(argv)
    names = fedhd.methods()
    if a.methods:
        want = [m.strip() for m in a.methods.split(",") if m.strip()]
        for m in want:
            get_method(m)  # ValueError lists the known names
        names = want
    bits = _floats(a.bits) if a.bits else ([1.0, 2.0, 4.0] if a.quick else list(DEFAULT_BITS))
    dims = _ints(a.dims) if a.dims else ([1 << 10, 1 << 14] if a.quick else list(DEFAULT_DIMS))
    seeds = a.seeds or (2 if a.quick else 4)
    bias_seeds = a.bias_seeds or (100 if a.quick else 500)
    t0 = time.perf_counter()
    result = run(names, bits, dims, seeds, bias_seeds, not a.no_model,
                 log=lambda s: print(s, file=sys.stderr, flush=True))
    result["config"]["seconds"] = time.perf_counter() - t0
    with open(a.json, "w") as f:
        json.dump(_finite(result), f, indent=1, allow_nan=False)
    if a.md:
        with open(a.md, "w") as f:
            f.write(to_markdown(result))
    if a.png:
        plot(result, a.png)
    print(f"wrote {a.json} ({len(result['rows'])} rows, "
          f"{result['config']['seconds']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
