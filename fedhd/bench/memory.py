"""Peak memory (and time) of one encode, one decode and one Aggregator round at large d.

Each measurement runs in a fresh process. The input x (float32, 4 d bytes), the blobs and
the output vector exist before it starts; Linux's peak resident set (VmHWM) is reset
(``/proc/self/clear_refs``) just before the call, and the figure is the peak reached
during the call minus the resident set before it, minus what the call returns (the blob
of an encode). That is the memory the call adds beyond its input, its blob and its output
vector, printed in MB (10^6 bytes) and as a percentage of the input's 4 d bytes. Times are
printed beside it as ratios to ``np.copyto`` of x, timed in the same process.

Aggregator round: ``--clients`` blobs (the same x, one dither seed each) added to one
``fedhd.Aggregator``, then ``mean(release=True)``: the mean it returns, in the running
sum's own memory, is the output vector.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

DEFAULT_METHODS = ["hd-dither", "hd-dither-ec", "hd-sr", "drive", "eden", "turboquant"]
OPS = ("encode", "decode", "aggregate")


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status (Linux only)")


def _peak_added(fn) -> tuple[object, float, float]:
    """(result, bytes added at the peak of fn(), seconds)."""
    before = 1024 * _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    t = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t
    return result, 1024 * _status_kb("VmHWM") - before, seconds


def measure(method: str, bits: float, d: int, op: str, clients: int,
            low_memory: bool = False) -> dict[str, object]:
    """One measurement, in this process (``main`` runs each in a fresh one)."""
    import fedhd
    from fedhd.methods import get

    try:
        bits = get(method).check_bits(bits)
    except ValueError:  # e.g. drive: 1 bit only
        bits = get(method).default_bits
    codec = fedhd.Codec(method, bits)
    small = np.random.default_rng(1).standard_normal(4096).astype(np.float32)
    fedhd.decode(codec.encode(small, seed=1))  # compile the kernels outside the measurement
    x = np.random.default_rng(0).standard_normal(d).astype(np.float32)
    dst = np.empty_like(x)
    np.copyto(dst, x)  # touch dst's pages first: the copy then times memory bandwidth
    t0 = time.perf_counter()
    np.copyto(dst, x)
    copy_s = time.perf_counter() - t0
    returned = 0
    if op == "encode":
        blob, added, secs = _peak_added(lambda: codec.encode(x, seed=1, dither_seed=2))
        returned = len(blob)  # type: ignore[arg-type]
    elif op == "decode":
        blob = codec.encode(x, seed=1, dither_seed=2)
        _, added, secs = _peak_added(lambda: fedhd.decode(blob, out=dst))
    else:
        blobs = [codec.encode(x, seed=1, dither_seed=10 + k) for k in range(clients)]
        del dst  # the round's output is the mean it returns

        def round_() -> object:
            agg = fedhd.Aggregator(d, seed=1, low_memory=low_memory)
            for b in blobs:
                agg.add(b, weight=1.0)
            return agg.mean(release=True)

        _, added, secs = _peak_added(round_)
        returned = 4 * d  # the mean
    extra = added - returned
    return {"method": method, "bits": bits, "d": d, "op": op, "clients": clients,
            "low_memory": low_memory,
            "added_mb": extra / 1e6, "added_pct_of_input": 100.0 * extra / (4 * d),
            "seconds": secs, "over_copy": secs / copy_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedhd bench memory", description=__doc__)
    p.add_argument("--methods", nargs="*", default=DEFAULT_METHODS)
    p.add_argument("--bits", type=float, default=2)
    p.add_argument("--d", type=int, default=100_000_000)
    p.add_argument("--ops", nargs="*", default=list(OPS), choices=OPS)
    p.add_argument("--clients", type=int, default=4, help="blobs of the Aggregator round")
    p.add_argument("--low-memory", action="store_true",
                   help="the Aggregator round with fedhd.Aggregator(low_memory=True)")
    p.add_argument("--json", default=None, help="write the rows to this file")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child process
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(measure(a.methods[0], a.bits, a.d, a.ops[0], a.clients,
                                 a.low_memory)))
        return 0
    rows = []
    print(f"{'method':<14}{'bits':>5} {'op':<11}{'d':>11}{'added MB':>10}{'% of input':>11}"
          f"{'ms':>9}{'x copy':>8}")
    for method in a.methods:
        for op in a.ops:
            out = subprocess.run(
                [sys.executable, "-m", "fedhd", "bench", "memory", "--one", "--methods", method,
                 "--bits", str(a.bits), "--d", str(a.d), "--ops", op,
                 "--clients", str(a.clients)] + (["--low-memory"] if a.low_memory else []),
                capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(f"{method} {op}: {out.stderr.strip()}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(f"{method:<14}{r['bits']:>5g} {op:<11}{a.d:>11}{r['added_mb']:>10.1f}"
                  f"{r['added_pct_of_input']:>10.1f}%{1e3 * r['seconds']:>9.0f}"
                  f"{r['over_copy']:>8.1f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0
