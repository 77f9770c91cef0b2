"""Peak memory of the rotated methods stays a fraction of the input (``fedhd bench memory``,
each measurement in a fresh process). Before the chunk-at-a-time kernels, an eden encode
added 100% of the input's bytes and an Aggregator round 425%; the bound is the issue's 25%."""

from __future__ import annotations

import json

from fedhd.bench import memory


def test_encode_decode_and_a_round_add_at_most_a_quarter_of_the_input(tmp_path):
    out = tmp_path / "memory.json"
    assert memory.main(["--d", str(1 << 22), "--methods", "hd-dither", "eden",
                        "--clients", "3", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {(r["method"], r["op"]) for r in rows} == {
        (m, op) for m in ("hd-dither", "eden") for op in memory.OPS}
    for r in rows:
        assert r["added_pct_of_input"] <= 25.0, r
