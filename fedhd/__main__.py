"""Command line: ``python -m fedhd bench {speed,vnmse,figures,ec,memory}``."""

from __future__ import annotations

import sys
from importlib import import_module

BENCHES = {
    "speed": "fedhd.bench.speed",  # encode/decode time over np.copyto
    "vnmse": "fedhd.bench.vnmse",  # error and bias of every method (peer comparison)
    "figures": "fedhd.bench.figures",  # the hd-dither figures of README
    "ec": "fedhd.bench.ec",  # hd-dither-ec speed and coder share
    "memory": "fedhd.bench.memory",  # peak memory of encode, decode, Aggregator at large d
}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "bench" or argv[1] not in BENCHES:
        print("usage: python -m fedhd bench {" + ",".join(BENCHES) + "} [options]\n"
              "       python -m fedhd bench NAME --help")
        return 2
    return int(import_module(BENCHES[argv[1]]).main(argv[2:]) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
